"""Train/validation/test splits exactly as shared/PROTOCOL.md defines them.

- ``loo``: per user, the last interaction is the test target, the one before it the validation
  target, the rest training history; users with fewer than 3 interactions stay in training.
- ``ratio``: per user, a seeded random 80/10/10 split with RecBole's rounding.
- ``cold_items``: a seeded random share of the catalogue is new; every interaction with a new item
  is a test positive; the warm interactions are context. Users with at least 3 warm interactions
  keep their last warm one as the validation target.

Every split row carries ``seq``, its position in the user's full time-ordered history, so that
contexts rebuilt from several parts keep the protocol's order (timestamp, then source order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bertrec.config import SPLITS, SplitParams
from bertrec.data.dataset import Dataset
from bertrec.io import atomic_dir, write_json, write_parquet
from bertrec.errors import ConfigError, MissingInputError

COLUMNS = ["user_idx", "item_idx", "timestamp", "seq"]
PARTS = ("train", "valid", "test")
NEW_ITEMS_FILE = "new_items.parquet"
MIN_HELD_OUT = 3


@dataclass(frozen=True)
class Split:
    """One split of a dataset; ``new_items`` is set for ``cold_items`` only."""

    name: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    n_users: int
    n_items: int
    new_items: np.ndarray | None = field(default=None)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            part: {"rows": len(frame), "users": int(frame["user_idx"].nunique())}
            for part, frame in (("train", self.train), ("valid", self.valid), ("test", self.test))
        }
        if self.new_items is not None:
            out["new_items"] = len(self.new_items)
        return out


def _positions(user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped by user: each row's position within its user, and its user's row count."""
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]])
    lengths = np.diff(np.r_[starts, len(user_idx)])
    counts = np.repeat(lengths, lengths)
    position = np.arange(len(user_idx)) - np.repeat(starts, lengths)
    return position, counts


def _base(data: Dataset) -> pd.DataFrame:
    """The log's (user, item, time) with each row's position in its user's history."""
    frame = data.interactions[["user_idx", "item_idx", "timestamp"]].copy()
    frame["seq"], _ = _positions(frame["user_idx"].to_numpy())
    return frame.reset_index(drop=True)


def split_loo(data: Dataset) -> Split:
    frame = _base(data)
    position, counts = _positions(frame["user_idx"].to_numpy())
    held = counts >= MIN_HELD_OUT
    test = held & (position == counts - 1)
    valid = held & (position == counts - 2)
    train = ~(test | valid)
    return Split("loo", frame[train], frame[valid], frame[test], data.n_users, data.n_items)


def ratio_counts(totals: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) sizes with RecBole's rounding (``_calcu_split_ids``)."""
    totals = np.asarray(totals, dtype=np.int64)
    valid = np.floor(ratios[1] * totals).astype(np.int64)
    test = np.floor(ratios[2] * totals).astype(np.int64)
    train = totals - valid - test
    # RecBole moves one row from train to a part whose share rounds to zero (test first, then valid),
    # as long as train keeps more than one row.
    for part, share in ((test, ratios[2]), (valid, ratios[1])):
        bump = (train > 1) & (share * totals > 0) & (share * totals < 1)
        part += bump
        train -= bump
    return train, valid, test


def split_ratio(data: Dataset, params: SplitParams) -> Split:
    frame = _base(data)
    users = frame["user_idx"].to_numpy()
    rng = np.random.default_rng(params.seed)
    # A random rank within each user: sort by (user, random key).
    order = np.lexsort((rng.random(len(frame)), users))
    rank = np.empty(len(frame), dtype=np.int64)
    position, _ = _positions(users[order])
    rank[order] = position
    totals = np.bincount(users, minlength=data.n_users)
    n_train, n_valid, _ = ratio_counts(totals, params.ratio)
    train_cut = n_train[users]
    valid_cut = train_cut + n_valid[users]
    train = rank < train_cut
    valid = (rank >= train_cut) & (rank < valid_cut)
    test = rank >= valid_cut
    return Split("ratio", frame[train], frame[valid], frame[test], data.n_users, data.n_items)


def split_cold_items(data: Dataset, params: SplitParams) -> Split:
    frame = _base(data)
    rng = np.random.default_rng(params.seed)
    n_new = max(1, int(round(params.cold_fraction * data.n_items)))
    new_items = np.sort(rng.choice(data.n_items, size=n_new, replace=False))
    is_new = np.isin(frame["item_idx"].to_numpy(), new_items)
    warm = frame[~is_new]
    position, counts = _positions(warm["user_idx"].to_numpy())
    valid = (counts >= MIN_HELD_OUT) & (position == counts - 1)
    return Split(
        "cold_items", warm[~valid], warm[valid], frame[is_new], data.n_users, data.n_items, new_items.astype(np.int64)
    )


def check_split_names(names: list[str]) -> list[str]:
    """``names`` unchanged when each is a split of PROTOCOL.md; else a ConfigError naming the first that is not."""
    unknown = [n for n in names if n not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r}; valid splits: {', '.join(SPLITS)}")
    return names


def make_split(data: Dataset, name: str, params: SplitParams) -> Split:
    """Build the split called ``name`` (one of ``loo``, ``ratio``, ``cold_items``)."""
    if name == "loo":
        return split_loo(data)
    if name == "ratio":
        return split_ratio(data, params)
    if name == "cold_items":
        return split_cold_items(data, params)
    check_split_names([name])
    raise AssertionError(f"split {name!r} is in SPLITS but has no builder")


def write_split(split: Split, root: Path) -> Path:
    """Write a split to ``root/<name>/`` atomically: train/valid/test Parquet and a summary."""
    with atomic_dir(Path(root) / split.name) as tmp:
        for part in PARTS:
            write_parquet(getattr(split, part)[COLUMNS].reset_index(drop=True), tmp / f"{part}.parquet")
        if split.new_items is not None:
            write_parquet(pd.DataFrame({"item_idx": split.new_items}), tmp / NEW_ITEMS_FILE)
        write_json(tmp / "summary.json", {"n_users": split.n_users, "n_items": split.n_items, **split.summary()})
    return Path(root) / split.name


def read_split(root: Path, name: str, n_users: int, n_items: int) -> Split:
    """Read a split written by :func:`write_split`."""
    folder = Path(root) / name
    if not (folder / "train.parquet").exists():
        raise MissingInputError(f"{folder}/train.parquet not found; run `bertrec split` first")
    parts = {part: pd.read_parquet(folder / f"{part}.parquet") for part in PARTS}
    new_items = None
    if (folder / NEW_ITEMS_FILE).exists():
        new_items = pd.read_parquet(folder / NEW_ITEMS_FILE)["item_idx"].to_numpy()
    return Split(name, parts["train"], parts["valid"], parts["test"], n_users, n_items, new_items)
