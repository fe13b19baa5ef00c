"""Deployments from prefect.yaml on a real Prefect server and workers on loopback, run through the API the UI uses.

One pipeline run covers both: a run of the training deployment triggered with a parameter
override, whose train stage runs as a separate deployment on the `gpu` pool, served by a worker
with its own checkout that exchanges data with the pipeline only through the DVC remote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from builders import dvc, dvc_project
from servers import Job, background_jobs

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
MODEL = "prefect-e2e"


def prefect(root: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, built_project, tiny_encoder, mlflow_uri, prefect_api):
    """Deployments, two workers with their own checkouts; one run triggered through the API.

    The pipeline's checkout is a copy of the session's built project (every stage up to date), so
    the run's override of train.lr reruns train and what follows it; the gpu worker's checkout is
    bare (code, no data) and shares only the DVC remote with it.
    """
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from conftest import copy_project

    base = tmp_path_factory.mktemp("prefect")
    project = copy_project(built_project, base / "project", f"mlflow.registered_model={MODEL}")
    remote = project / ".cache" / "dvc-remote"
    gpu_checkout = dvc_project(base / "gpu-worker", tiny_encoder, mlflow_uri, remote=remote)
    lock_before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    env = prefect_api.env
    workers = [
        Job(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool],
            base / f"worker-{pool}.log",
            checkout,
            env | {"BERTREC_PROJECT_DIR": str(checkout)},
        )
        for pool, checkout in (("cpu", project), ("gpu", gpu_checkout))
    ]
    with background_jobs(workers):
        with temporary_settings({PREFECT_API_URL: prefect_api.api, PREFECT_HOME: prefect_api.home}):
            run = run_deployment(
                "training-pipeline/weekly",
                timeout=900,
                parameters={
                    "overrides": {"train": {"lr": 0.004}},
                    "gpu_deployment": "train-stage/gpu",
                },
            )
            yield run, prefect_api, project, gpu_checkout, base, lock_before


def _read(server, reader):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    async def go():
        async with get_client() as client:
            return await reader(client)

    with temporary_settings({PREFECT_API_URL: server.api, PREFECT_HOME: server.home}):
        return asyncio.run(go())


def test_triggered_run_completes_and_records_its_override_in_mlflow(pipeline_run, mlflow_uri):
    run, server, project, _, base, _ = pipeline_run
    logs = (base / "worker-cpu.log").read_text()[-3000:]
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{logs}"
    # The override reached params.yaml, dvc.lock and the MLflow run, with the flow run's identity
    record = json.loads((project / "metrics" / "register.json").read_text())
    mlflow_run = MlflowClient(mlflow_uri).get_run(record["run_id"])
    assert mlflow_run.data.params["train.lr"] == "0.004"
    assert mlflow_run.data.tags["prefect.flow_run_id"] == str(run.id)
    assert mlflow_run.data.tags["prefect.overrides"] == "train.lr=0.004"
    assert "lr: 0.004" in (project / "params.yaml").read_text()
    # The artifacts: a summary with the decision and a link to the MLflow run
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    artifacts = _read(
        server, lambda c: c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    )
    by_key = {a.key: a for a in artifacts}
    assert {"training-summary", "mlflow-run"} <= set(by_key)
    summary = by_key["training-summary"].data
    assert f"{MODEL} version {record['version']}" in summary and record["reason"] in summary
    assert "loo/test/NDCG@10" in summary and record["run_id"] in by_key["mlflow-run"].data
    # Only what the override touches ran: train (on the gpu pool) and what follows it
    ran = next(line for line in summary.splitlines() if line.startswith("Stages run: "))
    # (and drift, whose params name the registered model: the copy's differs from the built project's)
    stages = ran.removeprefix("Stages run: ").split(", ")
    assert stages[-6:] == ["train", "embed", "index", "evaluate", "drift", "register"]
    assert not {"prepare", "split", "baselines"} & set(stages)
    # and after the flow DVC has nothing left to do (fetch was forced, not always_changed)
    assert "Data and pipelines are up to date" in dvc(project, "status")


def test_train_stage_ran_on_the_gpu_pool_through_the_dvc_remote(pipeline_run):
    run, server, project, gpu_checkout, base, lock_before = pipeline_run
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId

    # The pipeline's flow run started exactly one run of the gpu deployment, which a gpu worker ran
    tasks = _read(server, lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]})))
    runs = _read(
        server,
        lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks]))
        ),
    )
    assert len(runs) == 1 and runs[0].state.is_completed() and runs[0].work_pool_name == "gpu"
    # The model was trained in the gpu worker's checkout and reached the pipeline's through the remote
    trained = gpu_checkout / "outputs" / "bundle" / "model" / "weights.safetensors"
    pulled = project / "outputs" / "bundle" / "model" / "weights.safetensors"
    assert trained.read_bytes() == pulled.read_bytes()
    assert not (gpu_checkout / "outputs" / "bundle" / "embeddings").exists()  # only the train stage ran there
    assert (project / "outputs" / "bundle" / "index").exists()  # the later stages ran in the pipeline's checkout
    # and the pipeline adopted the train stage's entry of dvc.lock as the gpu worker wrote it, while
    # the stages after train are the pipeline's own: the worker's lock still has the ones it was sent
    parent, child = (yaml.safe_load((d / "dvc.lock").read_text())["stages"] for d in (project, gpu_checkout))
    assert parent["train"] == child["train"] != lock_before["train"]
    assert child["register"] == lock_before["register"] != parent["register"]
