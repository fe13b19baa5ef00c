"""The one interface every recommender implements, and full-catalogue top-K ranking.

A :class:`Scorer` is fitted on a :class:`TrainSet` and scores a batch of user histories against
the whole catalogue. :func:`top_k` turns scores into ranked lists with the protocol's rules:
history excluded, ties broken by item id ascending (``item_idx`` order is id order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from bertrec.data.split import Split


@dataclass(frozen=True)
class Histories:
    """Item sequences of a batch of users, oldest first, packed CSR-style.

    ``items[indptr[u]:indptr[u + 1]]`` is user ``u``'s history.
    """

    indptr: np.ndarray  # (n_users + 1,)
    items: np.ndarray  # (total,)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, u: int) -> np.ndarray:
        return self.items[self.indptr[u] : self.indptr[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def slice(self, start: int, stop: int) -> Histories:
        lo, hi = self.indptr[start], self.indptr[stop]
        return Histories(self.indptr[start : stop + 1] - lo, self.items[lo:hi])

    def matrix(self, n_items: int) -> sp.csr_matrix:
        """Binary (n_users, n_items) matrix of who has which item in their history."""
        data = np.ones(len(self.items), dtype=np.float32)
        m = sp.csr_matrix((data, self.items, self.indptr), shape=(len(self), n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def last(self, n: int) -> Histories:
        """Each history cut to its ``n`` most recent items."""
        lengths = self.lengths()
        from_end = np.repeat(self.indptr[1:], lengths) - np.arange(len(self.items))  # 1 for the newest
        kept = np.minimum(lengths, n)
        return Histories(np.r_[0, np.cumsum(kept)].astype(np.int64), self.items[from_end <= n])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, users: np.ndarray) -> Histories:
        """Histories of ``users`` from rows (``user_idx``, ``item_idx``, ``seq``), ordered by ``seq``."""
        frame = frame.sort_values(["user_idx", "seq"], kind="stable")
        u = frame["user_idx"].to_numpy()
        lo = np.searchsorted(u, users, side="left")
        hi = np.searchsorted(u, users, side="right")
        lengths = hi - lo
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        take = np.repeat(lo - indptr[:-1], lengths) + np.arange(indptr[-1])
        return cls(indptr, frame["item_idx"].to_numpy()[take].astype(np.int64))


@dataclass(frozen=True)
class TrainSet:
    """What a scorer may learn from: training interactions and the item table."""

    n_users: int
    n_items: int
    interactions: pd.DataFrame  # user_idx, item_idx, timestamp, seq: training rows only
    items: pd.DataFrame  # item_idx, item_id, text, ...: the whole catalogue

    def histories(self) -> Histories:
        """Every user's training history (users without training rows have empty ones)."""
        return Histories.from_frame(self.interactions, np.arange(self.n_users))

    def popularity(self) -> np.ndarray:
        """Training interactions per item: (n_items,)."""
        return np.bincount(self.interactions["item_idx"].to_numpy(), minlength=self.n_items).astype(np.int64)


class Scorer(ABC):
    """A recommender: fit on training data, then score batches of histories."""

    name: str = "scorer"

    @abstractmethod
    def fit(self, train: TrainSet) -> Scorer:
        """Learn from ``train``; return self."""

    def fit_split(self, split: Split, items: pd.DataFrame) -> Scorer:
        """Learn from ``split``: its training part (models that early-stop also read its validation part)."""
        return self.fit(TrainSet(split.n_users, split.n_items, split.train.reset_index(drop=True), items))

    @abstractmethod
    def score(self, histories: Histories) -> np.ndarray:
        """Scores of every catalogue item for each history: float32 (batch, n_items); higher is better."""

    def recommend(
        self, histories: Histories, k: int, exclude: Histories | None = None, candidates: np.ndarray | None = None
    ) -> np.ndarray:
        """Top-``k`` item indices per history (batch, k); ``exclude`` (default: the history) never appears.

        ``candidates`` restricts the ranking to those items. Slots that no item can fill are -1.
        """
        scores = self.score(histories)
        mask_out(scores, histories if exclude is None else exclude, candidates)
        return top_k(scores, k)


def mask_out(scores: np.ndarray, exclude: Histories, candidates: np.ndarray | None = None) -> None:
    """In place: -inf for each row's excluded items, and for non-candidates when given."""
    if candidates is not None:
        allowed = np.zeros(scores.shape[1], dtype=bool)
        allowed[candidates] = True
        scores[:, ~allowed] = -np.inf
    rows = np.repeat(np.arange(len(exclude)), exclude.lengths())
    scores[rows, exclude.items] = -np.inf


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first; ties by index ascending; -inf slots are -1.

    Exact and deterministic. ``torch.topk`` finds each row's ``k + 1`` best (multi-threaded, partial
    selection); a row whose ``k + 1``-th score equals its ``k``-th may have left a tied item out and
    is redone by :func:`exact_top_k`, so ties always go to the lowest index. O(batch * n_items).
    """
    import torch  # the ranking steps that need no model still rank fast; imported once, on first use

    n_rows, n_items = scores.shape
    k_eff = min(k, n_items)
    if n_rows == 0 or k_eff == 0:
        return np.full((n_rows, k), -1, dtype=np.int64)
    # One more than needed: where the (k+1)-th score equals the k-th, a tied item may have been left out.
    extra = 1 if k_eff < n_items else 0
    values, cols = (t.numpy() for t in torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k_eff + extra, dim=1))
    if np.isnan(values).any():  # topk ranks NaN above every number, so any NaN shows here
        raise ValueError("scores contain NaN")
    redo = (
        (values[:, -1] == values[:, k_eff - 1]) & (values[:, k_eff - 1] > -np.inf) if extra else np.zeros(n_rows, bool)
    )
    values, cols = values[:, :k_eff], cols[:, :k_eff]
    if redo.any():
        cols[redo] = exact_top_k(scores[redo], k_eff)
        values[redo] = np.take_along_axis(scores[redo], cols[redo], axis=1)
    order = np.lexsort((cols, -values), axis=1)  # by score, then by index
    result = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    result[np.take_along_axis(values, order, axis=1) == -np.inf] = -1
    if k_eff < k:
        result = np.pad(result, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return result


def exact_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` (<= n_items) highest scores' indices per row, in index order; of tied items, the lowest indices.

    The ``k``-th value is found by partition, then every item above it and the lowest-indexed items
    equal to it are taken.
    """
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (rows, 1): the k-th largest
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=1, keepdims=True)  # how many tied items fit
    chosen = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    return np.nonzero(chosen)[1].reshape(len(scores), k)  # ascending index within each row


def segment_top_k(indptr: np.ndarray, values: np.ndarray, k: int, cells: int = 1 << 24) -> np.ndarray:
    """Positions of the ``k`` largest ``values`` of each segment ``[indptr[s], indptr[s + 1])``: (segments, k).

    Best first; ties by position (so a CSR row with sorted indices breaks ties by column); -inf
    values and missing slots are -1. Segments are padded to the next power of two of their length
    and ranked by :func:`top_k` a bounded number of ``cells`` at a time: O(nnz), never dense.
    """
    counts = np.diff(indptr)
    out = np.full((len(counts), k), -1, dtype=np.int64)
    width_class = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    for w in np.unique(width_class[counts > 0]):
        width = 1 << int(w)
        segments = np.flatnonzero((width_class == w) & (counts > 0))
        step = max(1, cells // width)
        for lo in range(0, len(segments), step):
            chunk = segments[lo : lo + step]
            start = indptr[chunk][:, None]  # (c, 1)
            at = start + np.arange(width)[None, :]  # (c, width)
            inside = at < indptr[chunk + 1][:, None]
            padded = np.where(inside, values[np.minimum(at, len(values) - 1)], -np.inf)
            picked = top_k(padded, k)  # (c, k) offsets within the segment
            out[chunk] = np.where(picked >= 0, start + picked, -1)
    return out
