"""Drift monitoring of the champion: its data against what arrived since, checked and calibrated.

The windows (:func:`windows_of`):

- **current**: the newest ``drift.window_days`` of interactions up to the newest prepared row
  (``data.window``), or everything newer than the champion's data (its version tag ``data.end``,
  the newest interaction it was trained on) when that is shorter;
- **reference**: the champion's own last stretch of the same length (activity and popularity are
  counted per window, so the two windows must be equally long); ``lag`` whole windows may lie
  between the two when the champion has served for longer than a window.

The checks (bertrec.mlops.drift.calibrate: each statistic against its null from the champion's own
periods, Holm over every column), all with the champion as registered in MLflow:

- ``interactions``: behaviour tables of the two windows (bertrec.mlops.drift.behaviour);
- ``embeddings``: the text vectors (the champion's item tower, text part) of the items that first
  appeared since the champion's data against those of the items the champion had seen;
- ``predictions``: the champion's recommendations for a fixed sample of users, from their histories
  as of the reference end and as of the current end (popularity of what is recommended, top score).

Beside them: ``decay`` (bertrec.mlops.drift.decay: the champion on returning users' next items),
``legacy`` (the uncalibrated per-row interaction check, for comparison) and ``quality`` (the
champion's top-10 from the reference histories scored against what the sampled users did next, by
our metrics and by Evidently's; NDCG and Hit must agree within ``drift.recsys_tolerance``).

The `drift` step (:mod:`bertrec.steps.drift`) writes ``outputs/drift/`` (an HTML report per check and
``verdict.json``) and ``metrics/drift.json``, and logs both to an MLflow run (:func:`log_verdict`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bertrec.config import Params
from bertrec.data.dataset import Dataset
from bertrec.errors import DriftError
from bertrec.mlops.drift.behaviour import BehaviourBasis
from bertrec.mlops.drift.calibrate import (
    decide,
    embedding_scores,
    interaction_scores,
    periods_before,
    prediction_scores,
)
from bertrec.mlops.drift.checks import (
    EMBEDDINGS,
    INTERACTIONS,
    PREDICTIONS,
    DriftCheck,
    Verdict,
    check_embeddings,
    check_interactions,
    draw_user_sample,
    embedding_method,
    prediction_features,
)
from bertrec.mlops.drift.decay import DecayVerdict, decay_verdict, next_items, per_user_quality
from bertrec.mlops.drift.policy import CHECKED, NO_CHAMPION, TOO_FEW_ROWS  # noqa: F401 (re-exported)
from bertrec.ranking.scoring import Histories, mask_out, top_k

log = logging.getLogger(__name__)

DRIFT_DIR = "drift"  # under paths.outputs
DRIFT_METRICS = "drift.json"  # under paths.metrics
RUN_FILE = "run.json"  # in the drift folder: the MLflow run the reports were logged to
QUALITY = "quality"
DECAY, LEGACY, RETRAIN = "decay", "legacy", "retrain"  # verdict.json sections: quality signal, old rule, decision
K = 10


@dataclass(frozen=True)
class DriftWindows:
    """Rows of the prepared log by time: ``before`` (the champion's data, up to the reference end),
    ``reference`` (its last stretch as long as the current window), ``history`` (every row before the
    current window: the champion's data and what came between) and ``current`` (the newest rows)."""

    before: pd.DataFrame
    reference: pd.DataFrame
    history: pd.DataFrame
    current: pd.DataFrame
    reference_start: float
    reference_end: float
    current_start: float
    current_end: float

    @property
    def span(self) -> float:
        """The length of the current window (and of the reference, and of each calibration period)."""
        return self.current_end - self.current_start

    @property
    def lag(self) -> int:
        """Whole windows between the reference's end and the current window's start (0: adjacent)."""
        return int(round((self.current_start - self.reference_end) / self.span)) if self.span > 0 else 0

    def describe(self) -> dict[str, Any]:
        return {
            "reference": {
                "start": iso(self.reference_start),
                "end": iso(self.reference_end),
                "rows": len(self.reference),
            },
            "current": {"start": iso(self.current_start), "end": iso(self.current_end), "rows": len(self.current)},
            "lag_windows": self.lag,
        }


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def windows_of(interactions: pd.DataFrame, reference_end: float, window_days: float | None = None) -> DriftWindows:
    """Split the log at ``reference_end``: see :class:`DriftWindows`. ``interactions`` need ``timestamp``.

    The current window is the last ``window_days`` up to the newest row, or everything since
    ``reference_end`` when that is shorter or ``window_days`` is None.
    """
    stamps = interactions["timestamp"].to_numpy(np.float64)
    current_end = float(stamps.max()) if len(stamps) else reference_end
    current_start = reference_end
    if window_days is not None:
        current_start = max(reference_end, current_end - window_days * 86_400.0)
    span = max(current_end - current_start, 0.0)
    before = stamps <= reference_end
    start = reference_end - span
    return DriftWindows(
        before=interactions[before],
        reference=interactions[before & (stamps > start)],
        history=interactions[stamps <= current_start],
        current=interactions[stamps > current_start],
        reference_start=start,
        reference_end=reference_end,
        current_start=current_start,
        current_end=current_end,
    )


def with_seq(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows (in the prepared order: by user, then time) with ``seq``, each row's position in its user's history."""
    return rows.assign(seq=rows.groupby("user_idx", sort=False).cumcount().to_numpy(np.int64))


def recommend_for(scorer, histories: Histories, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows (history excluded) and each user's first score."""
    scores = scorer.score(histories)
    mask_out(scores, histories)
    topk = top_k(scores, k)
    first = np.where(topk[:, 0] >= 0, scores[np.arange(len(topk)), np.maximum(topk[:, 0], 0)], np.nan)
    return topk, first.astype(np.float64)


@dataclass(frozen=True)
class Checked:
    """What :func:`run_checks` found: the calibrated verdict, the quality sections and Evidently's runs."""

    verdict: Verdict
    quality: dict[str, Any]  # the sampled users' current-window items: ours against Evidently's metrics
    decay: DecayVerdict
    legacy: dict[str, Any]  # the uncalibrated interaction check (per-row features, Evidently's thresholds)
    reports: dict[str, Any]  # extra Evidently runs, by name (for their HTML)


def run_checks(recommender, data: Dataset, windows: DriftWindows, p: Params, expected: dict[str, float]) -> Checked:
    """The calibrated drift checks (bertrec.mlops.drift.calibrate), the quality signal against ``expected``
    (the champion's registered NDCG@10 and Hit@10), and the quality comparison with Evidently."""
    from bertrec.serve.recommender import CatalogueScorer

    dp = p.drift
    span, lag = max(windows.span, 1.0), windows.lag
    periods = periods_before(windows.before, windows.reference_end, span, dp.calibration_periods + lag + 1)
    basis = BehaviourBasis.of(data.items, windows.before["item_idx"].to_numpy(), data.n_items)
    scored = [interaction_scores(periods, windows.current, basis, dp, INTERACTIONS, lag)] if periods else []
    skipped = [] if periods else [DriftCheck.skipped(INTERACTIONS, dp.false_alarm_rate, "no reference rows")]

    scorer = CatalogueScorer(recommender, data.items)
    popularity = np.bincount(windows.before["item_idx"].to_numpy(), minlength=data.n_items).astype(np.float64)
    ordered = with_seq(data.interactions)
    stamps = ordered["timestamp"].to_numpy(np.float64)

    def recommend(time: float, users: np.ndarray) -> pd.DataFrame:
        histories = Histories.from_frame(ordered[stamps <= time], users)
        return prediction_features(*recommend_for(scorer, histories), popularity)

    before = with_seq(windows.before)
    users = draw_user_sample(before["user_idx"].to_numpy(), dp)
    first_seen = before.groupby("user_idx")["timestamp"].min().reindex(users).to_numpy(np.float64)
    boundaries = [windows.reference_end - j * span for j in range(len(periods), -1, -1)]
    scored.append(
        prediction_scores(
            recommend, boundaries, windows.current_end, users, lambda t: first_seen <= t, dp, PREDICTIONS, lag
        )
    )
    embedding = _embedding_scores(recommender, data, windows, span, p)
    if isinstance(embedding, DriftCheck):
        skipped.append(embedding)
    else:
        scored.append(embedding)
    decided = decide(scored, dp.false_alarm_rate)
    checks = [
        DriftCheck(d.scored.name, d.drift, d.score, dp.false_alarm_rate, d.details(), d.scored.runs[d.scored.name])
        for d in decided
    ]
    reports = {k: v for d in decided for k, v in d.scored.runs.items() if k != d.scored.name}
    topk_then, _ = recommend_for(scorer, Histories.from_frame(before, users))
    quality, report = _quality(topk_then, users, windows, before, data.n_items, dp.recsys_tolerance)
    if report is not None:
        reports[QUALITY] = report
    legacy = check_interactions(windows.reference, windows.current, data.items, dp)
    return Checked(
        Verdict.of([*checks, *skipped]),
        quality,
        _decay(scorer, windows, data.n_items, expected, dp),
        {"drift": legacy.drift, "share_drifted": legacy.score, "drift_share": legacy.threshold},
        reports,
    )


def _decay(scorer, windows: DriftWindows, n_items: int, expected, dp) -> DecayVerdict:
    """The champion on each returning user's next item (bertrec.mlops.drift.decay): users of its data who
    came back in the current window, ranked from everything they did before it."""
    targets = next_items(windows.before, windows.current)
    users = targets["user_idx"].to_numpy()
    if not len(users):
        return decay_verdict({}, expected, dp)
    topk, _ = recommend_for(scorer, Histories.from_frame(with_seq(windows.history), users))
    return decay_verdict(per_user_quality(topk, targets["item_idx"].to_numpy(), n_items), expected, dp)


def _embedding_scores(recommender, data: Dataset, windows: DriftWindows, span: float, p: Params):
    """The embedding check's statistics, or a skipped check (no text tower, too few new items)."""
    from bertrec.model.embed import encode_items

    dp = p.drift
    threshold = dp.false_alarm_rate
    first = data.interactions.groupby("item_idx")["timestamp"].min()
    seen = first.index[first.to_numpy() <= windows.reference_end].to_numpy()
    new = first.index[first.to_numpy() > windows.reference_end].to_numpy()
    scorer = recommender.scorer
    if not scorer.model.items.use_text:
        return DriftCheck.skipped(
            EMBEDDINGS, threshold, "the champion's item tower has no text part (model.item_repr: id)"
        )
    if len(new) < dp.min_new_items or len(seen) < 2:
        return DriftCheck.skipped(
            EMBEDDINGS, threshold, f"{len(new)} new items; the check needs drift.min_new_items={dp.min_new_items}"
        )
    rows = np.r_[seen, new]
    texts = data.items["text"].to_numpy()[rows].tolist()
    # Text part only for every item (the row past the ID table has no ID embedding), so old and new
    # items are compared in the same space: the one a new item is recommended from.
    vectors = encode_items(scorer, texts, np.full(len(rows), scorer.n_items), p.model.encode_batch_size, progress=False)
    at = np.full(data.n_items, -1, dtype=np.int64)
    at[rows] = np.arange(len(rows))

    method = embedding_method(dp)

    def score(old: np.ndarray, fresh: np.ndarray) -> float:  # as check_embeddings scores, without the report
        columns = [f"dim_{i}" for i in range(vectors.shape[1])]
        frame = lambda rows: pd.DataFrame(vectors[at[rows]], columns=columns)  # noqa: E731
        return float(method(frame(fresh), frame(old))[0])

    stamps = first.to_numpy()
    periods = []
    for j in range(dp.calibration_periods, 0, -1):
        start, stop = windows.reference_end - j * span, windows.reference_end - (j - 1) * span
        fresh = first.index[(stamps > start) & (stamps <= stop)].to_numpy()
        periods.append((first.index[stamps <= start].to_numpy(), fresh))
    periods = [(old, fresh) for old, fresh in periods if len(old) >= 2]
    check = check_embeddings(vectors[at[seen]], vectors[at[new]], dp)
    return embedding_scores((check.score, check.drift, check.run), score, periods, seen, new, dp, EMBEDDINGS)


def _quality(
    topk: np.ndarray, users: np.ndarray, windows: DriftWindows, before: pd.DataFrame, n_items: int, tolerance: float
) -> tuple[dict[str, Any], Any]:
    """The champion's top-K (reference histories) against the sampled users' current-window items."""
    from bertrec.mlops.drift.recsys import SAME_DEFINITION, compare_recsys, recsys_report
    from bertrec.ranking.metrics import Reference, compute_metrics

    current = windows.current[windows.current["user_idx"].isin(users)]
    position = {u: i for i, u in enumerate(users)}
    active = np.array(sorted(position[u] for u in current["user_idx"].unique()), dtype=np.int64)
    if len(active) == 0:
        return {"users": 0, "skipped": "no sampled user interacted in the current window"}, None
    rows = np.searchsorted(active, [position[u] for u in current["user_idx"]])
    positives = sp.csr_matrix(
        (np.ones(len(current)), (rows, current["item_idx"].to_numpy())), shape=(len(active), n_items)
    )
    reference = Reference.from_train(before["item_idx"].to_numpy(), before["user_idx"].to_numpy(), n_items)
    ours = compute_metrics(topk[active], positives, reference, ks=(K,))
    theirs, report = recsys_report(topk[active], positives, before, K)
    same = [f"{name}@{K}" for name in SAME_DEFINITION]
    disagree = compare_recsys({m: ours[m] for m in same}, theirs, tolerance)
    return {
        "users": len(active),
        "k": K,
        "ours": ours,
        "evidently": theirs,
        "compared": same,
        "disagreements": disagree,
        "tolerance": tolerance,
    }, report


def champion_end(tags: dict[str, str], version: str) -> float:
    """The newest interaction time a version was trained on (its ``data.end`` tag; older versions: ``data.window``)."""
    from bertrec.mlops.registry import DATA_END_TAG

    if DATA_END_TAG in tags:
        return float(tags[DATA_END_TAG])
    window = tags.get("data.window", "all")
    if window == "all":
        raise DriftError(
            f"champion version {version} has neither a {DATA_END_TAG} tag nor a data.window; "
            "register a model again (`bertrec register`) before checking drift"
        )
    stamp = datetime.fromisoformat(window)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def summary_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """The flat figures of a verdict (``metrics/drift.json``, for `dvc metrics show` and MLflow)."""
    out: dict[str, Any] = {"drift": int(payload["drift"])}
    for name, check in payload["checks"].items():
        out[f"{name}.drift"] = int(check["drift"])
        if check["score"] is not None:
            out[f"{name}.score"] = check["score"]
    quality = payload.get(QUALITY, {})
    for metric in ("NDCG", "Hit"):
        if f"{metric}@{K}" in quality.get("ours", {}):
            out[f"quality.{metric}@{K}"] = quality["ours"][f"{metric}@{K}"]
            out[f"quality.evidently.{metric}@{K}"] = quality["evidently"][f"{metric}@{K}"]
    decay = payload.get(DECAY, {})
    if decay.get("metrics"):  # measured (checked, or a baseline check): what later checks expect
        out["decay"] = int(decay["decay"])
        out["decay.users"] = decay["users"]
        for metric, values in decay["metrics"].items():
            out[f"decay.{metric}"] = values["observed"]
            if "expected" in values:
                out[f"decay.{metric}.expected"] = values["expected"]
    if RETRAIN in payload:
        out["retrain"] = int(payload[RETRAIN]["retrain"])
    if LEGACY in payload:
        out["legacy.drift"] = int(payload[LEGACY]["drift"])
    if "windows" in payload:
        out["current.rows"] = payload["windows"]["current"]["rows"]
    return out


def log_verdict(
    p: Params, folder: Path, payload: dict[str, Any], run_tags: dict[str, str] | None = None
) -> tuple[str, str | None]:
    """One MLflow run (tag ``bertrec.kind=drift``, plus ``run_tags``): the verdict's figures and its reports."""
    import mlflow

    from bertrec.mlops.tracking import connect, log_batch, mlflow_name

    client = connect(p)
    experiment = client.get_experiment_by_name(p.mlflow.experiment)
    tags = {
        "bertrec.kind": "drift",
        "drift": str(payload["drift"]).lower(),
        "drift.status": payload["status"],
        "data.window": payload["data_window"],
        **(run_tags or {}),
    }
    if "champion" in payload:
        tags["champion.version"] = payload["champion"]["version"]
    with mlflow.start_run(run_name=f"drift {payload['data_window']}", tags=tags) as run:
        figures = {mlflow_name(k): float(v) for k, v in summary_metrics(payload).items()}
        log_batch(client, run.info.run_id, metrics=figures)  # drops non-finite values
        mlflow.log_artifacts(str(folder), artifact_path=DRIFT_DIR)
    url = None
    if p.mlflow.tracking_uri.startswith("http"):
        base = p.mlflow.tracking_uri.rstrip("/")
        url = f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/artifacts"
    return run.info.run_id, url
