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
    DRIFT_DIR,
    DRIFT_METRICS,
    NO_CHAMPION,
    QUALITY,
    RUN_FILE,
    TOO_FEW_ROWS,
    champion_end,
    iso,
    log_verdict,
    run_checks,
    summary_metrics,
    windows_of,
)
from bertrec.mlops.registry import CHAMPION
from bertrec.mlops.tracking import connect
from bertrec.render import verdict_table

# What MLflow answers for a registered model that does not exist, and for an alias it does not have.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


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
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND:
            raise RegistryError(f"cannot read the champion of {name} at {p.mlflow.tracking_uri}: {exc}") from None
        champion = None  # no such model, or no champion alias yet
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
    windows = windows_of(data.interactions, end)
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

    with tempfile.TemporaryDirectory() as tmp:
        recommender = load_version(client, name, str(champion.version), Path(tmp), p)
        verdict, quality, report = run_checks(recommender, data, windows, p)
    return _write(
        p, verdict, folder, context | {QUALITY: quality}, {QUALITY: report} if report is not None else {}, run_tags
    )


def _write(
    p: Params,
    verdict: Verdict,
    folder: Path,
    context: dict[str, Any],
    reports: dict | None = None,
    run_tags: dict[str, str] | None = None,
) -> Outcome:
    path = write_verdict(verdict, folder, context, reports)
    payload = json.loads(path.read_text())
    write_json(p.paths.metrics / DRIFT_METRICS, summary_metrics(payload))
    run_id, url = log_verdict(p, folder, payload, run_tags)
    write_json(folder / RUN_FILE, {"run_id": run_id, "url": url})
    return Outcome(payload["status"], payload["drift"], path, payload, run_id, url)
