"""The baselines every bertrec model must beat, behind the :class:`~bertrec.ranking.scoring.Scorer` interface.

- ``popular``: training popularity.
- ``itemknn``: item-item cosine similarity on the binary interaction matrix, each item keeping
  its ``neighbours`` most similar items (RecBole's ItemKNN).
- ``text-zero-shot``: the pretrained encoder with no training; item vector = mean-pooled encoder
  output of the item text, user vector = mean of the vectors of the most recent history items.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from bertrec.config import Params
from bertrec.ranking.scoring import Histories, Scorer, TrainSet

SIMILARITY_BLOCK = 2048


class Popular(Scorer):
    name = "popular"

    def fit(self, train: TrainSet) -> Popular:
        self.popularity = train.popularity().astype(np.float32)
        return self

    def score(self, histories: Histories) -> np.ndarray:
        return np.tile(self.popularity, (len(histories), 1))


def knn_similarity(matrix: sp.csr_matrix, neighbours: int, shrink: float = 0.0) -> sp.csr_matrix:
    """Item-item cosine similarity, each column keeping its ``neighbours`` largest entries.

    ``W[i, j]`` is the similarity of history item ``i`` to candidate ``j``; the diagonal is zero.
    Computed in column blocks, so memory is O(n_items * block).
    """
    x = sp.csc_matrix(matrix, dtype=np.float32)
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (n_items,)
    xt = x.T.tocsr()
    rows, cols, vals = [], [], []
    keep = min(neighbours, max(n_items - 1, 1))
    for start in range(0, n_items, SIMILARITY_BLOCK):
        stop = min(start + SIMILARITY_BLOCK, n_items)
        block = (xt @ x[:, start:stop]).toarray()  # (n_items, b) co-occurrence counts
        block /= np.outer(norms, norms[start:stop]) + shrink + 1e-6
        block[np.arange(start, stop), np.arange(stop - start)] = 0.0
        top = np.argpartition(-block, keep - 1, axis=0)[:keep]  # (keep, b)
        values = np.take_along_axis(block, top, axis=0)
        nonzero = values > 0
        rows.append(top[nonzero])
        cols.append(np.broadcast_to(np.arange(start, stop), top.shape)[nonzero])
        vals.append(values[nonzero])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))


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
        return np.asarray((histories.matrix(self.n_items) @ self.similarity).toarray(), dtype=np.float32)


class TextZeroShot(Scorer):
    """Pretrained sentence vectors, no training. Item vectors are computed once per catalogue text."""

    name = "text-zero-shot"

    def __init__(self, encoder: str, history: int = 20, max_length: int = 64, batch_size: int = 128) -> None:
        self.encoder_name = encoder
        self.history = history
        self.max_length = max_length
        self.batch_size = batch_size
        self._texts_digest: str | None = None

    def fit(self, train: TrainSet) -> TextZeroShot:
        texts = train.items["text"].tolist()
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        if digest != self._texts_digest:
            from bertrec.model.encoder import TextEncoder  # torch: only for this baseline

            encoder = TextEncoder.load(self.encoder_name, self.max_length)
            self.vectors = encoder.encode(texts, self.batch_size)  # (n_items, dim), unit norm
            self._texts_digest = digest
        return self

    def score(self, histories: Histories) -> np.ndarray:
        recent = histories.last(self.history)
        users = recent.matrix(len(self.vectors)) @ self.vectors  # (batch, dim) sums
        counts = np.maximum(recent.lengths(), 1)[:, None]
        users = users / counts
        norms = np.linalg.norm(users, axis=1, keepdims=True)
        users = np.divide(users, norms, out=np.zeros_like(users), where=norms > 0)
        return (users @ self.vectors.T).astype(np.float32)


def make_baselines(params: Params) -> list[Scorer]:
    """The baselines named in ``params.baselines.models``, configured from params."""
    made: list[Scorer] = []
    for name in params.baselines.models:
        if name == "popular":
            made.append(Popular())
        elif name == "itemknn":
            made.append(ItemKNN(params.baselines.itemknn.neighbours, params.baselines.itemknn.shrink))
        else:
            made.append(
                TextZeroShot(
                    params.model.encoder,
                    params.baselines.zero_shot.history,
                    params.model.max_length,
                    params.model.encode_batch_size,
                )
            )
    return made
