"""The training pipeline as Prefect flows: the DVC stages in order, then a summary of the decision.

``training_pipeline`` runs every stage of dvc.yaml as a task. With ``gpu_deployment`` set, the
``train`` stage runs instead as a run of that deployment (the ``train_stage`` flow on the ``gpu``
work pool): the two workers share nothing but the DVC remote, and exchange dvc.lock and
params.yaml as flow parameters and results. Parameters from the Prefect UI are typed overrides of
params.yaml; they are written into params.yaml (comments kept) before the stages run, so DVC
and MLflow record them like any other change.

Run locally: ``python -m flows.training`` (or ``make run``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.deployments import run_deployment

from bertrec.config import DEFAULT_PARAMS, load_params
from bertrec.ranking.results import REGISTER_FILE
from bertrec.render import registration_summary
from flows.common import enter_project, run_tags
from flows.overrides import ParamsOverrides
from tasks.stages import (
    LOCK_FILE,
    TRAINING_FORCED,
    StageRun,
    is_current,
    outputs_of,
    pull,
    push,
    stage_task,
    stages,
    upstream_outputs,
)

TRAIN_STAGE = "train"
LOCK_ARTIFACT = "train-stage-dvc-lock"


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    overrides: ParamsOverrides | None = None, gpu_deployment: str | None = None, project_dir: str = "."
) -> dict:
    """Every DVC stage in order (train on the GPU pool when ``gpu_deployment`` names one), then register and gate.

    Args:
        overrides: values that replace those of params.yaml for this run (and stay in it, as with
            `dvc exp run -S`); empty fields keep params.yaml's values.
        gpu_deployment: e.g. ``train-stage/gpu``: run the train stage there; none runs it in-process.
        project_dir: the project checkout the stages run in.
    """
    logger = get_run_logger()
    project, sets = enter_project(project_dir, overrides)
    env = {"BERTREC_RUN_TAGS": json.dumps(run_tags(sets)), "BERTREC_RUN_NAME": str(runtime.flow_run.name)}
    runs = []
    for stage in stages(project):
        if stage == TRAIN_STAGE and gpu_deployment:
            runs.append(_train_elsewhere(project, gpu_deployment))
            continue
        runs.append(stage_task(stage)(project, stage, env, force=stage in TRAINING_FORCED))
    p = load_params(project / DEFAULT_PARAMS)
    result = json.loads((project / p.paths.metrics / REGISTER_FILE).read_text())
    ran = [r.stage for r in runs if r.ran]
    create_markdown_artifact(
        registration_summary(result, ran, sets),
        key="training-summary",
        description="Metrics against champion and baselines, and the promotion decision",
    )
    if result.get("run_url"):
        create_link_artifact(result["run_url"], link_text=f"MLflow run {result['run_id']}", key="mlflow-run")
    logger.info("decision: %s", result.get("reason") or "nothing new registered")
    return result


def _train_elsewhere(project: Path, deployment: str) -> StageRun:
    """Push the train stage's inputs, run the train deployment, adopt its dvc.lock, pull its outputs."""
    logger = get_run_logger()
    if is_current(project, TRAIN_STAGE):
        logger.info("train stage is up to date; %s not started", deployment)
        return StageRun(TRAIN_STAGE, False, 0.0)
    push(project, upstream_outputs(project, TRAIN_STAGE))
    began = time.monotonic()
    run = run_deployment(
        deployment,
        parameters={
            "params_yaml": (project / DEFAULT_PARAMS).read_text(),
            "dvc_lock": (project / LOCK_FILE).read_text(),
        },
        timeout=None,
    )
    if not run.state.is_completed():
        raise RuntimeError(f"train deployment {deployment} ended {run.state.name}: {run.state.message}")
    (project / LOCK_FILE).write_text(read_lock_artifact(run.id))
    pull(project, outputs_of(project, TRAIN_STAGE))
    logger.info("train stage ran as flow run %s of %s", run.name, deployment)
    return StageRun(TRAIN_STAGE, True, time.monotonic() - began)


def read_lock_artifact(flow_run_id) -> str:
    """The dvc.lock that a train-stage run published (workers share no files, only the Prefect API and DVC remote)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[LOCK_ARTIFACT])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    if not found:
        raise RuntimeError(f"train-stage flow run {flow_run_id} published no {LOCK_ARTIFACT} artifact")
    text = found[0].data
    return text.split("```yaml\n", 1)[1].rsplit("```", 1)[0]


@flow(name="train-stage", log_prints=True)
def train_stage(params_yaml: str, dvc_lock: str, project_dir: str = ".") -> str:
    """The train stage on its own worker: pull inputs by their dvc.lock hashes, train, push; returns dvc.lock."""
    project = Path(project_dir).resolve()
    os.chdir(project)
    (project / DEFAULT_PARAMS).write_text(params_yaml)
    (project / LOCK_FILE).write_text(dvc_lock)
    pull(project, upstream_outputs(project, TRAIN_STAGE))
    stage_task(TRAIN_STAGE)(project, TRAIN_STAGE)
    push(project, outputs_of(project, TRAIN_STAGE))
    lock = (project / LOCK_FILE).read_text()
    create_markdown_artifact(f"```yaml\n{lock}```", key=LOCK_ARTIFACT, description="dvc.lock after the train stage")
    return lock


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    training_pipeline()
