"""Warm-start retraining: a new model that starts from a trained bundle's towers (usually the champion's).

``train.init`` says where training starts: ``scratch`` (fresh weights), ``champion`` (the registry's
champion; the train stage fetches it, :mod:`bertrec.steps.train`) or a bundle folder. A warm start
copies every tower weight of the saved model into a model built for the current data, then trains
for at most ``train.warm_epochs`` with ``train.warm_patience`` and the learning rate times
``train.warm_lr_factor`` (:func:`warm_settings`), early-stopping on validation as from scratch.

The item-ID table is mapped by ``item_id``, not by row: an item the saved model trained on keeps its
row; any other item (new in the catalogue since, or never interacted with then) starts from zeros,
so its vector is the text part alone, exactly as a served bundle places an item added from its text
(:meth:`bertrec.serve.recommender.Recommender.add_items`); an ``id``-only model, which has no text
part, gives those items the fresh random rows a model from scratch would have.

A saved model can only seed one of the same shape and inputs (:func:`differences`): the same
encoder, ``max_length``, ``freeze_layers`` and tower architecture. When the encoder is fine-tuned,
its weights are copied from the bundle too; when it is frozen, the text features of the catalogue
come from the usual cache (``paths.cache``), so a warm start encodes nothing already encoded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from bertrec.compute.engine import Engine
from bertrec.config import Params
from bertrec.data.split import Split
from bertrec.errors import MissingInputError
from bertrec.model.bundle import encoder_folder
from bertrec.model.layout import MODEL, TRAINING, WEIGHTS
from bertrec.model.scorer import TowerScorer, build_towers
from bertrec.model.towers import TowerConfig

log = logging.getLogger(__name__)

SCRATCH, CHAMPION = "scratch", "champion"  # the named values of train.init; anything else is a bundle folder
ID_ROWS, KNOWN = "items.ids.weight", "items.known"  # the item tower's ID table and its trained-items mask
# Tower fields that must agree for weights to carry over (tower.json vs params).
SHAPE_FIELDS = ("item_repr", "user_encoder", "dim", "max_history", "layers", "heads", "score", "ff_mult", "ensemble")
# Training params that decide what the towers read (training.json vs params).
INPUT_KEYS = ("model.encoder", "model.max_length", "train.freeze_layers")


@dataclass(frozen=True)
class SavedTowers:
    """A bundle's towers as saved by `bertrec train`: config, weights, catalogue, training params."""

    folder: Path  # the bundle (it holds model/)
    config: TowerConfig
    weights: dict[str, torch.Tensor] = field(repr=False)
    item_ids: np.ndarray = field(repr=False)  # (n_items,) str, by saved row
    params: dict[str, Any] = field(repr=False)  # the flat params it was trained with


@dataclass(frozen=True)
class Start:
    """Where a training run starts, and why: what train.json and training.json record."""

    requested: str  # train.init as configured
    mode: str  # "scratch" or "warm"
    reason: str
    source: str | None = None  # the bundle folder, or models:/NAME/VERSION
    version: str | None = None  # the registry version warm-started from
    saved: SavedTowers | None = field(default=None, repr=False, compare=False)

    @property
    def warm(self) -> bool:
        return self.mode == "warm"

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "mode": self.mode,
            "source": self.source,
            "version": self.version,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RowMap:
    """How the ID table was carried over: items that kept their trained row, items that start from the init row."""

    kept: int
    new: int


def read_towers(bundle: Path) -> SavedTowers:
    """The towers of ``bundle/model``: config, weights, item ids and training params; not the encoder.

    Raises:
        MissingInputError: ``bundle/model`` holds no weights.
    """
    folder = Path(bundle) / MODEL
    if not (folder / WEIGHTS).exists():
        raise MissingInputError(f"{folder / WEIGHTS} not found: {bundle} holds no model written by `bertrec train`")
    config = TowerConfig(**json.loads((folder / "tower.json").read_text()))
    items = pd.read_parquet(folder / "items.parquet", columns=["item_id"])
    training = json.loads((folder / TRAINING).read_text()) if (folder / TRAINING).exists() else {}
    return SavedTowers(
        Path(bundle),
        config,
        load_file(str(folder / WEIGHTS)),
        items["item_id"].astype(str).to_numpy(),
        training.get("params", {}),
    )


def differences(saved: SavedTowers, params: Params) -> list[str]:
    """What keeps ``saved`` from seeding a model configured by ``params``: one line per field; [] when nothing."""
    mp = params.model
    wanted = {name: getattr(mp, name) for name in SHAPE_FIELDS} | {"dim": mp.dim * mp.ensemble}
    out = [
        f"model.{name}: saved {getattr(saved.config, name)!r}, params {value!r}"
        for name, value in wanted.items()
        if getattr(saved.config, name) != value
    ]
    current = params.flat()
    uses_text = mp.item_repr != "id" or mp.user_encoder == "text"
    for key in INPUT_KEYS if uses_text else ():
        if str(saved.params.get(key)) != str(current[key]):
            out.append(f"{key}: saved {saved.params.get(key)!r}, params {current[key]!r}")
    return out


def warm_settings(params: Params) -> Params:
    """``params`` as a warm start trains: ``warm_epochs``, ``warm_patience``, lr x ``warm_lr_factor``.

    The learning-rate warm-up keeps its share of the schedule (``warmup_steps`` x warm_epochs / epochs).
    """
    tp = params.train
    update = {
        "epochs": tp.warm_epochs,
        "patience": tp.warm_patience,
        "lr": tp.lr * tp.warm_lr_factor,
        "encoder_lr": tp.encoder_lr * tp.warm_lr_factor,
        "warmup_steps": round(tp.warmup_steps * min(1.0, tp.warm_epochs / tp.epochs)),
    }
    return params.model_copy(update={"train": tp.model_copy(update=update)})


def saved_rows(saved_ids: np.ndarray, saved_known: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """For each item of ``item_ids``, its row in the saved ID table, or -1 when it has no trained row there.

    An item has a trained row when the saved catalogue holds its id and the saved model trained on it
    (``saved_known``); an item new since, or never interacted with then, gets -1.
    """
    position = pd.Index(np.asarray(saved_ids, dtype=str)).get_indexer(np.asarray(item_ids, dtype=str))
    found = position >= 0
    found[found] = np.asarray(saved_known, dtype=bool)[position[found]]
    return np.where(found, position, -1)


def copy_towers(scorer: TowerScorer, saved: SavedTowers, item_ids: np.ndarray, member: int = 0) -> RowMap:
    """Load ``saved``'s tower weights (member ``member`` of a saved ensemble) into ``scorer``'s fresh model.

    The ID table is mapped by ``item_ids`` (the scorer's catalogue, by row): see :func:`saved_rows`.
    The scorer keeps its own ``known`` mask (the items of the current training data).

    Raises:
        ValueError: the saved weights lack one of the model's tensors or hold it in another shape.
    """
    prefix = f"members.{member}." if saved.config.ensemble > 1 else ""
    state = scorer.model.state_dict()  # tensors that share the parameters' storage
    wrong = [
        k
        for k, v in state.items()
        if k not in (KNOWN, ID_ROWS) and (prefix + k not in saved.weights or saved.weights[prefix + k].shape != v.shape)
    ]
    if wrong:
        raise ValueError(f"{saved.folder / MODEL / WEIGHTS}: tensors {wrong[:5]} missing or of another shape")
    for key, value in state.items():
        if key not in (KNOWN, ID_ROWS):
            value.copy_(saved.weights[prefix + key])
    if ID_ROWS not in state:  # item_repr text: no ID table
        return RowMap(0, 0)
    rows = saved_rows(saved.item_ids, saved.weights[prefix + KNOWN].numpy(), item_ids)
    kept = rows >= 0
    table = state[ID_ROWS]  # (n_items, dim), shares the parameter's storage: the fresh model's random rows
    if scorer.model.items.use_text:
        table.zero_()  # the text part alone places an item without a trained row
    table[torch.from_numpy(kept)] = saved.weights[prefix + ID_ROWS][torch.from_numpy(rows[kept])].to(table.dtype)
    return RowMap(int(kept.sum()), int((~kept).sum()))


def warm_towers(
    params: Params,
    split: Split,
    items: pd.DataFrame,
    saved: SavedTowers,
    member: int = 0,
    engine: Engine | None = None,
) -> tuple[TowerScorer, RowMap]:
    """A model for ``split`` configured by ``params`` (one member's), its towers copied from ``saved``.

    Built as a fresh model (the encoder loaded, the text features read from the cache or encoded on
    ``engine``), seeded by ``train.seed``; then :func:`copy_towers`; a fine-tuned encoder also takes
    the bundle's weights.
    """
    torch.manual_seed(params.train.seed)
    scorer = build_towers(params, split, items, engine)
    mapped = copy_towers(scorer, saved, items["item_id"].astype(str).to_numpy(), member)
    features = scorer.text_features
    if features is not None and features.tuned:
        from transformers import AutoModel

        tuned = AutoModel.from_pretrained(encoder_folder(saved.folder / MODEL), dtype=torch.float32)
        features.encoder.model.load_state_dict(tuned.state_dict())
    log.info(
        "warm start from %s: %d items keep their trained ID rows, %d start from the %s row",
        saved.folder,
        mapped.kept,
        mapped.new,
        "zero" if scorer.model.items.use_text else "random",
    )
    return scorer, mapped
