"""Warm start: the saved model's ID rows follow their item ids into a new catalogue; no champion means scratch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bertrec.data.dataset import Dataset
from bertrec.data.split import split_loo, write_split
from bertrec.errors import MissingInputError
from bertrec.model.bundle import save_model
from bertrec.model.scorer import build_towers
from bertrec.model.towers import EnsembleTowers
from bertrec.model.warm import differences, read_towers, warm_settings, warm_towers
from bertrec.steps import train as step

from builders import cyclic_dataset, tiny_model


def tiny(make_params, tiny_encoder, *extra):
    # the tiny model of the other tests at the default learning rate, which these tests were written for
    return make_params(*tiny_model(tiny_encoder), "train.lr=0.003", *extra)


def saved_champion(params, data: Dataset):
    """A model on ``data`` with recognisable ID rows (row r = r), items 0-4 never trained on, saved as a bundle."""
    torch.manual_seed(0)
    scorer = build_towers(params, split_loo(data), data.items)
    with torch.no_grad():
        scorer.model.items.ids.weight.copy_(torch.arange(data.n_items, dtype=torch.float32)[:, None].expand(-1, 16))
        scorer.model.items.known.fill_(True)
        scorer.model.items.known[:5] = False
    save_model(scorer, data.items, params.paths.bundle, {"params": params.flat()})
    return scorer


def newer_catalogue(data: Dataset) -> tuple[Dataset, list[str]]:
    """``data``'s log over a catalogue whose rows are shuffled, with items 58 and 59 gone and two new ids."""
    rng = np.random.default_rng(7)
    ids = [str(i) for i in range(58)] + ["new-a", "new-b"]
    items = data.items.assign(item_id=[ids[i] for i in rng.permutation(len(ids))])
    return Dataset(data.interactions, items), ids[-2:]


def test_warm_start_maps_id_rows_by_item_id(make_params, tiny_encoder):
    # Given a saved champion and a newer catalogue with other rows, two items gone and two new ones
    params = tiny(make_params, tiny_encoder)
    old = cyclic_dataset(n_users=20)
    champion = saved_champion(params, old)
    new, new_ids = newer_catalogue(old)
    split = split_loo(new)
    # When a model for the new catalogue warm-starts from the bundle
    scorer, rows = warm_towers(params, split, new.items, read_towers(params.paths.bundle))
    # Then a kept item that the champion trained on keeps its row's vector, found by its id
    table, before = scorer.model.items.ids.weight.detach(), champion.model.items.ids.weight.detach()
    for row, item_id in enumerate(new.items["item_id"]):
        kept = item_id not in new_ids and int(item_id) >= 5
        expected = before[int(item_id)] if kept else torch.zeros(16)
        assert torch.equal(table[row], expected), (row, item_id)
    # and a new item (or one never trained on) gets the zero row: its vector is its text part alone
    fresh = int(np.flatnonzero(new.items["item_id"] == "new-a")[0])
    text = scorer.text_features(torch.tensor([fresh]))
    assert torch.allclose(scorer.item_vectors(torch.tensor([fresh])), F.normalize(scorer.model.items.project(text)))
    assert (rows.kept, rows.new) == (53, 7)
    # while every other tower weight is the champion's, and the trained-items mask is the new data's
    mine, theirs = scorer.model.state_dict(), champion.model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k not in ("items.ids.weight", "items.known"))
    trained = np.zeros(60, dtype=bool)
    trained[split.train["item_idx"].to_numpy()] = True
    assert np.array_equal(scorer.model.items.known.numpy(), trained)


def test_a_bundle_of_another_shape_cannot_seed_the_model(make_params, tiny_encoder):
    params = tiny(make_params, tiny_encoder)
    saved_champion(params, cyclic_dataset(n_users=10))
    saved = read_towers(params.paths.bundle)
    assert differences(saved, params) == []
    assert differences(saved, tiny(make_params, tiny_encoder, "model.dim=32")) == ["model.dim: saved 16, params 32"]
    # and a warm start trains with its own budget and a lower learning rate
    warm = warm_settings(tiny(make_params, tiny_encoder, "train.warm_epochs=4", "train.warm_lr_factor=0.5"))
    assert (warm.train.epochs, warm.train.lr, warm.train.patience) == (4, 0.0015, 2)


def test_each_ensemble_member_starts_from_its_own_saved_member(make_params, tiny_encoder):
    # Given a saved ensemble of two members with different weights
    params = tiny(make_params, tiny_encoder, "model.ensemble=2")
    data = cyclic_dataset(n_users=10)
    split = split_loo(data)
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(build_towers(params, split, data.items))
    first = members[0].model.state_dict()
    saved = members[0]
    saved.model = EnsembleTowers.of([m.model for m in members])
    save_model(saved, data.items, params.paths.bundle, {"params": params.flat()})
    # When member 1 of a new ensemble warm-starts, it takes member 1's weights, not member 0's
    member = tiny(make_params, tiny_encoder, "model.ensemble=1")
    scorer, _ = warm_towers(member, split, data.items, read_towers(params.paths.bundle), member=1)
    mine, theirs = scorer.model.state_dict(), members[1].model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k not in ("items.known", "items.ids.weight"))
    trained = theirs["items.known"]  # the ID rows of items it trained on; the others start from zero
    assert torch.equal(mine["items.ids.weight"][trained], theirs["items.ids.weight"][trained])
    assert not torch.equal(mine["users.positions.weight"], first["users.positions.weight"])


def prepared(params, data: Dataset) -> None:
    params.paths.prepared.mkdir(parents=True)
    data.interactions.to_parquet(params.paths.prepared / "interactions.parquet", index=False)
    data.items.to_parquet(params.paths.prepared / "items.parquet", index=False)
    write_split(split_loo(data), params.paths.splits)


def test_first_run_without_a_champion_trains_from_scratch_and_says_so(make_params, tiny_encoder, tmp_path):
    # Given an empty registry and train.init: champion
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = tiny(make_params, tiny_encoder, "train.init=champion", f"mlflow.tracking_uri={uri}", "train.epochs=2")
    prepared(params, cyclic_dataset(n_users=20))
    # When the train stage runs
    trained = step.run(params)
    # Then it trained from scratch, for its full budget, and metrics/train.json says why
    metrics = json.loads((params.paths.metrics / "train.json").read_text())
    assert metrics["init"]["mode"] == "scratch" and metrics["init"]["version"] is None
    assert metrics["init"]["reason"] == f"bertrec has no champion at {uri}: a first run, from scratch"
    assert metrics["epochs_run"] == 2 and metrics["seconds"] > 0 and "from scratch" in trained.summary()
    # When the next run starts from that bundle, it warm-starts and records its source
    bundle = params.paths.bundle
    step.run(
        tiny(make_params, tiny_encoder, f"train.init={bundle}", "train.warm_epochs=1", f"paths.bundle={tmp_path}/2")
    )
    metrics = json.loads((params.paths.metrics / "train.json").read_text())
    trained_items = read_towers(bundle).weights["items.known"].sum().item()
    assert metrics["init"] == {
        "requested": str(bundle),
        "mode": "warm",
        "source": str(bundle),
        "version": None,
        "reason": f"warm start from {bundle}",
        "items_kept": trained_items,
        "items_new": 60 - trained_items,
    }
    assert metrics["epochs_run"] == 1 and 0 < trained_items < 60
    # and a folder without a bundle is an error that names train.init
    with pytest.raises(MissingInputError, match=f"train.init={tmp_path / 'none'}: "):
        step.run(tiny(make_params, tiny_encoder, f"train.init={tmp_path / 'none'}"))
