"""`bertrec stack up` / `down` on loopback: servers answer, pools and deployments exist, everything stops."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bertrec.mlops.stack import live_members

from builders import dvc_project
from servers import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def bertrec(root: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "bertrec"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"bertrec {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def test_stack_up_serves_deploys_and_down_stops(tmp_path, tiny_encoder):
    root = dvc_project(tmp_path / "project", tiny_encoder, f"sqlite:///{tmp_path / 'mlflow.db'}")
    # The server's scheduler visits deployments every second here (default: 60 s, and 5 s for new ones),
    # so the scheduled runs of the weekly cron exist moments after `stack up`, however busy the machine.
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    }
    ports = ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port())]
    try:
        out = bertrec(root, env, "stack", "up", *ports)
        prefect_ui, mlflow_ui = (line.split()[2] for line in out.splitlines()[:2])
        assert answers(f"{prefect_ui}/api/health") and answers(f"{mlflow_ui}/health")
        api = prefect_ui + "/api"
        deployments, pools = read_server(api, tmp_path)
        assert {
            "training-pipeline/weekly",
            "training-pipeline/ray",
            "drift-monitor/daily",
            "train-stage/gpu",
            "promote/manual",
            "rollback/rollback",
        } <= deployments
        assert {"cpu", "gpu"} <= pools
        # the server's scheduler turns the weekly cron into scheduled flow runs (the ephemeral server never does)
        assert scheduled_runs(api, tmp_path, "weekly") >= 1
        assert "Prefect UI" in bertrec(root, env, "stack", "up", *ports)  # idempotent: finds it running
    finally:
        groups = {f.stem: int(f.read_text()) for f in (root / ".cache" / "stack").glob("*.pid")}
        stopped = bertrec(root, env, "stack", "down", "--grace", "5")
    # `down` returns once every process it started has exited, children included (SIGKILL after a grace period)
    names = {entry.split(" (")[0] for entry in stopped.strip().split(": ", 1)[1].split(", ")}
    assert {"prefect-server", "mlflow-server", "worker-cpu", "worker-gpu"} <= names == set(groups)
    assert not answers(f"{prefect_ui}/api/health") and not answers(f"{mlflow_ui}/health")
    assert all(live_members(group) == [] for group in groups.values()), groups


def read_server(api: str, tmp_path: Path) -> tuple[set[str], set[str]]:
    """The deployments (``flow/deployment``) and work pools the Prefect server at ``api`` holds."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    async def read() -> tuple[set[str], set[str]]:
        async with get_client() as client:
            deployments = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
            pools = await client.read_work_pools()
            return {f"{flows[d.flow_id]}/{d.name}" for d in deployments}, {p.name for p in pools}

    with temporary_settings({PREFECT_API_URL: api, PREFECT_HOME: tmp_path / "prefect-home"}):
        return asyncio.run(read())


def scheduled_runs(api: str, tmp_path: Path, deployment: str, timeout: float = 120.0) -> int:
    """How many SCHEDULED flow runs the server created for ``deployment``, waiting up to ``timeout``."""
    import asyncio
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    async def count() -> int:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
                flow_run_filter=FlowRunFilter(state=dict(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            )
            return len(runs)

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api, PREFECT_HOME: tmp_path / "prefect-home"}):
        while (found := asyncio.run(count())) == 0 and time.monotonic() < deadline:
            time.sleep(3)
    return found
