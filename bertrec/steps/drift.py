"""The `drift` stage: the newest data against the champion's, checked (:mod:`bertrec.mlops.drift.monitor`) and logged.

Reference: the last stretch of the data the champion was trained on; current: every interaction
since, up to ``data.window``. Writes ``outputs/drift/`` (an Evidently HTML report per check,
``verdict.json``) and ``metrics/drift.json``, and logs them to an MLflow run. Thresholds: the
``drift`` section of params.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from bertrec.config import Params
from bertrec.data.dataset import load_dataset
from bertrec.errors import RegistryError
from bertrec.io import write_json
from bertrec.mlops.drift.checks import Verdict, write_verdict
from bertrec.mlops.drift.monitor import (
    CHECKED,
    DECAY,
    DRIFT_DIR,
    DRIFT_METRICS,
    LEGACY,
    NO_CHAMPION,
    QUALITY,
    RETRAIN,
    RUN_FILE,
    TOO_FEW_ROWS,
    champion_end,
    iso,
    log_verdict,
    run_checks,
    summary_metrics,
    windows_of,
)
from bertrec.mlops.drift.policy import RetrainDecision, decide_retrain
from bertrec.mlops.registry import champion_of
from bertrec.mlops.tracking import connect
from bertrec.render import verdict_table


@dataclass(frozen=True)
class Outcome:
    """What the check found: ``status`` (checked, no-champion, too-few-rows) and the verdict."""

    status: str
    drift: bool
    verdict_path: Path
    payload: dict[str, Any]  # verdict.json's content
    run_id: str | None = None
    run_url: str | None = None

    def summary(self) -> str:
        return f"{verdict_table(self.payload)}-> {self.verdict_path} (MLflow run {self.run_id})"


def run(p: Params, run_tags: dict[str, str] | None = None) -> Outcome:
    """Run the checks against the registry's champion, write the verdict and log it to MLflow (with ``run_tags``).

    Raises RegistryError, before anything is written, when MLflow cannot be read: an outage is not
    "no champion", which would read as "no drift".
    """
    name = p.mlflow.registered_model
    try:
        client = connect(p)
    except MlflowException as exc:
        raise RegistryError(f"cannot read the champion of {name} at {p.mlflow.tracking_uri}: {exc}") from None
    champion = champion_of(client, name, p.mlflow.tracking_uri)
    data = load_dataset(p.paths.prepared)
    context: dict[str, Any] = {"status": CHECKED, "data_window": p.data.window.isoformat() if p.data.window else "all"}
    folder = p.paths.outputs / DRIFT_DIR
    if champion is None:
        return _write(
            p,
            Verdict.of([]),
            folder,
            context | {"status": NO_CHAMPION, "reason": f"{name} has no champion"},
            run_tags=run_tags,
        )
    end = champion_end(dict(champion.tags), str(champion.version))
    windows = windows_of(data.interactions, end, p.drift.window_days)
    context |= {"champion": {"version": str(champion.version), "data_end": iso(end)}, "windows": windows.describe()}
    if len(windows.current) < p.drift.min_rows:
        reason = (
            f"{len(windows.current)} interactions since the champion's data; "
            f"the checks need drift.min_rows={p.drift.min_rows}"
        )
        return _write(
            p, Verdict.of([]), folder, context | {"status": TOO_FEW_ROWS, "reason": reason}, run_tags=run_tags
        )
    from bertrec.mlops.gate import load_version  # torch and the model: only when there is something to check

    experiment = client.get_experiment_by_name(p.mlflow.experiment)
    expected = expected_level(client, p, experiment.experiment_id, str(champion.version)) if experiment else {}
    with tempfile.TemporaryDirectory() as tmp:
        recommender = load_version(client, name, str(champion.version), Path(tmp), p)
        checked = run_checks(recommender, data, windows, p, expected)
    decay = checked.decay
    context |= {QUALITY: checked.quality, DECAY: decay.to_dict(), LEGACY: checked.legacy}
    decision = decide_retrain(CHECKED, checked.verdict.drift, decay.decay, p.retrain.policy)
    return _write(p, checked.verdict, folder, context, checked.reports, run_tags, decision)


def expected_level(client, p: Params, experiment_id: str, version: str) -> dict[str, float]:
    """The champion's expected NDCG@10 and Hit@10 on returning users' next items: the users-weighted mean
    over its first ``drift.decay_baseline_checks`` checks (earlier drift runs); empty while there are fewer."""
    from bertrec.mlops.drift.decay import METRICS
    from bertrec.mlops.tracking import mlflow_name

    runs = client.search_runs(
        [experiment_id],
        f"tags.`bertrec.kind` = 'drift' and tags.`champion.version` = '{version}'",
        order_by=["attributes.start_time ASC"],
        max_results=500,
    )
    measured = [r.data.metrics for r in runs if mlflow_name(f"decay.{METRICS[0]}") in r.data.metrics]
    baseline = measured[: p.drift.decay_baseline_checks]
    if len(baseline) < p.drift.decay_baseline_checks:
        return {}
    weights = [m["decay.users"] for m in baseline]
    total = sum(weights)
    pairs = list(zip(weights, baseline, strict=True))
    return {metric: sum(w * m[mlflow_name(f"decay.{metric}")] for w, m in pairs) / total for metric in METRICS}


def _write(
    p: Params,
    verdict: Verdict,
    folder: Path,
    context: dict[str, Any],
    reports: dict | None = None,
    run_tags: dict[str, str] | None = None,
    decision: RetrainDecision | None = None,
) -> Outcome:
    if decision is None:  # nothing was checked
        decision = decide_retrain(context["status"], False, False, p.retrain.policy)
    context = context | {RETRAIN: decision.to_dict()}
    path = write_verdict(verdict, folder, context, reports)
    payload = json.loads(path.read_text())
    write_json(p.paths.metrics / DRIFT_METRICS, summary_metrics(payload))
    run_id, url = log_verdict(p, folder, payload, run_tags)
    write_json(folder / RUN_FILE, {"run_id": run_id, "url": url})
    return Outcome(payload["status"], payload["drift"], path, payload, run_id, url)
