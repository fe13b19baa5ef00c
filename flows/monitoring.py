"""The drift monitor as a Prefect flow: refresh the data, check it against the champion, retrain by policy.

``drift_monitor`` runs the DVC stages ``fetch`` and ``prepare`` (the newest data, as of
``data.window``), then ``drift`` (`bertrec drift`: the calibrated checks, the quality signal, Evidently's
reports and a verdict, logged to an MLflow run); fetch and drift are forced, the champion being outside
DVC's view. It publishes the verdict as a markdown artifact and a link to the reports, and when the
retrain policy (``retrain.policy``; the decision and its reason are in the verdict) says so, it starts
a run of the training deployment (``drift.training_deployment``) without waiting for it: the training
pipeline has its own concurrency limit and gate.

Run locally: ``python -m flows.monitoring`` (the training deployment must exist on the server).
"""

from __future__ import annotations

import json
import os

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.deployments import run_deployment

from bertrec.config import DEFAULT_PARAMS, load_params
from bertrec.mlops.drift.checks import VERDICT_FILE
from bertrec.mlops.drift.monitor import DRIFT_DIR, RETRAIN, RUN_FILE
from bertrec.render import verdict_table
from flows.common import enter_project, run_tags
from flows.overrides import ParamsOverrides
from tasks.stages import MONITOR_FORCED, stage_task

DATA_STAGES = ("fetch", "prepare")
DRIFT_STAGE = "drift"


@flow(name="drift-monitor", log_prints=True)
def drift_monitor(
    overrides: ParamsOverrides | None = None, training_deployment: str | None = None, project_dir: str = "."
) -> dict:
    """Check the newest data against the champion's; on drift, start the training deployment.

    Args:
        overrides: values that replace those of params.yaml (and stay in it), e.g. ``data.window``.
        training_deployment: the deployment to start on drift (default: ``drift.training_deployment``).
        project_dir: the project checkout the stages run in.
    """
    logger = get_run_logger()
    project, sets = enter_project(project_dir, overrides)
    env = {"BERTREC_RUN_TAGS": json.dumps(run_tags(sets))}
    for stage in (*DATA_STAGES, DRIFT_STAGE):
        stage_task(stage)(project, stage, env, force=stage in MONITOR_FORCED)
    p = load_params(project / DEFAULT_PARAMS)
    folder = project / p.paths.outputs / DRIFT_DIR
    payload = json.loads((folder / VERDICT_FILE).read_text())
    mlflow_run = json.loads((folder / RUN_FILE).read_text())
    started = None
    decision = payload[RETRAIN]  # the retrain policy's decision (bertrec.mlops.drift.policy), with its reason
    if decision["retrain"]:
        deployment = training_deployment or p.drift.training_deployment
        tags = ["drift", f"retrain.policy={decision['policy']}"]
        run = run_deployment(deployment, timeout=0, tags=tags, idempotency_key=f"drift-{runtime.flow_run.id}")
        started = {"deployment": deployment, "flow_run_id": str(run.id), "flow_run_name": run.name}
        logger.info("%s: started %s as flow run %s", decision["reason"], deployment, run.name)
    else:
        logger.info("%s (%s): nothing started", decision["reason"], payload["status"])
    trigger = (
        f"\n\nstarted **{started['deployment']}**: flow run `{started['flow_run_name']}`"
        if started
        else "\n\nno training started"
    )
    create_markdown_artifact(
        verdict_table(payload) + trigger,
        key="drift-verdict",
        description="Drift checks of the newest data against the champion",
    )
    report = mlflow_run.get("url") or folder.as_uri()
    create_link_artifact(report, link_text=f"drift reports (MLflow run {mlflow_run['run_id']})", key="drift-report")
    return {
        "drift": payload["drift"],
        "decay": payload.get("decay", {}).get("decay", False),
        "retrain": decision,
        "status": payload["status"],
        "mlflow_run_id": mlflow_run["run_id"],
        "training": started,
    }


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    drift_monitor()
