"""Calibrated drift: thresholds that come from the champion's own data, not from a textbook.

A drift test with a fixed threshold (p < 0.05, distance >= 0.1) asks "are these two samples from one
distribution?", and on real traffic the answer is almost always no: weeks differ from weeks. The
question worth an alarm is "is this window more different from the last one than weeks usually are?"
So each statistic is measured twice:

- **observed**: the champion's last stretch of data (the reference window) against the current window;
- **null**: the same statistic across the champion's own history, cut into consecutive periods as long
  as the current window (``drift.calibration_periods`` pairs of them, the newest), each period against
  the one before, or, when the current window starts some windows after the champion's data ends (a
  champion kept for weeks), against the one as many windows later. When the history holds fewer than
  ``drift.min_null`` such pairs (a champion trained on a few weeks), the null comes from split halves
  instead: the reference window's users (items, for the embedding check) split at random into two
  halves, ``drift.resamples`` times.
  Halves are smaller samples than the windows, so that null is the wider one: it errs towards silence.

Each column's p-value is the upper tail of the observed statistic under a log-normal fitted to its null
(a Student-t prediction interval on the log scale: the null has a handful of values). Every column of
every check is one hypothesis; Holm's procedure keeps the chance of any false alarm in one run at
``drift.false_alarm_rate``. A check drifts when one of its columns is rejected.

The statistics are Evidently's (its drift tests' scores, with the distance ``drift.num_stattest``, and its
``EmbeddingsDrift`` score); Evidently's own decision at its default
thresholds is kept beside ours in each column (``evidently_drift``), so the two can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bertrec.config import DriftParams
from bertrec.mlops.drift.behaviour import ITEM_NUMERICAL, USER_NUMERICAL, BehaviourBasis, item_table, user_table
from bertrec.mlops.drift.checks import _column_drift, _plain

PERIODS, SPLIT_HALF = "periods", "split-half"
EPSILON = 1e-9  # statistics can be 0: logs are taken of statistic + EPSILON


@dataclass(frozen=True)
class Scored:
    """A check's statistics before the decision: per column the observed value and its null values."""

    name: str
    observed: dict[str, float]
    null: dict[str, list[float]]
    null_method: str  # PERIODS or SPLIT_HALF
    evidently_drift: dict[str, bool]  # Evidently's own decision per column, at its default thresholds
    details: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, Any] = field(default_factory=dict, compare=False)  # name -> Evidently run, for the HTML


@dataclass(frozen=True)
class Decided:
    """A check's decision: per column the p-value and whether Holm's procedure rejected it."""

    scored: Scored
    p_values: dict[str, float]
    rejected: dict[str, bool]
    alpha: float
    hypotheses: int

    @property
    def drift(self) -> bool:
        return any(self.rejected.values())

    @property
    def score(self) -> float:
        """The smallest p-value of the check's columns (NaN without columns)."""
        return min(self.p_values.values(), default=float("nan"))

    def details(self) -> dict[str, Any]:
        s = self.scored
        columns = {
            name: {
                "statistic": s.observed[name],
                "null": s.null[name],
                "p_value": self.p_values[name],
                "drifted": self.rejected[name],
                "evidently_drift": s.evidently_drift.get(name),
            }
            for name in s.observed
        }
        rule = (
            f"a column's statistic beyond its null (Holm over {self.hypotheses} columns of all checks, "
            f"false-alarm rate {self.alpha})"
        )
        return _plain({"rule": rule, "null": s.null_method, "columns": columns, **s.details})


# --- the null --------------------------------------------------------------------------------------


def periods_before(rows: pd.DataFrame, end: float, span: float, count: int) -> list[pd.DataFrame]:
    """Up to ``count`` consecutive periods of ``span`` seconds ending at ``end``, oldest first; the
    oldest periods without a row are dropped (the history had not started)."""
    stamps = rows["timestamp"].to_numpy(np.float64)
    periods = []
    for i in range(count, 0, -1):
        start, stop = end - i * span, end - (i - 1) * span
        periods.append(rows[(stamps > start) & (stamps <= stop)])
    while periods and periods[0].empty:
        periods.pop(0)
    return periods


def lagged_pairs(periods: list, lag: int) -> list[tuple]:
    """Each period with the one ``lag + 1`` periods later: as far apart as the reference and the current window."""
    step = lag + 1
    return list(zip(periods[:-step], periods[step:], strict=True)) if len(periods) > step else []


def halves(n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """``resamples`` random boolean masks over ``n`` elements, each marking half of them."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(resamples):
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: n // 2]] = True
        masks.append(mask)
    return masks


# --- the decision ----------------------------------------------------------------------------------


def tail_p_value(observed: float, null: Sequence[float]) -> float:
    """P(statistic >= observed) under a log-normal fitted to ``null`` (Student-t prediction interval).

    NaN with fewer than two null values. A null without spread gives 1.0 at or below its value and
    0.0 above it.
    """
    from scipy import stats

    values = np.log(np.asarray(null, dtype=np.float64) + EPSILON)
    if len(values) < 2 or not math.isfinite(observed):
        return float("nan")
    x = math.log(observed + EPSILON)
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    if sd <= 1e-12:
        return 1.0 if x <= mean + 1e-12 else 0.0
    t = (x - mean) / (sd * math.sqrt(1.0 + 1.0 / len(values)))
    return float(stats.t.sf(t, df=len(values) - 1))


def holm(p_values: dict[str, float], alpha: float) -> dict[str, bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error ``alpha``. NaN: never."""
    tested = sorted((p, key) for key, p in p_values.items() if not math.isnan(p))
    rejected = dict.fromkeys(p_values, False)
    for rank, (p, key) in enumerate(tested):
        if p > alpha / (len(tested) - rank):
            break
        rejected[key] = True
    return rejected


def decide(scored: Sequence[Scored], alpha: float) -> list[Decided]:
    """p-values of every column of every check, rejected by Holm's procedure over all of them."""
    keys = {(s.name, column): tail_p_value(s.observed[column], s.null[column]) for s in scored for column in s.observed}
    flat = {f"{name}.{column}": p for (name, column), p in keys.items()}
    rejected = holm(flat, alpha)
    return [
        Decided(
            s,
            {c: keys[(s.name, c)] for c in s.observed},
            {c: rejected[f"{s.name}.{c}"] for c in s.observed},
            alpha,
            len(flat),
        )
        for s in scored
    ]


# --- statistics ------------------------------------------------------------------------------------


def distances(
    reference: pd.DataFrame, current: pd.DataFrame, numerical: Sequence[str], categorical: Sequence[str], p: DriftParams
) -> tuple[dict[str, float], dict[str, bool], Any]:
    """Evidently's drift scores per column (the distance ``p.num_stattest`` for numbers; Jensen-Shannon
    for categories), its decision at their default thresholds, and its run."""
    run, _, columns = _column_drift(
        reference, current, numerical, categorical, 0.5, None, None, p.num_stattest, "jensenshannon"
    )
    return (
        {name: columns[name]["score"] for name in columns},
        {name: columns[name]["drifted"] for name in columns},
        run,
    )


def interaction_scores(
    periods: list[pd.DataFrame], current: pd.DataFrame, basis: BehaviourBasis, p: DriftParams, name: str, lag: int = 0
) -> Scored:
    """The behaviour tables (bertrec.mlops.drift.behaviour) of the last period against ``current``,
    with the null of the periods before (or split halves of the last period's users).

    ``lag``: whole windows between the last period and ``current``; the null pairs periods as far apart.
    """
    numerical = [c for c in USER_NUMERICAL if c != "rating" or "rating" in current] + basis.genre_columns

    def measure(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[dict[str, float], dict[str, bool], dict[str, Any]]:
        users = distances(user_table(ref, basis), user_table(cur, basis), numerical, [], p)
        items = distances(item_table(ref), item_table(cur), ITEM_NUMERICAL, [], p)
        scores = {f"users.{k}": v for k, v in users[0].items()} | {f"items.{k}": v for k, v in items[0].items()}
        flags = {f"users.{k}": v for k, v in users[1].items()} | {f"items.{k}": v for k, v in items[1].items()}
        return scores, flags, {name: users[2], f"{name}_items": items[2]}

    reference = periods[-1]
    observed, flags, runs = measure(reference, current)
    pairs = lagged_pairs(periods, lag)[-p.calibration_periods :]
    method = PERIODS
    if len(pairs) < p.min_null:
        method = SPLIT_HALF
        users = reference["user_idx"].to_numpy()
        ids = np.unique(users)
        pairs = []
        for mask in halves(len(ids), p.resamples, p.seed):
            first = np.isin(users, ids[mask])
            pairs.append((reference[first], reference[~first]))
    null: dict[str, list[float]] = {k: [] for k in observed}
    for ref, cur in pairs:
        for key, value in measure(ref, cur)[0].items():
            null[key].append(value)
    shares = {
        side: {g: float(table[f"genre:{g}"].mean()) for g in basis.genres}
        for side, table in (("reference", user_table(reference, basis)), ("current", user_table(current, basis)))
    }
    details = {
        "rows": {"reference": len(reference), "current": len(current)},
        "users": {"reference": int(reference["user_idx"].nunique()), "current": int(current["user_idx"].nunique())},
        "null_pairs": len(pairs),
        "genre_share": shares,  # mean over users of their share of each genre
    }
    return Scored(name, observed, null, method, flags, details, runs)


def prediction_scores(
    recommend: Callable[[float, np.ndarray], pd.DataFrame],
    boundaries: Sequence[float],
    current_end: float,
    users: np.ndarray,
    has_history: Callable[[float], np.ndarray],
    p: DriftParams,
    name: str,
    lag: int = 0,
) -> Scored:
    """What the champion recommends to a fixed user sample as of the reference end against as of the
    current end; null: as of each period boundary against the one before (or split halves of the sample).

    Args:
        recommend: (time, users) -> prediction features (bertrec.mlops.drift.checks.prediction_features)
            of those users' recommendations from their histories as of that time.
        boundaries: the period boundaries, oldest first; the last is the reference end.
        has_history: time -> bool mask over ``users`` of those with a history by then.
    """
    columns = ["rec_popularity", "top_score"]
    reference_end = boundaries[-1]
    then = recommend(reference_end, users)
    observed, flags, run = distances(then, recommend(current_end, users), columns, [], p)
    pairs = lagged_pairs(list(boundaries), lag)[-p.calibration_periods :]
    null: dict[str, list[float]] = {k: [] for k in observed}
    method = PERIODS
    if len(pairs) >= p.min_null:
        for start, stop in pairs:
            known = users[has_history(start)]
            if len(known) < 2:
                continue
            for key, value in distances(recommend(start, known), recommend(stop, known), columns, [], p)[0].items():
                null[key].append(value)
    if min(len(v) for v in null.values()) < p.min_null:
        method, null = SPLIT_HALF, {k: [] for k in observed}
        for mask in halves(len(users), p.resamples, p.seed):
            first, second = recommend(reference_end, users[mask]), recommend(reference_end, users[~mask])
            for key, value in distances(first, second, columns, [], p)[0].items():
                null[key].append(value)
    details = {"users": len(users), "null_pairs": min(len(v) for v in null.values())}
    return Scored(name, observed, null, method, flags, details, {name: run})


def embedding_scores(
    observed: tuple[float, bool, Any],
    score: Callable[[np.ndarray, np.ndarray], float],
    periods: list[tuple[np.ndarray, np.ndarray]],
    seen: np.ndarray,
    new: np.ndarray,
    p: DriftParams,
    name: str,
) -> Scored:
    """The new items' text vectors against the catalogue's; null: each reference period's newly arrived
    items against those seen before it (periods with at least ``drift.min_new_items`` new items), or
    random splits of the catalogue into old and as many pseudo-new items.

    Args:
        observed: Evidently's EmbeddingsDrift score of ``seen`` against ``new``, its own decision, its run.
        score: (catalogue rows, new rows) -> the same score (Evidently's drift method, without a report).
        periods: (seen rows, new rows) of each reference period, oldest first.
    """
    observed, flag, run = observed
    null = [score(old, fresh) for old, fresh in periods[-p.calibration_periods :] if len(fresh) >= p.min_new_items]
    method = PERIODS
    if len(null) < p.min_null:
        method, null = SPLIT_HALF, []
        rng = np.random.default_rng(p.seed)
        for _ in range(p.resamples):
            pseudo = rng.permutation(len(seen))
            size = min(len(new), len(seen) // 2)
            null.append(score(seen[pseudo[size:]], seen[pseudo[:size]]))
    details = {"items": {"catalogue": len(seen), "new": len(new)}, "null_pairs": len(null)}
    details["method"] = p.embedding_method
    return Scored(name, {"score": observed}, {"score": null}, method, {"score": flag}, details, {name: run})
