"""Is one model better than another on the same users? Per-user metrics and a paired bootstrap over users."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from bertrec.ranking.metrics import hits_matrix


def per_user(topk: np.ndarray, positives: sp.csr_matrix, k: int = 10) -> dict[str, np.ndarray]:
    """Each user's NDCG@k and Hit@k (the means of these are :func:`~bertrec.ranking.metrics.compute_metrics`'s)."""
    hits = hits_matrix(topk[:, :k], positives)
    n_pos = np.diff(sp.csr_matrix(positives).indptr)
    gains = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.r_[0.0, np.cumsum(gains)][np.minimum(n_pos, k)]
    return {f"NDCG@{k}": (hits * gains).sum(axis=1) / ideal, f"Hit@{k}": hits.any(axis=1).astype(np.float64)}


@dataclass(frozen=True)
class Bootstrap:
    """The mean of ``a - b`` over users and its percentile interval from resampling users."""

    mean_a: float
    mean_b: float
    difference: float  # mean(a) - mean(b)
    low: float
    high: float
    level: float
    relative: float  # difference / mean(b)
    resamples: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, level: float = 0.95, seed: int = 0):
    """Paired bootstrap of ``mean(a) - mean(b)``: ``a`` and ``b`` hold the same users' values, in the same order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired values need two equal, non-empty 1-d arrays; got {a.shape} and {b.shape}")
    differences = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # 1000 resamples at once: bounded memory for any number of users
        stop = min(start + 1000, resamples)
        draws = rng.integers(0, len(a), size=(stop - start, len(a)))
        means[start:stop] = differences[draws].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    mean_b = float(b.mean())
    difference = float(differences.mean())
    return Bootstrap(
        float(a.mean()),
        mean_b,
        difference,
        float(low),
        float(high),
        level,
        difference / mean_b if mean_b else 0.0,
        resamples,
    )
