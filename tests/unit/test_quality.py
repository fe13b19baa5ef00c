"""The quality levers: dot-product towers, SASRec as a baseline, re-ranking for coverage, the paired bootstrap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bertrec.config import RerankParams
from bertrec.data.split import split_loo
from bertrec.errors import ConfigError
from bertrec.model.sasrec import SASRec, sasrec_params
from bertrec.model.towers import EnsembleTowers, TowerConfig, TwoTower
from bertrec.ranking.baselines import Popular, make_baselines
from bertrec.ranking.evaluate import Cases, build_cases, evaluate, reference_of, train_set
from bertrec.ranking.metrics import Reference, compute_metrics
from bertrec.ranking.rerank import choose_beta, exposure, popularity_penalty
from bertrec.ranking.scoring import Histories, Scorer
from bertrec.ranking.significance import paired_bootstrap, per_user

from builders import cyclic_dataset


def tower_config(**kw) -> TowerConfig:
    base = dict(n_items=20, text_dim=8, dim=8, item_repr="id", user_encoder="sequence", max_history=5)
    return TowerConfig(**(base | dict(layers=1, heads=2, dropout=0.0, temperature=0.5) | kw))


def test_dot_towers_keep_free_norms_and_cosine_towers_unit_norms():
    torch.manual_seed(0)
    items = torch.arange(20)
    history = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    for score, unit in (("cosine", True), ("dot", False)):
        model = TwoTower(tower_config(score=score, ff_mult=4)).eval()
        vectors = model.items(None, items)
        users = model.user_vectors(history, padding)[:, -1]
        assert torch.allclose(vectors.norm(dim=-1), torch.ones(20), atol=1e-5) is unit
        assert torch.allclose(users.norm(dim=-1), torch.ones(3), atol=1e-5) is unit
        assert torch.allclose(model.logits(users, vectors), users @ vectors.T / 0.5)
        assert model.users.encoder.layers[0].linear1.out_features == 4 * 8


def test_sasrec_params_take_only_the_recipe_device_and_validation_users(make_params):
    p = sasrec_params(make_params("train.lr=0.1", "model.dim=8", "train.valid_users=7", "baselines.sasrec.dropout=0.3"))
    assert (p.model.item_repr, p.model.score, p.model.temperature, p.model.dim) == ("id", "dot", 1.0, 64)
    assert (p.model.dropout, p.model.ff_mult, p.train.lr, p.train.valid_users) == (0.3, 4, 1e-3, 7)
    # the windows' phase is the recipe's own too: bertrec's train.window_phase never reaches it
    assert sasrec_params(make_params("train.window_phase=random")).train.window_phase == "fixed"
    assert sasrec_params(make_params("baselines.sasrec.window_phase=random")).train.window_phase == "random"


def test_sasrec_is_a_baseline_that_learns_the_next_item(make_params):
    # Given the cyclic log (the next item is the current one + 1) and SASRec in baselines.models
    data = cyclic_dataset(n_users=40, n_items=30)
    split = split_loo(data)
    params = make_params(
        "baselines.models=[popular, sasrec]",
        "baselines.sasrec.dim=16",
        "baselines.sasrec.layers=1",
        "baselines.sasrec.max_history=8",
        "baselines.sasrec.dropout=0.0",
        "baselines.sasrec.lr=0.01",
        "baselines.sasrec.batch_size=16",
        "baselines.sasrec.epochs=10",
    )
    popular, sasrec = make_baselines(params)
    # When it is fitted on the split (early-stopping on its validation part) and evaluated on test
    sasrec.fit_split(split, data.items)
    train = train_set(split, data.items)
    cases, reference = build_cases(split, "test"), reference_of(train)
    ndcg = evaluate(sasrec, cases, reference, (10,)).metrics["NDCG@10"]
    # Then it ranks the next item far above popularity
    assert isinstance(sasrec, SASRec) and sasrec.best_epoch >= 1
    assert ndcg > max(0.6, 3 * evaluate(popular.fit(train), cases, reference, (10,)).metrics["NDCG@10"])
    with pytest.raises(TypeError, match="fit_split"):
        sasrec.fit(train)


class FixedScores(Scorer):
    """Scores from a table (users x items) minus ``penalty``, for all users at once (rank with a batch >= users)."""

    name = "fixed"

    def __init__(self, table: np.ndarray) -> None:
        self.table, self.penalty = table.astype(np.float32), None

    def fit(self, train) -> FixedScores:
        return self

    def score(self, histories: Histories) -> np.ndarray:
        rows = self.table[: len(histories)].copy()
        return rows - self.penalty if self.penalty is not None else rows


def rerank_case(n_users: int = 40, n_items: int = 30):
    """Every user likes the popular items a little more than the item they will pick, a tail item."""
    rng = np.random.default_rng(0)
    popularity = np.r_[np.full(5, 100), np.full(n_items - 5, 2)]
    positives = 5 + rng.integers(0, n_items - 5, n_users)
    table = rng.normal(0, 0.05, (n_users, n_items))
    table[:, :5] += 1.0
    table[np.arange(n_users), positives] += 0.8
    empty = Histories(np.zeros(n_users + 1, np.int64), np.empty(0, np.int64))
    matrix = sp.csr_matrix((np.ones(n_users), (np.arange(n_users), positives)), shape=(n_users, n_items))
    cases = Cases("valid", np.arange(n_users), empty, matrix)
    tail = np.zeros(n_items, bool)
    tail[5:] = True
    reference = Reference(popularity, np.full(n_items, 0.1), tail)
    return FixedScores(table), cases, reference


def test_auto_beta_is_the_smallest_that_reaches_the_coverage_target():
    # Given scores that favour five popular items over each user's tail positive
    scorer, cases, reference = rerank_case(n_items=200)
    plain = compute_metrics(scorer.recommend(cases.context, 10), cases.positives, reference, (10,))
    by_popularity = RerankParams(penalty="popularity", coverage_target=1.0, max_ndcg_drop=0.5)
    tried = choose_beta(scorer, cases, reference, by_popularity, 1024).tried
    target = (plain["Coverage@10"] + max(t["Coverage@10"] for t in tried)) / 2
    # When beta is chosen for a coverage between the plain lists' and the best reachable
    choice = choose_beta(scorer, cases, reference, by_popularity.model_copy(update={"coverage_target": target}), 1024)
    # Then it is the smallest beta reaching it, left on the scorer, and its lists reach it
    reranked = compute_metrics(scorer.recommend(cases.context, 10), cases.positives, reference, (10,))
    assert choice.beta > 0 and np.allclose(scorer.penalty, popularity_penalty(reference.popularity, choice.beta))
    assert reranked["Coverage@10"] == choice.valid["Coverage@10"] >= target > plain["Coverage@10"]
    assert all(t["Coverage@10"] < target for t in choice.tried if t["beta"] < choice.beta)
    assert reranked["NDCG@10"] > plain["NDCG@10"]  # here the tail was what users wanted


def test_auto_beta_never_trades_more_ndcg_than_allowed():
    # Given users whose positives are the popular items: any penalty can only cost NDCG
    scorer, cases, reference = rerank_case(n_items=200)
    positives = sp.csr_matrix((np.ones(40), (np.arange(40), np.arange(40) % 5)), shape=(40, 200))
    cases = Cases("valid", cases.users, cases.context, positives)
    # When no loss is allowed and the coverage target cannot be reached
    choice = choose_beta(scorer, cases, reference, RerankParams(coverage_target=1.0, max_ndcg_drop=0.0), 1024)
    # Then the choice keeps the unpenalised NDCG and says why
    zero = next(t for t in choice.tried if t["beta"] == 0.0)
    assert choice.valid["NDCG@10"] >= zero["NDCG@10"]
    assert "no beta reached" in choice.reason


def test_a_fixed_beta_is_applied_as_set():
    scorer, cases, reference = rerank_case()
    choice = choose_beta(scorer, cases, reference, RerankParams(penalty="popularity", beta=0.3), 1024)
    assert choice.beta == 0.3 and len(choice.tried) == 1
    assert np.allclose(scorer.penalty, 0.3 * np.log1p(reference.popularity))
    off = choose_beta(scorer, cases, reference, RerankParams(beta=0.0), 1024)
    assert off.beta == 0.0 and scorer.penalty is None


def test_exposure_counts_the_models_unpenalised_lists_per_thousand():
    # Given a scorer that puts the five popular items at the top of every list, under a penalty that hides them
    scorer, cases, reference = rerank_case(n_items=200)
    hiding = np.r_[np.full(5, 10.0), np.zeros(195)].astype(np.float32)
    scorer.penalty = hiding
    # When its exposure is counted at depth 10
    counts = exposure(scorer, cases, 10, 1024)
    # Then it counts the lists without the penalty (appearances per 1,000 lists), and leaves the penalty as it was
    assert scorer.penalty is hiding
    scorer.penalty = None
    lists = scorer.recommend(cases.context, 10)
    assert np.allclose(counts, np.bincount(lists.ravel(), minlength=200) * 1000 / len(cases.users))
    assert counts[:5].tolist() == [1000.0] * 5 and counts.sum() == 10 * 1000
    # and lists deeper than the catalogue (padded with -1) count the items they hold
    assert exposure(scorer, cases, 250, 1024).tolist() == [1000.0] * 200


def test_the_exposure_penalty_spreads_what_the_model_over_shows_whatever_its_training_popularity():
    # Given a model that shows everyone five items that are rare in training, then a second tier of ten,
    # and training popularity elsewhere
    scorer, cases, reference = rerank_case(n_items=200)
    scorer.table[:, 10:20] += 0.5
    popularity = np.r_[np.full(5, 2), np.full(5, 100), np.full(190, 2)]
    reference = Reference(popularity, np.full(200, 0.1), reference.tail)
    params = RerankParams(coverage_target=1.0, max_ndcg_drop=0.5, exposure_depth=10)
    plain = compute_metrics(scorer.recommend(cases.context, 10), cases.positives, reference, (10,))
    # When beta is chosen for each penalty
    by_popularity = choose_beta(scorer, cases, reference, params.model_copy(update={"penalty": "popularity"}), 1024)
    by_exposure = choose_beta(scorer, cases, reference, params, 1024)
    # Then only the exposure penalty moves the over-shown items aside: more coverage and the users' own items
    assert by_exposure.penalty == "exposure" and by_exposure.to_dict()["penalty"] == "exposure"
    assert by_popularity.valid["Coverage@10"] == pytest.approx(plain["Coverage@10"])
    assert by_exposure.valid["Coverage@10"] > plain["Coverage@10"] + 0.1
    assert by_exposure.valid["NDCG@10"] > by_popularity.valid["NDCG@10"]
    assert np.allclose(scorer.penalty, popularity_penalty(exposure(scorer, cases, 10, 1024), by_exposure.beta))


def test_the_exposure_penalty_charges_items_without_training_interactions_the_average_exposure():
    # Given five items shown to everyone, two of them new (no training interaction)
    scorer, cases, reference = rerank_case(n_items=200)
    popularity = reference.popularity.copy()
    popularity[:2] = 0
    reference = dataclasses.replace(reference, popularity=popularity)
    # When the exposure penalty is set
    choice = choose_beta(scorer, cases, reference, RerankParams(beta=0.5, exposure_depth=10), 1024)
    # Then the three warm ones lose the most, and the new ones pay as an item shown as often as the warm ones
    # are on average: as items added later will
    assert (scorer.penalty[2:5] == scorer.penalty.max()).all()
    assert scorer.penalty.max() == np.float32(0.5 * np.log1p(1000.0))
    average = np.float32(0.5 * np.log1p(exposure(scorer, cases, 10, 1024)[2:].mean()))
    assert (scorer.penalty[:2] == average).all() and 0 < average < scorer.penalty.max()
    assert choice.new_item_penalty == scorer.new_item_penalty == average
    assert choice.to_dict()["new_item_penalty"] == choice.new_item_penalty
    # The popularity penalty charges them nothing
    off = choose_beta(scorer, cases, reference, RerankParams(penalty="popularity", beta=0.5), 1024)
    assert (scorer.penalty[:2] == 0).all() and off.new_item_penalty == scorer.new_item_penalty == 0.0


def test_per_user_metrics_average_to_the_reported_ones():
    data = cyclic_dataset(n_users=30, n_items=20)
    split = split_loo(data)
    train = train_set(split, data.items)
    cases = build_cases(split, "test")
    evaluation = evaluate(Popular().fit(train), cases, reference_of(train), (10,))
    users = per_user(evaluation.topk, cases.positives, 10)
    assert users["NDCG@10"].mean() == pytest.approx(evaluation.metrics["NDCG@10"])
    assert users["Hit@10"].mean() == pytest.approx(evaluation.metrics["Hit@10"])


def test_paired_bootstrap_interval_covers_the_true_difference_and_excludes_zero():
    rng = np.random.default_rng(1)
    b = rng.random(500)
    a = b + 0.05 + rng.normal(0, 0.01, 500)
    result = paired_bootstrap(a, b, resamples=2000, seed=0)
    assert result.low < 0.05 < result.high and result.low > 0
    assert result.difference == pytest.approx(a.mean() - b.mean())
    same = paired_bootstrap(b, b, resamples=200)
    assert same.low == same.high == 0.0
    with pytest.raises(ValueError, match="paired values"):
        paired_bootstrap(a, b[:-1])


def test_an_ensembles_score_is_its_members_mean_score():
    torch.manual_seed(0)
    members = [TwoTower(tower_config()).eval() for _ in range(3)]
    ensemble = EnsembleTowers.of(members).eval()
    items = torch.arange(20)
    history = torch.randint(0, 20, (4, 5))
    padding = torch.zeros(4, 5, dtype=torch.bool)
    vectors = ensemble.items(None, items)
    mean = sum(
        m.logits(m.user_vectors(m.items(None, items)[history], padding)[:, -1], m.items(None, items)) for m in members
    )
    got = ensemble.logits(ensemble.user_vectors(vectors[history], padding)[:, -1], vectors)
    assert vectors.shape == (20, 24) and ensemble.config.dim == 24 and not ensemble.config.unit_norm
    assert torch.allclose(got, mean / 3, atol=1e-5)


def test_an_ensemble_trains_its_members_with_their_own_seeds_and_loads_back(make_params, tiny_encoder, tmp_path):
    from bertrec.model.bundle import load_model, save_model, training_record
    from bertrec.model.ensemble import train_model

    data = cyclic_dataset(n_users=30, n_items=30)
    split = split_loo(data)
    params = make_params(
        f"model.encoder={tiny_encoder}",
        "model.dim=8",
        "model.layers=1",
        "model.max_history=6",
        "model.ensemble=2",
        "train.epochs=3",
        "train.batch_size=16",
    )
    result = train_model(params, split, data.items, tmp_path / "work")
    assert isinstance(result.scorer.model, EnsembleTowers)
    assert [m["seed"] for m in result.members] == [params.train.seed, params.train.seed + 1]
    context = build_cases(split, "valid").context
    record = training_record(result, params, "loo")
    save_model(result.scorer, data.items, params.paths.bundle, record, data.interactions)
    loaded, _ = load_model(params.paths.bundle)
    assert isinstance(loaded.model, EnsembleTowers)
    assert np.allclose(loaded.score(context), result.scorer.score(context), atol=1e-5)
    with pytest.raises(ConfigError, match="frozen encoder"):
        train_model(
            make_params(f"model.encoder={tiny_encoder}", "model.ensemble=2", "train.freeze_layers=1"),
            split,
            data.items,
            tmp_path / "w2",
        )
