"""Behaviour features of a window of interactions: one row per active user, one row per active item.

Per-row values (the hour of each click, each row's item popularity) move with every burst of traffic;
what a recommender cares about is how users behave over the window. So the calibrated interaction
check (:mod:`bertrec.mlops.drift.calibrate`) compares two tables:

- **users** (one row per user active in the window): ``activity`` (interactions), ``head_share``
  (share of them on the head items: the most popular items that make up half of the reference
  data's interactions), ``genre:<name>`` (the share of them on items of that genre, for the
  ``GENRES`` genres most interacted with in the reference data: the genre mix, user by user) and,
  when the log has ratings, ``rating`` (the user's mean rating);
- **items** (one row per item interacted with in the window): ``interactions`` (the window's
  popularity curve).

The head set and the genres are fixed by the reference data (:class:`BehaviourBasis`), so the
features of every window are measured against the same yardstick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

USER_NUMERICAL = ("activity", "head_share", "rating")
ITEM_NUMERICAL = ("interactions",)
HEAD_MASS = 0.5  # the head: the most popular items holding this share of the reference interactions
GENRES = 12  # genre-share columns: the genres most interacted with in the reference data


@dataclass(frozen=True)
class BehaviourBasis:
    """What every window's features are measured against: the head set and each item's genres."""

    head: np.ndarray  # (n_items,) bool: the head items of the reference data
    genres: tuple[str, ...]  # the genres with a share column
    membership: np.ndarray  # (n_items, len(genres)) float: 1 where the item has that genre

    @classmethod
    def of(cls, items: pd.DataFrame, reference_items: np.ndarray, n_items: int) -> BehaviourBasis:
        """``items``: the prepared item table (``item_idx``, ``genres``); ``reference_items``: the
        ``item_idx`` of every reference interaction (the champion's data)."""
        counts = np.bincount(np.asarray(reference_items, dtype=np.int64), minlength=n_items)
        order = np.argsort(-counts, kind="stable")
        cumulative = np.cumsum(counts[order])
        total = max(int(cumulative[-1]) if len(cumulative) else 0, 1)
        n_head = int(np.searchsorted(cumulative, HEAD_MASS * total) + 1)
        head = np.zeros(n_items, dtype=bool)
        head[order[: min(n_head, n_items)]] = True
        lists = [[] for _ in range(n_items)]
        if "genres" in items:
            for row, value in zip(items["item_idx"].to_numpy(), items["genres"], strict=True):
                lists[row] = _genre_list(value)
        weight: dict[str, float] = {}
        for row in np.flatnonzero(counts):
            for genre in lists[row]:
                weight[genre] = weight.get(genre, 0.0) + counts[row]
        genres = tuple(sorted(weight, key=lambda g: (-weight[g], g))[:GENRES])
        membership = np.zeros((n_items, len(genres)), dtype=np.float64)
        column = {g: j for j, g in enumerate(genres)}
        for row, names in enumerate(lists):
            for genre in names:
                if genre in column:
                    membership[row, column[genre]] = 1.0
        return cls(head, genres, membership)

    @property
    def genre_columns(self) -> list[str]:
        return [f"genre:{g}" for g in self.genres]


def user_table(rows: pd.DataFrame, basis: BehaviourBasis) -> pd.DataFrame:
    """One row per user in ``rows`` (``user_idx``, ``item_idx``, optionally ``rating``): see the module docstring."""
    items = rows["item_idx"].to_numpy(np.int64)
    users, inverse = np.unique(rows["user_idx"].to_numpy(np.int64), return_inverse=True)
    n = np.bincount(inverse, minlength=len(users)).astype(np.float64)
    out = pd.DataFrame(
        {
            "activity": n,
            "head_share": np.bincount(inverse, weights=basis.head[items].astype(np.float64), minlength=len(users)) / n,
        }
    )
    if "rating" in rows:
        out["rating"] = np.bincount(inverse, weights=rows["rating"].to_numpy(np.float64), minlength=len(users)) / n
    shares = np.zeros((len(users), len(basis.genres)))
    np.add.at(shares, inverse, basis.membership[items])
    for j, name in enumerate(basis.genre_columns):
        out[name] = shares[:, j] / n
    return out


def item_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per item interacted with in ``rows``: its ``interactions`` in the window."""
    counts = np.bincount(rows["item_idx"].to_numpy(np.int64))
    return pd.DataFrame({"interactions": counts[counts > 0].astype(np.float64)})


def _genre_list(value) -> list[str]:
    """An item's genres from a list or a string "a|b" / "a, b"; none for a missing value."""
    if isinstance(value, str):
        parts = re.split(r"[|,]", value)
    elif isinstance(value, (list, tuple, np.ndarray)):
        parts = list(value)
    else:
        return []
    return [str(part).strip() for part in parts if part is not None and str(part).strip()]
