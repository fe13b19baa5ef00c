"""Training: the losses against slow references, logQ, windows, learning, and resume after a crash."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bertrec.data.split import split_loo
from bertrec.model.losses import full_softmax_loss, logq_correct, sampled_softmax_loss
from bertrec.model.train import epoch_windows, make_windows, train
from bertrec.ranking.baselines import Popular
from bertrec.ranking.evaluate import build_cases, evaluate, reference_of, train_set
from bertrec.ranking.metrics import Reference
from bertrec.ranking.scoring import Histories

from builders import cyclic_dataset, tiny_model


def test_full_softmax_loss_matches_a_slow_reference():
    rng = torch.Generator().manual_seed(0)
    for _ in range(5):
        users, items = torch.randn(3, 4, 5, generator=rng), torch.randn(7, 5, generator=rng)
        targets = torch.randint(-1, 7, (3, 4), generator=rng)
        targets[0, 0] = 2  # at least one target
        total, count = 0.0, 0
        for b in range(3):
            for t in range(4):
                if targets[b, t] < 0:
                    continue
                logits = [float(users[b, t] @ items[j]) / 0.1 for j in range(7)]
                total += -logits[targets[b, t]] + math.log(sum(math.exp(x) for x in logits))
                count += 1
        assert float(full_softmax_loss(users, items, targets, 0.1)) == pytest.approx(total / count, rel=1e-4)


def test_sampled_loss_with_logq_matches_a_slow_reference():
    rng = torch.Generator().manual_seed(1)
    users, candidates = torch.randn(4, 3, generator=rng), torch.randn(6, 3, generator=rng)
    targets, log_q = torch.tensor([0, 5, 2, 2]), torch.log(torch.rand(6, generator=rng))
    expected = 0.0
    for n in range(4):
        logits = [float(users[n] @ candidates[c]) / 0.5 - float(log_q[c]) for c in range(6)]
        expected += -logits[targets[n]] + math.log(sum(math.exp(x) for x in logits))
    assert float(sampled_softmax_loss(users, candidates, targets, log_q, 0.5)) == pytest.approx(expected / 4, rel=1e-4)


def test_logq_lowers_popular_items_more_than_rare_ones():
    # Given equal raw scores for a popular and a rare candidate
    logits = torch.zeros(1, 2)
    log_q = torch.log(torch.tensor([0.5, 0.001]))  # candidate 0 is sampled far more often
    corrected = logq_correct(logits, log_q)
    # Then after correction the rare item outranks the popular one
    assert corrected[0, 1] > corrected[0, 0]
    assert float(corrected[0, 1] - corrected[0, 0]) == pytest.approx(math.log(500), rel=1e-5)


def materialised_windows(histories: Histories, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every window built as a row, user by user, from the end backwards."""
    inputs, targets = [], []
    for u in range(len(histories)):
        items, end = histories[u], len(histories[u])
        while end >= 2:
            chunk = items[max(0, end - length - 1) : end]
            row_in, row_out = np.full(length, -1), np.full(length, -1)
            row_in[length - len(chunk) + 1 :], row_out[length - len(chunk) + 1 :] = chunk[:-1], chunk[1:]
            inputs.append(row_in)
            targets.append(row_out)
            end -= length
    return np.stack(inputs), np.stack(targets)


def both(windows) -> tuple[list, list]:
    inputs, targets = windows.batch(np.arange(len(windows)))
    return inputs.tolist(), targets.tolist()


def test_windows_cut_long_histories_from_the_end():
    histories = Histories(np.array([0, 7, 8]), np.arange(8))
    # user 0: [0..6] -> [3..6] and [0..3], every transition once; user 1 has one item: no window
    assert both(make_windows(histories, length=3)) == ([[3, 4, 5], [0, 1, 2]], [[4, 5, 6], [1, 2, 3]])
    short = make_windows(Histories(np.array([0, 2]), np.array([5, 9])), length=3)
    assert both(short) == ([[-1, -1, 5]], [[-1, -1, 9]])


@pytest.mark.parametrize("length", [1, 2, 5, 50])
def test_lazy_windows_equal_materialised_ones(length):
    # Given random histories of 0 to 40 items
    rng = np.random.default_rng(length)
    lengths = rng.integers(0, 40, 60)
    histories = Histories(np.r_[0, np.cumsum(lengths)], rng.integers(0, 500, lengths.sum()))
    windows = make_windows(histories, length)
    # When any batch of windows is generated, in any order
    order = rng.permutation(len(windows))
    inputs, targets = windows.batch(order)
    # Then it is exactly those rows of the materialised windows
    ref_in, ref_out = materialised_windows(histories, length)
    assert np.array_equal(inputs, ref_in[order]) and np.array_equal(targets, ref_out[order])


def test_a_random_phase_moves_the_cuts_and_keeps_every_target_once():
    # Given user 0 with items [0..6] (targets 1..6) and phase 2, user 1 with [7, 8] and phase 1
    histories = Histories(np.array([0, 7, 9]), np.arange(9))
    windows = make_windows(histories, length=3, phase=np.array([2, 1]))
    # Then the newest window predicts only the last 2 targets, reading 3 and 4 as context, and the cuts follow
    inputs, targets = both(windows)
    assert inputs == [[3, 4, 5], [1, 2, 3], [-1, -1, 0], [-1, -1, 7]]
    assert targets == [[-1, 5, 6], [2, 3, 4], [-1, -1, 1], [-1, -1, 8]]


@pytest.mark.parametrize("length", [1, 3, 50])
def test_every_phase_predicts_each_target_once_with_its_own_history_as_context(length):
    # Given random histories and random phases
    rng = np.random.default_rng(length)
    lengths = rng.integers(0, 40, 60)
    histories = Histories(np.r_[0, np.cumsum(lengths)], rng.integers(0, 500, lengths.sum()))
    flat = np.asarray(histories.items)
    firsts = histories.indptr[:-1]
    expected = np.setdiff1d(np.arange(len(flat)), firsts)  # the position of every item but a history's first
    for epoch in range(4):
        windows = epoch_windows(histories, length, "random", 7, epoch)
        inputs, targets = windows.batch(np.arange(len(windows)))
        # Then each of those positions is predicted once, from the item just before it
        at = windows.ends[:, None] - length - 1 + np.arange(length)[None, :]  # each input's position
        counted = targets >= 0
        assert np.array_equal(np.sort((at + 1)[counted]), expected)
        assert np.array_equal(inputs[counted], flat[at[counted]])
        assert np.array_equal(targets[counted], flat[at[counted] + 1])
        # And a window never reads another user's items
        owner = np.searchsorted(histories.indptr, windows.starts, side="right")
        assert np.array_equal(owner, np.searchsorted(histories.indptr, windows.ends - 1, side="right"))
    # And the fixed phase is make_windows' own cut
    assert both(epoch_windows(histories, length, "fixed", 7, 3)) == both(make_windows(histories, length))


def tiny_params(make_params, tiny_encoder, *extra: str):
    return make_params(*tiny_model(tiny_encoder), "train.patience=50", *extra)


def test_training_a_tiny_bert_learns_the_next_item(make_params, tiny_encoder, tmp_path):
    # Given a log where each user's next item is the current one + 1
    data = cyclic_dataset()
    split = split_loo(data)
    # When the tiny two-tower model trains for a few epochs
    result = train(tiny_params(make_params, tiny_encoder, "train.epochs=12"), split, data.items, tmp_path / "work")
    # Then validation NDCG@10 is far above popularity's
    train_data = train_set(split, data.items)
    reference = Reference.from_train(
        train_data.interactions["item_idx"].to_numpy(), train_data.interactions["user_idx"].to_numpy(), split.n_items
    )
    cases = build_cases(split, "valid")
    popular = evaluate(Popular().fit(train_data), cases, reference, (10,)).metrics["NDCG@10"]
    assert result.best_valid["NDCG@10"] > max(0.8, 3 * popular)
    assert [e.epoch for e in result.epochs] == list(range(1, 13))


@pytest.mark.parametrize("extra", [(), ("train.loss=sampled", "train.negatives=8"), ("train.window_phase=fixed",)])
def test_resume_after_a_crash_gives_the_same_weights(make_params, tiny_encoder, tmp_path, extra):
    data = cyclic_dataset(n_users=30)
    split = split_loo(data)
    params = tiny_params(make_params, tiny_encoder, "train.epochs=4", "model.dropout=0.1", *extra)
    # Given an uninterrupted run
    whole = train(params, split, data.items, tmp_path / "whole")

    # When another run dies after epoch 2 and is started again on the same work folder
    class Killed(Exception):
        pass

    def die_after_two(entry):
        if entry.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(params, split, data.items, tmp_path / "crash", on_epoch_end=die_after_two)
    resumed = train(params, split, data.items, tmp_path / "crash")
    # Then it picks up at epoch 3 and ends with exactly the same weights
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3, 4]
    a, b = whole.scorer.state_dict(), resumed.scorer.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_logit_adjustment_credits_popular_targets_during_training():
    # Given equal scores for all items and a prior that favours item 0
    users, items = torch.zeros(1, 1, 4), torch.randn(3, 4)
    prior = torch.log(torch.tensor([0.8, 0.1, 0.1]))
    popular, rare = torch.tensor([[0]]), torch.tensor([[1]])
    # Then predicting the popular item costs less than the rare one: less gradient pushes popular scores up
    assert full_softmax_loss(users, items, popular, 1.0, prior) < full_softmax_loss(users, items, rare, 1.0, prior)
    assert full_softmax_loss(users, items, popular, 1.0) == pytest.approx(
        float(full_softmax_loss(users, items, rare, 1.0))
    )


def test_freeze_layers_fine_tunes_only_the_upper_encoder_layers(make_params, tiny_encoder, tmp_path):
    # Given the tiny 2-layer BERT with its embeddings and lowest layer frozen
    data = cyclic_dataset(n_users=20)
    params = tiny_params(make_params, tiny_encoder, "train.epochs=2", "train.freeze_layers=1", "train.encoder_lr=0.01")
    from transformers import AutoModel

    before = AutoModel.from_pretrained(tiny_encoder).state_dict()
    # When it trains
    result = train(params, split_loo(data), data.items, tmp_path / "work")
    after = result.scorer.text_features.encoder.model.state_dict()
    # Then layer 1 changed, while layer 0 and the embeddings did not
    changed = {k for k in before if not torch.equal(before[k], after[k].cpu())}
    assert any(k.startswith("encoder.layer.1.") for k in changed)
    assert not any(k.startswith(("encoder.layer.0.", "embeddings.")) for k in changed)


def test_text_user_tower_trains_and_scores(make_params, tiny_encoder, tmp_path):
    data = cyclic_dataset(n_users=20)
    split = split_loo(data)
    params = tiny_params(
        make_params, tiny_encoder, "train.epochs=2", "model.user_encoder=text", "train.text_user_positions=3"
    )
    result = train(params, split, data.items, tmp_path / "work")
    context = build_cases(split, "valid").context.slice(0, 4)
    scores = result.scorer.score(context)
    assert scores.shape == (4, split.n_items) and np.isfinite(scores).all()
    assert len(result.epochs) == 2 and "NDCG@10" in result.best_valid


def test_checkpoints_of_another_configuration_are_not_resumed(make_params, tiny_encoder, tmp_path):
    # Given checkpoints left by a crashed run with another learning rate
    data = cyclic_dataset(n_users=20)
    split = split_loo(data)

    class Killed(Exception):
        pass

    def die(entry):
        raise Killed

    with pytest.raises(Killed):
        train(
            tiny_params(make_params, tiny_encoder, "train.epochs=3", "train.lr=0.05"),
            split,
            data.items,
            tmp_path,
            on_epoch_end=die,
        )
    # When a run with different params starts in the same folder
    result = train(tiny_params(make_params, tiny_encoder, "train.epochs=2"), split, data.items, tmp_path)
    # Then it starts from epoch 1 instead of resuming the other run
    assert [e.epoch for e in result.epochs] == [1, 2]


def test_early_stopping_ends_after_patience_and_restores_the_best_epoch(make_params, tiny_encoder, tmp_path):
    # Given a learnable log and a patience of 2 epochs within a budget of 40
    data = cyclic_dataset(n_users=30)
    split = split_loo(data)
    params = tiny_params(make_params, tiny_encoder, "train.epochs=40", "train.patience=2", "train.lr=0.02")
    # When it trains
    result = train(params, split, data.items, tmp_path / "work")
    ran = [e.epoch for e in result.epochs]
    # Then it stops exactly `patience` epochs after the best one, well before the budget
    assert ran[-1] == result.best_epoch + 2 < 40
    best = max(result.epochs, key=lambda e: e.valid["NDCG@10"])
    assert best.epoch == result.best_epoch and all(e.valid["NDCG@10"] <= best.valid["NDCG@10"] for e in result.epochs)
    # and the model it returns has the best epoch's weights (kept in the last checkpoint), not the last epoch's
    last = torch.load(tmp_path / "work" / "checkpoints" / f"epoch-{ran[-1]:04d}.pt", weights_only=False)
    final = result.scorer.state_dict()
    assert all(torch.equal(final[k], last["best_state"][k]) for k in final)
    assert not all(torch.equal(final[k], last["scorer"][k]) for k in final)
    # which score as the best epoch did on validation
    reference = reference_of(train_set(split, data.items))
    again = evaluate(result.scorer, build_cases(split, "valid"), reference, (10, 20), 32).metrics
    assert again["NDCG@10"] == pytest.approx(result.best_valid["NDCG@10"], abs=1e-6)
