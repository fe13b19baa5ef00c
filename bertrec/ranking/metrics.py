"""Every metric of shared/PROTOCOL.md, computed from top-K lists, vectorised, for any K.

Inputs are the ranked lists (``topk``: (users, K_max) item indices, -1 for an empty slot), the
positives of each evaluated user (a CSR matrix), and :class:`Reference` statistics of the
training data (popularity, head/tail, user shares).

Notes on cases the protocol leaves open:
- ``TailHit@K`` with several positives per user (``ratio``, ``cold_items``): over users with at
  least one tail positive, 1 when one of their tail positives is in the top K.
- ``Novelty@K``: an item no training user interacted with counts as seen by one user.
- With ``candidates`` (``cold_items`` ranked among new items only), the catalogue of Coverage and
  Gini is the candidate set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

ACCURACY = ("Hit", "Recall", "NDCG", "MRR", "Precision")
BEYOND = ("Coverage", "ARP", "TailShare", "TailHit", "Gini", "Novelty")
METRICS = ACCURACY + BEYOND
HEAD_SHARE = 0.8


def metric_key(name: str, k: int) -> str:
    return f"{name}@{k}"


@dataclass(frozen=True)
class Reference:
    """Training statistics that the beyond-accuracy metrics need."""

    popularity: np.ndarray  # (n_items,) training interactions per item
    user_share: np.ndarray  # (n_items,) share of training users who interacted with the item
    tail: np.ndarray  # (n_items,) bool

    @classmethod
    def from_train(cls, item_idx: np.ndarray, user_idx: np.ndarray, n_items: int) -> Reference:
        popularity = np.bincount(item_idx, minlength=n_items).astype(np.int64)
        pairs = np.unique(np.asarray(user_idx, dtype=np.int64) * n_items + item_idx)  # distinct (user, item)
        users_per_item = np.bincount(pairs % n_items, minlength=n_items)
        n_train_users = max(1, len(np.unique(user_idx)))
        share = np.maximum(users_per_item, 1) / n_train_users
        return cls(popularity, share, ~head_items(popularity))

    @property
    def n_items(self) -> int:
        return len(self.popularity)


def head_items(popularity: np.ndarray, share: float = HEAD_SHARE) -> np.ndarray:
    """Bool mask of the head: the fewest most popular items (ties by id) holding ``share`` of interactions."""
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    cumulative = np.cumsum(popularity[order])
    n_head = int(np.searchsorted(cumulative, share * cumulative[-1], side="left")) + 1 if cumulative[-1] else 0
    head = np.zeros(len(popularity), dtype=bool)
    head[order[:n_head]] = True
    return head


def hits_matrix(topk: np.ndarray, positives: sp.csr_matrix) -> np.ndarray:
    """Bool (users, K): whether each recommended item is a positive of its user."""
    n_users, k = topk.shape
    rows = np.repeat(np.arange(n_users), k)
    cols = topk.ravel()
    valid = cols >= 0
    out = np.zeros(n_users * k, dtype=bool)
    if valid.any():
        out[valid] = np.asarray(positives[rows[valid], cols[valid]]).ravel() > 0
    return out.reshape(n_users, k)


def gini(counts: np.ndarray) -> float:
    """Gini index of recommendation counts over a catalogue (RecBole's GiniIndex)."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(counts), counts.sum()
    if total == 0 or n == 0:
        return 0.0
    idx = np.arange(1, n + 1)
    return float(np.sum((2 * idx - n - 1) * counts) / (n * total))


def compute_metrics(
    topk: np.ndarray,
    positives: sp.csr_matrix,
    reference: Reference,
    ks: tuple[int, ...] = (10, 20),
    candidates: np.ndarray | None = None,
) -> dict[str, float]:
    """All PROTOCOL.md metrics for each K in ``ks``, as ``{"NDCG@10": ...}``.

    Args:
        topk: (users, K_max) ranked item indices, -1 where no item; K_max >= max(ks).
        positives: (users, n_items) CSR, non-zero where the item is a positive of that user.
        reference: training statistics (popularity, tail, user shares).
        ks: cut-offs.
        candidates: the items ranked (default: the whole catalogue); the catalogue of Coverage and Gini.
    """
    if topk.shape[1] < max(ks):
        raise ValueError(f"top-K lists have {topk.shape[1]} columns; need at least {max(ks)}")
    positives = sp.csr_matrix(positives, copy=True)
    positives.eliminate_zeros()  # an explicit zero is not a positive
    n_users = topk.shape[0]
    n_pos = np.diff(positives.indptr)
    if n_users == 0 or (n_pos == 0).any():
        raise ValueError("every evaluated user needs at least one positive")
    hits = hits_matrix(topk, positives)
    ranks = np.arange(1, topk.shape[1] + 1)
    gains = 1.0 / np.log2(ranks + 1)
    ideal = np.r_[0.0, np.cumsum(gains)]
    valid = topk >= 0
    safe = np.where(valid, topk, 0)

    tail_pos = positives.multiply(reference.tail[None, :].astype(np.float32)).tocsr()
    tail_pos.eliminate_zeros()  # multiply keeps head positives as explicit zeros
    tail_users = np.diff(tail_pos.indptr) > 0
    tail_hits = hits_matrix(topk[tail_users], tail_pos[tail_users])
    n_catalogue = reference.n_items if candidates is None else len(candidates)
    log_share = -np.log2(reference.user_share)

    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(axis=1)
        v = valid[:, :k]
        items = safe[:, :k]
        slots = np.maximum(v.sum(axis=1), 1)
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, 0)
        out[metric_key("Hit", k)] = float((n_hit > 0).mean())
        out[metric_key("Recall", k)] = float((n_hit / n_pos).mean())
        out[metric_key("NDCG", k)] = float(((h * gains[:k]).sum(axis=1) / ideal[np.minimum(n_pos, k)]).mean())
        out[metric_key("MRR", k)] = float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean())
        out[metric_key("Precision", k)] = float((n_hit / k).mean())
        recommended = topk[:, :k][v]
        counts = np.bincount(recommended, minlength=reference.n_items)
        if candidates is not None:
            counts = counts[candidates]
        out[metric_key("Coverage", k)] = float(np.count_nonzero(counts) / n_catalogue)
        out[metric_key("ARP", k)] = float(((reference.popularity[items] * v).sum(axis=1) / slots).mean())
        out[metric_key("TailShare", k)] = float(((reference.tail[items] & v).sum(axis=1) / slots).mean())
        out[metric_key("TailHit", k)] = float(tail_hits[:, :k].any(axis=1).mean()) if tail_users.any() else 0.0
        out[metric_key("Gini", k)] = gini(counts)
        out[metric_key("Novelty", k)] = float(((log_share[items] * v).sum(axis=1) / slots).mean())
    return out
