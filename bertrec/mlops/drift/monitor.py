"""Drift monitoring of the champion: its data against what arrived since, checked with bertrec.mlops.drift.checks.

The windows (:func:`windows_of`):

- **current**: the interactions newer than the champion's data (its version tag ``data.end``, the
  newest interaction it was trained on) up to the newest prepared row (``data.window``);
- **reference**: the champion's own last stretch of the same length (activity and popularity are
  counted per window, so the two windows must be equally long).

The checks, all with the champion as registered in MLflow:

- ``interactions``: the two windows' interaction features (bertrec.mlops.drift.checks.check_interactions);
- ``embeddings``: the text vectors (the champion's item tower, text part) of the items that first
  appeared in the current window against those of the items the champion had seen;
- ``predictions``: the champion's recommendations for a fixed sample of users, from their histories
  as of the reference end and as of the current end (popularity of what is recommended, top score).

Beside them, ``quality``: the champion's top-10 from the reference histories scored against what
the sampled users did next (the current window), by our metrics and by Evidently's; metrics defined
the same way on both sides (NDCG, Hit) must agree within ``drift.recsys_tolerance``.

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
from bertrec.mlops.drift.checks import (
    EMBEDDINGS,
    DriftCheck,
    Verdict,
    check_embeddings,
    check_interactions,
    check_predictions,
    draw_user_sample,
    embedding_method,
    prediction_features,
)
from bertrec.ranking.scoring import Histories, mask_out, top_k

log = logging.getLogger(__name__)

DRIFT_DIR = "drift"  # under paths.outputs
DRIFT_METRICS = "drift.json"  # under paths.metrics
RUN_FILE = "run.json"  # in the drift folder: the MLflow run the reports were logged to
QUALITY = "quality"
K = 10
# Statuses of a verdict: checked, or why nothing could be checked.
CHECKED, NO_CHAMPION, TOO_FEW_ROWS = "checked", "no-champion", "too-few-rows"


@dataclass(frozen=True)
class DriftWindows:
    """Rows of the prepared log by time: ``before`` (up to the reference end), ``reference`` (its last
    stretch as long as the current window) and ``current`` (after the reference end)."""

    before: pd.DataFrame
    reference: pd.DataFrame
    current: pd.DataFrame
    reference_start: float
    reference_end: float
    current_end: float

    def describe(self) -> dict[str, Any]:
        return {
            "reference": {
                "start": iso(self.reference_start),
                "end": iso(self.reference_end),
                "rows": len(self.reference),
            },
            "current": {"start": iso(self.reference_end), "end": iso(self.current_end), "rows": len(self.current)},
        }


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def windows_of(interactions: pd.DataFrame, reference_end: float) -> DriftWindows:
    """Split the log at ``reference_end``: see :class:`DriftWindows`. ``interactions`` need ``timestamp``."""
    stamps = interactions["timestamp"].to_numpy(np.float64)
    current_end = float(stamps.max()) if len(stamps) else reference_end
    span = max(current_end - reference_end, 0.0)
    before = stamps <= reference_end
    start = reference_end - span
    return DriftWindows(
        before=interactions[before],
        reference=interactions[before & (stamps > start)],
        current=interactions[~before],
        reference_start=start,
        reference_end=reference_end,
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


def run_checks(recommender, data: Dataset, windows: DriftWindows, p: Params) -> tuple[Verdict, dict[str, Any], Any]:
    """The three drift checks and the quality comparison; returns the verdict, the quality section and
    Evidently's quality report (for its HTML)."""
    from bertrec.serve.recommender import CatalogueScorer

    dp = p.drift
    checks = [check_interactions(windows.reference, windows.current, data.items, dp)]
    checks.append(_embedding_check(recommender, data, windows, p))
    scorer = CatalogueScorer(recommender, data.items)
    before = with_seq(windows.before)
    users = draw_user_sample(before["user_idx"].to_numpy(), dp)
    then, now = Histories.from_frame(before, users), Histories.from_frame(with_seq(data.interactions), users)
    popularity = np.bincount(before["item_idx"].to_numpy(), minlength=data.n_items).astype(np.float64)
    topk_then, first_then = recommend_for(scorer, then)
    topk_now, first_now = recommend_for(scorer, now)
    checks.append(
        check_predictions(
            prediction_features(topk_then, first_then, popularity),
            prediction_features(topk_now, first_now, popularity),
            dp,
        )
    )
    quality, report = _quality(topk_then, users, windows, before, data.n_items, dp.recsys_tolerance)
    return Verdict.of(checks), quality, report


def _embedding_check(recommender, data: Dataset, windows: DriftWindows, p: Params) -> DriftCheck:
    from bertrec.model.embed import encode_items

    threshold = float(embedding_method(p.drift).threshold)
    seen = np.unique(windows.before["item_idx"].to_numpy())
    new = np.setdiff1d(np.unique(windows.current["item_idx"].to_numpy()), seen)
    scorer = recommender.scorer
    if not scorer.model.items.use_text:
        return DriftCheck.skipped(
            EMBEDDINGS, threshold, "the champion's item tower has no text part (model.item_repr: id)"
        )
    if len(new) < p.drift.min_new_items or len(seen) < 2:
        return DriftCheck.skipped(
            EMBEDDINGS, threshold, f"{len(new)} new items; the check needs drift.min_new_items={p.drift.min_new_items}"
        )
    rows = np.r_[seen, new]
    texts = data.items["text"].to_numpy()[rows].tolist()
    # Text part only for every item (the row past the ID table has no ID embedding), so old and new
    # items are compared in the same space: the one a new item is recommended from.
    vectors = encode_items(scorer, texts, np.full(len(rows), scorer.n_items), p.model.encode_batch_size, progress=False)
    return check_embeddings(vectors[: len(seen)], vectors[len(seen) :], p.drift)


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
