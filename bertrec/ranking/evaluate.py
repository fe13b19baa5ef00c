"""Offline evaluation under shared/PROTOCOL.md: test cases of a split, batched ranking, metrics.

A split gives one or more *targets*: ``valid`` and ``test`` for ``loo`` and ``ratio``; ``valid``,
``test_all`` (new items ranked among the whole catalogue) and ``test_new`` (among new items only)
for ``cold_items``. For ``valid`` the context is the training history; for test targets it is
training plus validation history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bertrec.compute.engine import Engine
from bertrec.data.split import Split
from bertrec.io import atomic_file
from bertrec.progress import Progress
from bertrec.ranking.metrics import Reference, compute_metrics
from bertrec.ranking.scoring import Histories, Scorer, TrainSet

SCORE_CELLS = 1 << 25  # users x items scored at once: 128 MiB of float32 (eval.batch_size caps the users)


@dataclass(frozen=True)
class Cases:
    """The users evaluated on one target, their contexts and their positives."""

    target: str
    users: np.ndarray  # (n,) user_idx
    context: Histories  # what the scorer sees and what is excluded from ranking
    positives: sp.csr_matrix  # (n, n_items)
    candidates: np.ndarray | None = None

    def sample(self, n: int | None, seed: int) -> Cases:
        """A seeded sample of ``n`` users (in user order), or these cases when ``n`` covers them all."""
        if n is None or n >= len(self.users):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.users), size=n, replace=False))
        indptr = self.context.indptr
        lengths = np.diff(indptr)[keep]
        take = np.repeat(indptr[keep] - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
        context = Histories(np.r_[0, np.cumsum(lengths)].astype(np.int64), self.context.items[take])
        return Cases(self.target, self.users[keep], context, self.positives[keep], self.candidates)

    def slice(self, start: int, stop: int) -> Cases:
        """Cases ``start`` to ``stop`` (a contiguous part of the users, for sharded ranking)."""
        context = self.context.slice(start, stop)
        return Cases(self.target, self.users[start:stop], context, self.positives[start:stop], self.candidates)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one scorer on one target, with the top-K lists they were computed from."""

    target: str
    metrics: dict[str, float]
    users: np.ndarray
    topk: np.ndarray  # (n, K_max)


def targets(split: Split) -> tuple[str, ...]:
    if split.new_items is not None:
        return ("valid", "test_all", "test_new")
    return ("valid", "test")


def build_cases(split: Split, target: str) -> Cases:
    """The evaluation cases of ``target`` (see :func:`targets`)."""
    if target == "valid":
        held, context_rows = split.valid, split.train
    elif target in ("test", "test_all", "test_new"):
        held, context_rows = split.test, pd.concat([split.train, split.valid])
    else:
        raise ValueError(f"unknown target {target!r}; split {split.name} has {targets(split)}")
    users = np.unique(held["user_idx"].to_numpy())
    context = Histories.from_frame(context_rows, users)
    row = np.searchsorted(users, held["user_idx"].to_numpy())
    positives = sp.csr_matrix(
        (np.ones(len(held), dtype=np.float32), (row, held["item_idx"].to_numpy())),
        shape=(len(users), split.n_items),
    )
    positives.sum_duplicates()
    candidates = split.new_items if target == "test_new" else None
    return Cases(target, users, context, positives, candidates)


def train_set(split: Split, items: pd.DataFrame) -> TrainSet:
    return TrainSet(split.n_users, split.n_items, split.train.reset_index(drop=True), items)


def reference_of(train: TrainSet) -> Reference:
    """Popularity, head/tail and user shares of a training set, for the beyond-accuracy metrics."""
    rows = train.interactions
    return Reference.from_train(rows["item_idx"].to_numpy(), rows["user_idx"].to_numpy(), train.n_items)


def chunk_rows(batch_size: int, n_items: int, cells: int = SCORE_CELLS) -> int:
    """Users ranked at once: ``batch_size``, fewer when a (users, catalogue) score matrix would pass ``cells``."""
    return max(1, min(batch_size, cells // max(n_items, 1)))


def rank_cases(
    scorer: Scorer, cases: Cases, k: int, batch_size: int, engine: Engine | None = None, shared: Any = None
) -> np.ndarray:
    """Top-``k`` lists of every case, computed in chunks of users (see :func:`chunk_rows`): (n, k).

    Memory is bounded by the chunk's score matrix, whatever the number of users; progress goes to the
    log. With a distributed ``engine``, the users are cut into one contiguous part per worker, each
    ranked there by the same code, and the lists joined in order: the same lists as here.
    ``shared`` is ``engine.put(scorer)`` when the caller already stored the scorer.
    """
    if engine is not None and engine.name != "local":
        shared = engine.put(scorer) if shared is None else shared
        work = [(cases.slice(a, b), k, batch_size) for a, b in engine.parts(len(cases.users))]
        pieces = engine.map(_rank_part, shared, work)
        return np.concatenate(pieces) if pieces else np.empty((0, k), dtype=np.int64)
    out = np.empty((len(cases.users), k), dtype=np.int64)
    rows = chunk_rows(batch_size, cases.positives.shape[1])
    meter = Progress(f"rank {cases.target}", len(cases.users), "users")
    for start in range(0, len(cases.users), rows):
        stop = min(start + rows, len(cases.users))
        out[start:stop] = scorer.recommend(cases.context.slice(start, stop), k, candidates=cases.candidates)
        meter.advance(stop - start)
    meter.finish()
    return out


def _rank_part(scorer: Scorer, work: tuple[Cases, int, int]) -> np.ndarray:
    """One worker's part of :func:`rank_cases`."""
    cases, k, batch_size = work
    return rank_cases(scorer, cases, k, batch_size)


def evaluate(
    scorer: Scorer,
    cases: Cases,
    reference: Reference,
    ks: tuple[int, ...],
    batch_size: int = 1024,
    engine: Engine | None = None,
    shared: Any = None,
) -> Evaluation:
    """Rank every case with ``scorer`` (on ``engine``: :func:`rank_cases`); all metrics for each K in ``ks``.

    Metrics are computed here, from every user's list: a sharded ranking gives the same figures.
    """
    topk = rank_cases(scorer, cases, max(ks), batch_size, engine, shared)
    metrics = compute_metrics(topk, cases.positives, reference, ks, cases.candidates)
    return Evaluation(cases.target, metrics, cases.users, topk)


def save_topk(evaluation: Evaluation, items: pd.DataFrame, path: Path) -> None:
    """Write top-K lists as Parquet: ``user_idx`` and ``item_ids`` (a list, best first), atomically."""
    ids = items["item_id"].to_numpy()
    lists = [[ids[i] for i in row if i >= 0] for row in evaluation.topk]
    frame = pd.DataFrame({"user_idx": evaluation.users, "item_idx": list(evaluation.topk), "item_ids": lists})
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


def evaluate_split(
    scorers: list[Scorer],
    split: Split,
    items: pd.DataFrame,
    ks: tuple[int, ...],
    batch_size: int,
    topk_dir: Path | None = None,
    engine: Engine | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Fit each scorer on the split's training data and evaluate it on every target.

    Fitting happens here; ranking on ``engine`` when given (each fitted scorer is stored there once).
    Returns ``{model: {target: {metric: value}}}``; top-K lists go to
    ``topk_dir/<split>/<model>.<target>.parquet`` when ``topk_dir`` is given.
    """
    train = train_set(split, items)
    reference = reference_of(train)
    all_cases = [build_cases(split, target) for target in targets(split)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for scorer in scorers:
        scorer.fit_split(split, items)
        shared = engine.put(scorer) if engine is not None else None
        results[scorer.name] = {}
        for cases in all_cases:
            evaluation = evaluate(scorer, cases, reference, ks, batch_size, engine, shared)
            results[scorer.name][cases.target] = evaluation.metrics
            if topk_dir is not None:
                save_topk(evaluation, items, Path(topk_dir) / split.name / f"{scorer.name}.{cases.target}.parquet")
    return results
