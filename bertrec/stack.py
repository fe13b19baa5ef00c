"""A local stack on 127.0.0.1: a Prefect server, an MLflow server and process workers, started and stopped.

The Prefect ephemeral server runs nothing on a schedule; scheduled deployments need this stack (or
infra/compose.yaml). ``up`` starts the servers (or finds them running), creates the ``cpu`` and
``gpu`` work pools (process type here), deploys prefect.yaml, starts one worker per pool and prints
the addresses. Process ids and logs live in ``<paths.cache>/stack``. Only subprocesses are used:
the library itself knows nothing of Prefect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
POOLS = ("cpu", "gpu")


@dataclass(frozen=True)
class StackConfig:
    root: Path  # the project checkout
    state: Path  # pid files and logs
    prefect_port: int = 4200
    mlflow_port: int = 5000
    mlflow_backend: str = "sqlite:///mlflow.db"  # the same store the pipeline logs to by default

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def _env(config: StackConfig) -> dict[str, str]:
    return os.environ | {
        "PREFECT_API_URL": config.prefect_api, "BERTREC_PROJECT_DIR": str(config.root),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }  # fmt: skip


def _alive(pid_file: Path) -> bool:
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _start(config: StackConfig, name: str, command: list[str]) -> None:
    """Start ``command`` detached, its pid in ``<state>/<name>.pid`` and its output in ``<name>.log``."""
    config.state.mkdir(parents=True, exist_ok=True)
    pid_file = config.state / f"{name}.pid"
    if _alive(pid_file):
        return
    with open(config.state / f"{name}.log", "a") as log:
        process = subprocess.Popen(command, cwd=config.root, stdout=log, stderr=subprocess.STDOUT, env=_env(config),
                                   start_new_session=True)  # fmt: skip
    pid_file.write_text(str(process.pid))


def _wait(url: str, name: str, config: StackConfig, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
        if not _alive(config.state / f"{name}.pid"):
            break
    log = (config.state / f"{name}.log").read_text()[-3000:] if (config.state / f"{name}.log").exists() else ""
    raise RuntimeError(f"{name} did not come up at {url}; its log ends:\n{log}")


def _run(config: StackConfig, *command: str) -> str:
    done = subprocess.run(command, cwd=config.root, env=_env(config), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def up(config: StackConfig, workers: tuple[str, ...] = POOLS) -> list[str]:
    """Start servers, create pools, deploy prefect.yaml, start workers; returns lines to print."""
    _start(config, "prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                      "--port", str(config.prefect_port)])  # fmt: skip
    _start(config, "mlflow-server", [str(BIN / "mlflow"), "server", "--backend-store-uri", config.mlflow_backend,
                                     "--default-artifact-root", str(config.root / "mlruns"),
                                     "--host", "127.0.0.1", "--port", str(config.mlflow_port)])  # fmt: skip
    _wait(f"{config.prefect_api}/health", "prefect-server", config)
    _wait(f"{config.mlflow_url}/health", "mlflow-server", config)
    existing = _run(config, str(BIN / "prefect"), "work-pool", "ls")
    for pool in POOLS:
        if f" {pool} " not in existing:
            _run(config, str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process")
    _run(config, str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
    for pool in workers:
        _start(config, f"worker-{pool}", [str(BIN / "prefect"), "worker", "start", "--pool", pool])
    return [
        f"Prefect UI   http://127.0.0.1:{config.prefect_port}   (PREFECT_API_URL={config.prefect_api})",
        f"MLflow UI    {config.mlflow_url}   (backend {config.mlflow_backend})",
        f"workers      {', '.join(workers)} (logs in {config.state})",
        "deployments  training-pipeline/weekly (Mondays 03:00 UTC), drift-monitor/daily (06:00 UTC), train-stage/gpu, "
        "promote/manual, rollback/rollback",
    ]


def down(config: StackConfig) -> list[str]:
    """Stop every process `up` started (workers first); returns what was stopped."""
    stopped = []
    order = sorted(config.state.glob("*.pid"), key=lambda p: (not p.stem.startswith("worker"), p.stem))
    for pid_file in order:
        if _alive(pid_file):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            except OSError:
                pass
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped
