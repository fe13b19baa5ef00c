"""The baselines every bertrec model must beat, behind the :class:`~bertrec.ranking.scoring.Scorer` interface.

- ``popular``: training popularity.
- ``itemknn``: item-item cosine similarity on the binary interaction matrix, each item keeping
  its ``neighbours`` most similar items (RecBole's ItemKNN).
- ``text-zero-shot``: the pretrained encoder with no training; item vector = mean-pooled encoder
  output of the item text, user vector = mean of the vectors of the most recent history items.
- ``sasrec``: the ID-only sequence model with SASRec's recipe (:mod:`bertrec.model.sasrec`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bertrec.compute.engine import Engine
from bertrec.config import Params
from bertrec.progress import progress
from bertrec.ranking.scoring import Histories, Scorer, TrainSet, segment_top_k, top_k

SIMILARITY_NNZ = 20_000_000  # co-occurring pairs per block of the similarity (a few hundred MB)


class Popular(Scorer):
    name = "popular"

    def fit(self, train: TrainSet) -> Popular:
        self.popularity = train.popularity().astype(np.float32)
        self.order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))  # best first, ties by index
        return self

    def score(self, histories: Histories) -> np.ndarray:
        return np.tile(self.popularity, (len(histories), 1))

    def recommend(
        self, histories: Histories, k: int, exclude: Histories | None = None, candidates: np.ndarray | None = None
    ) -> np.ndarray:
        """As :meth:`Scorer.recommend`, ranking only the ``k`` + longest-history most popular items.

        Every user's list comes from the same global order, so no user needs more items of it than
        ``k`` plus what they exclude: O(batch x (k + history)) instead of O(batch x catalogue).
        """
        exclude = histories if exclude is None else exclude
        order = self.order if candidates is None else self.order[np.isin(self.order, candidates)]
        head = order[: k + int(exclude.lengths().max(initial=0))]  # (width,)
        scores = np.tile(self.popularity[head], (len(exclude), 1))  # (batch, width)
        column = np.full(len(self.popularity), -1, dtype=np.int64)
        column[head] = np.arange(len(head))
        rows = np.repeat(np.arange(len(exclude)), exclude.lengths())
        cols = column[exclude.items]
        scores[rows[cols >= 0], cols[cols >= 0]] = -np.inf
        picked = top_k(scores, k)  # ties by column, which is index order among equal popularity
        return np.where(picked >= 0, head[np.maximum(picked, 0)], -1)


def top_per_column(block: sp.csc_matrix, keep: int) -> sp.csc_matrix:
    """Each column's ``keep`` largest positive entries (ties: lower row first), from its stored entries only."""
    block = sp.csc_matrix(block)
    block.eliminate_zeros()
    block.sort_indices()  # ties by position are then ties by row
    at = segment_top_k(block.indptr, block.data, keep)  # (columns, keep) positions, -1 empty
    cols = np.broadcast_to(np.arange(block.shape[1])[:, None], at.shape)[at >= 0]
    at = at[at >= 0]
    positive = block.data[at] > 0
    return sp.csc_matrix((block.data[at][positive], (block.indices[at][positive], cols[positive])), shape=block.shape)


def knn_similarity(matrix: sp.csr_matrix, neighbours: int, shrink: float = 0.0) -> sp.csr_matrix:
    """Item-item cosine similarity, each column keeping its ``neighbours`` largest entries.

    ``W[i, j]`` is the similarity of history item ``i`` to candidate ``j``; the diagonal is zero;
    ties keep the lower item index. Sparse throughout: co-occurrences are computed in column
    blocks of about ``SIMILARITY_NNZ`` entries, so time and memory grow with the number of
    co-occurring pairs, never with items x items.
    """
    x = sp.csc_matrix(matrix, dtype=np.float32)
    x.sum_duplicates()
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (n_items,)
    xt = x.T.tocsr()
    keep = min(neighbours, max(n_items - 1, 1))
    # Co-occurrences of column j: sum over j's users of their history lengths.
    per_column = np.asarray(x.T @ np.diff(sp.csr_matrix(x).indptr).astype(np.float64)).ravel()
    bounds = _blocks(per_column, SIMILARITY_NNZ)
    parts = []
    for start, stop in progress(bounds, "itemknn similarity", n_items, size=lambda b: b[1] - b[0], unit="items"):
        block = sp.csc_matrix(xt @ x[:, start:stop])  # (n_items, b) co-occurrence counts, sparse
        cols = np.repeat(np.arange(start, stop), np.diff(block.indptr))
        block.data /= norms[block.indices] * norms[cols] + shrink + 1e-6
        block.data[block.indices == cols] = 0.0  # the diagonal
        parts.append(top_per_column(block, keep))
    return sp.hstack(parts, format="csr") if parts else sp.csr_matrix((n_items, n_items), dtype=np.float32)


def _blocks(weights: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """Consecutive (start, stop) ranges whose summed ``weights`` stay near ``budget`` (at least one item each)."""
    cumulative = np.cumsum(weights)
    bounds, start = [], 0
    while start < len(weights):
        base = cumulative[start - 1] if start else 0.0
        stop = max(int(np.searchsorted(cumulative, base + budget, side="right")), start + 1)
        bounds.append((start, min(stop, len(weights))))
        start = stop
    return bounds


class ItemKNN(Scorer):
    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrink: float = 0.0) -> None:
        self.neighbours = neighbours
        self.shrink = shrink

    def fit(self, train: TrainSet) -> ItemKNN:
        self.n_items = train.n_items
        self.similarity = knn_similarity(train.histories().matrix(train.n_items), self.neighbours, self.shrink)
        return self

    def score(self, histories: Histories) -> np.ndarray:
        return np.asarray(self.sparse_scores(histories).toarray(), dtype=np.float32)

    def sparse_scores(self, histories: Histories) -> sp.csr_matrix:
        """(batch, n_items) scores, stored only where an item is a neighbour of the history."""
        return sp.csr_matrix(histories.matrix(self.n_items) @ self.similarity, dtype=np.float32)

    def recommend(
        self, histories: Histories, k: int, exclude: Histories | None = None, candidates: np.ndarray | None = None
    ) -> np.ndarray:
        """As :meth:`Scorer.recommend`, from the sparse scores: O(neighbour entries), not O(batch x catalogue).

        Scores are never negative, so items without a stored score tie at zero below every stored
        one; the slots they fill go to the lowest allowed indices, as in the dense ranking.
        """
        exclude = histories if exclude is None else exclude
        scores = self.sparse_scores(histories)
        allowed = (
            np.ones(self.n_items, dtype=bool) if candidates is None else np.isin(np.arange(self.n_items), candidates)
        )
        banned = exclude.matrix(self.n_items)
        keep = sp.csr_matrix(scores.multiply(allowed[None, :].astype(np.float32)))
        keep = sp.csr_matrix(keep - keep.multiply(banned))  # excluded entries become explicit zeros
        keep.eliminate_zeros()
        keep.sort_indices()
        at = segment_top_k(keep.indptr, keep.data, k)
        picks = np.append(keep.indices, -1).astype(np.int64)[np.where(at >= 0, at, keep.nnz)]  # (batch, k), -1: empty
        for row in np.flatnonzero((picks < 0).any(axis=1)):  # fewer than k stored scores: zeros, by index
            taken = np.r_[exclude[row], picks[row][picks[row] >= 0]]
            free = np.flatnonzero(allowed & ~np.isin(np.arange(self.n_items), taken))
            empty = np.flatnonzero(picks[row] < 0)
            picks[row, empty[: len(free)]] = free[: len(empty)]
        return picks


class TextZeroShot(Scorer):
    """Pretrained sentence vectors, no training. Item vectors are computed once per catalogue text."""

    name = "text-zero-shot"

    def __init__(
        self,
        encoder: str,
        history: int = 20,
        max_length: int = 64,
        batch_size: int = 128,
        cache_dir: Path | None = None,
        precision: str = "fp32",
        engine: Engine | None = None,
    ) -> None:
        """``cache_dir`` and ``precision``: as the trained model's frozen features (bertrec.model.features),
        so the catalogue is encoded once for this baseline and the model together; ``engine`` encodes it."""
        self.encoder_name = encoder
        self.history = history
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.precision = precision
        self.engine = engine
        self._texts_digest: str | None = None

    def fit(self, train: TrainSet) -> TextZeroShot:
        texts = train.items["text"].tolist()
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        if digest != self._texts_digest:
            # torch and transformers: only for this baseline
            from bertrec.model.encoder import TextEncoder
            from bertrec.model.features import PROBE_TEXTS, catalogue_features, features_key, frozen_encoder

            loaded = TextEncoder.load(self.encoder_name, self.max_length)
            encoder, precision = frozen_encoder(loaded, self.precision, texts[:PROBE_TEXTS])
            key = features_key(loaded.fingerprint(), precision, texts) if self.cache_dir is not None else None
            features = catalogue_features(encoder, texts, self.batch_size, self.cache_dir, key, self.engine)
            vectors = np.asarray(features, np.float32)
            self.vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # unit norm
            self._texts_digest = digest
        return self

    def score(self, histories: Histories) -> np.ndarray:
        recent = histories.last(self.history)
        users = recent.matrix(len(self.vectors)) @ self.vectors  # (batch, dim) sums
        counts = np.maximum(recent.lengths(), 1).astype(np.float32)[:, None]  # float32 all through: no float64 GEMM
        users = users / counts
        norms = np.linalg.norm(users, axis=1, keepdims=True)
        users = np.divide(users, norms, out=np.zeros_like(users), where=norms > 0)
        return (users @ self.vectors.T).astype(np.float32)


def make_baselines(params: Params, engine: Engine | None = None) -> list[Scorer]:
    """The baselines named in ``params.baselines.models``, configured from params (text encoded on ``engine``)."""
    made: list[Scorer] = []
    for name in params.baselines.models:
        if name == "popular":
            made.append(Popular())
        elif name == "itemknn":
            made.append(ItemKNN(params.baselines.itemknn.neighbours, params.baselines.itemknn.shrink))
        elif name == "sasrec":
            from bertrec.model.sasrec import SASRec  # torch: only for this baseline

            made.append(SASRec(params))
        else:
            made.append(
                TextZeroShot(
                    params.model.encoder,
                    params.baselines.zero_shot.history,
                    params.model.max_length,
                    params.model.encode_batch_size,
                    params.paths.cache,
                    params.model.encode_precision,
                    engine,
                )
            )
    return made
