"""The drift-monitor deployment on a real `prefect server`: it starts the training deployment when the policy says so.

A tiny project is trained on one week of a log (the champion); then the deployment of prefect.yaml,
run by a real process worker, checks the next week: once drawn from the same distribution (no
drift, no training run), once with every new interaction on one genre (drift in the interactions
check, and with retrain.policy drift a scheduled run of training-pipeline/weekly).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from builders import LENGTH, N_USERS, T0, WEEK, iso

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
MODEL = "drift-monitor-test"


def prefect(root: Path, env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def flow_runs(env: dict[str, str], deployment: str, since: set | None = None) -> list:
    """Flow runs of ``deployment`` (its name, e.g. "weekly") but those its schedule made and those in ``since``."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
            )
            # the server's scheduler adds future runs; other tests of the session's server add their own
            return [run for run in runs if not run.auto_scheduled and run.id not in (since or set())]

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(read())


def delete_runs(env: dict[str, str], runs: list) -> None:
    """Delete flow runs, so that no run this test started is left for another test's worker on the shared server."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def delete() -> None:
        async with get_client() as client:
            for run in runs:
                await client.delete_flow_run(run.id)

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        asyncio.run(delete())


def monitor(root: Path, env: dict[str, str], log: str) -> dict:
    """Run drift-monitor/daily on the second week of ``log`` through a real worker; returns verdict.json."""
    overrides = {"data": {"path": f"incoming/{log}", "window": iso(T0 + 2 * WEEK)}}
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        run_deployment("drift-monitor/daily", parameters={"overrides": overrides}, timeout=0)  # as the UI does
    prefect(root, env, "worker", "start", "--pool", "cpu", "--run-once")
    return json.loads((root / "outputs" / "drift" / "verdict.json").read_text())


def test_monitor_deployment_starts_training_on_drift_only(built_project, project_copy, prefect_api, mlflow_uri):
    # Given a champion trained on the first week: the built project's model, registered under this test's name
    # (retrain.policy drift: the new users of the second week give the quality signal no returning user)
    root = project_copy(
        f"mlflow.registered_model={MODEL}", "mlflow.experiment=drift-monitor-test", "retrain.policy=drift"
    )
    client = MlflowClient(mlflow_uri, mlflow_uri)
    built = json.loads((built_project.root / "metrics" / "register.json").read_text())
    source = client.get_model_version(built["model"], built["version"])
    copied = client.copy_model_version(f"models:/{built['model']}/{built['version']}", MODEL)
    for key, value in source.tags.items():
        client.set_model_version_tag(MODEL, copied.version, key, value)
    client.set_registered_model_alias(MODEL, "champion", copied.version)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert float(champion.tags["data.end"]) <= T0 + WEEK

    env = prefect_api.env | {"BERTREC_PROJECT_DIR": str(root), "PATH": f"{BIN}:/usr/bin:/bin"}
    earlier = {r.id for name in ("daily", "weekly") for r in flow_runs(env, name)}

    try:
        # When the next week behaves like the first: no drift, and no training run
        calm = monitor(root, env, "same.csv")
        assert calm["status"] == "checked" and calm["drift"] is False, calm["checks"]
        assert calm["checks"]["interactions"]["drift"] is False
        # the champion saw one week: each statistic's null comes from split halves of that week
        assert calm["checks"]["interactions"]["details"]["null"] == "split-half"
        assert calm["retrain"]["retrain"] is False and "policy drift" in calm["retrain"]["reason"]
        assert calm["windows"]["current"]["rows"] == N_USERS * LENGTH
        assert [r.state.type.value for r in flow_runs(env, "daily", earlier)] == ["COMPLETED"]
        assert flow_runs(env, "weekly", earlier) == []

        # When every new interaction is on one genre: drift in the interactions check, and one training run
        shifted = monitor(root, env, "shifted.csv")
        assert shifted["drift"] is True
        interactions = shifted["checks"]["interactions"]
        assert interactions["drift"] is True
        assert interactions["details"]["columns"]["users.genre:horror"]["drifted"] is True
        assert interactions["details"]["genre_share"]["current"]["horror"] == 1.0
        assert shifted["retrain"]["retrain"] is True and shifted["decay"]["status"] == "too-few-users"
        assert shifted["checks"]["predictions"]["drift"] is False  # the sampled users did nothing new
        assert shifted["checks"]["embeddings"]["details"]["skipped"].startswith("0 new items")
        training = flow_runs(env, "weekly", earlier)
        assert len(training) == 1 and {"drift", "retrain.policy=drift"} <= set(training[0].tags)
        monitors = flow_runs(env, "daily", earlier)
        assert sorted(r.state.type.value for r in monitors) == ["COMPLETED", "COMPLETED"]

    finally:
        delete_runs(env, [r for name in ("daily", "weekly") for r in flow_runs(env, name, earlier)])

    # Both checks are MLflow runs with their reports, tagged with the flow run that made them
    runs = client.search_runs(
        [client.get_experiment_by_name("drift-monitor-test").experiment_id],
        "tags.`bertrec.kind` = 'drift'",
        order_by=["attributes.start_time ASC"],
    )
    assert [r.data.tags["drift"] for r in runs] == ["false", "true"]
    assert {r.data.tags["prefect.flow_run_id"] for r in runs} == {str(r.id) for r in monitors}
    reports = {a.path for a in client.list_artifacts(runs[1].info.run_id, "drift")}
    assert {"drift/interactions.html", "drift/predictions.html", "drift/verdict.json"} <= reports
    assert runs[1].data.metrics["interactions.drift"] == 1.0
