"""The quality signal: is the champion still as good as it was when it went into service?

Returning users (users with a history in the champion's data who came back in the current window)
each have a next item: their first interaction of the window. The champion ranks the catalogue from
their history (the served scoring: re-ranking included, history excluded); NDCG@10 and Hit@10 of
those next items are compared with the champion's expected level: the same two figures over its
first ``drift.decay_baseline_checks`` checks (its first weeks in service, read back from their MLflow
runs). A paired bootstrap over users gives each difference an interval at ``drift.decay_level``
(Bonferroni over the two metrics); the verdict is ``decay`` when an interval lies wholly below zero.

Why not the registered test level: the ``loo`` test item is each user's last item, usually from the
same session as the items before it; a returning user's next item comes after a gap, and is several
times harder to rank (on ml-100k, NDCG@10 about 0.02 against 0.09 for the same model). Against the test
level every week would read as decay; against its own first weeks, a champion decays when it gets worse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bertrec.config import DriftParams
from bertrec.ranking.significance import paired_bootstrap, per_user

K = 10
CHECKED, BASELINE, TOO_FEW_USERS = "checked", "baseline", "too-few-users"
METRICS = (f"NDCG@{K}", f"Hit@{K}")


@dataclass(frozen=True)
class DecayVerdict:
    """``decay`` when an interval of (observed - expected) lies below 0; ``status`` says whether it was checked."""

    status: str  # CHECKED, BASELINE (measured, no expected level yet) or TOO_FEW_USERS
    decay: bool
    users: int
    metrics: dict[str, dict[str, float]]  # metric -> observed, expected, difference, low, high
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_items(before: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Each returning user's first interaction of ``current`` (rows with ``user_idx``, ``item_idx``, ``timestamp``)."""
    known = current[current["user_idx"].isin(np.unique(before["user_idx"].to_numpy()))]
    first = known.sort_values(["user_idx", "timestamp"], kind="stable").drop_duplicates("user_idx")
    return first.reset_index(drop=True)


def per_user_quality(topk: np.ndarray, targets: np.ndarray, n_items: int) -> dict[str, np.ndarray]:
    """Each user's NDCG@10 and Hit@10 of one target item (``targets[u]``) in ``topk[u]``."""
    positives = sp.csr_matrix(
        (np.ones(len(targets)), (np.arange(len(targets)), np.asarray(targets, dtype=np.int64))),
        shape=(len(targets), n_items),
    )
    return per_user(topk, positives, K)


def decay_verdict(per_user_values: dict[str, np.ndarray], expected: dict[str, float], p: DriftParams) -> DecayVerdict:
    """Compare each metric's per-user values with its expected level (see the module docstring)."""
    users = len(next(iter(per_user_values.values()))) if per_user_values else 0
    if users < p.decay_min_users:
        reason = f"{users} returning users; the quality check needs drift.decay_min_users={p.decay_min_users}"
        return DecayVerdict(TOO_FEW_USERS, False, users, {}, reason)
    missing = [m for m in METRICS if m not in expected]
    if missing:
        observed = {name: {"observed": float(per_user_values[name].mean())} for name in METRICS}
        reason = f"no expected level yet: this check is part of the champion's baseline (missing {missing})"
        return DecayVerdict(BASELINE, False, users, observed, reason)
    level = 1.0 - (1.0 - p.decay_level) / len(METRICS)
    metrics, below = {}, []
    for name in METRICS:
        values = per_user_values[name]
        boot = paired_bootstrap(values, np.full(len(values), expected[name]), p.decay_resamples, level, p.seed)
        metrics[name] = {
            "observed": boot.mean_a,
            "expected": expected[name],
            "difference": boot.difference,
            "low": boot.low,
            "high": boot.high,
        }
        if boot.high < 0:
            interval = f"[{boot.low:+.4f}, {boot.high:+.4f}]"
            below.append(f"{name} {boot.mean_a:.4f} < {expected[name]:.4f} (interval {interval})")
    reason = (
        "decay: " + "; ".join(below) if below else f"no decay: every interval at {level:.3f} reaches the expected level"
    )
    return DecayVerdict(CHECKED, bool(below), users, metrics, reason)
