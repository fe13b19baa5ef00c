"""A local stack on 127.0.0.1: a Prefect server, an MLflow server and process workers, started and stopped.

The Prefect ephemeral server runs nothing on a schedule; scheduled deployments need this stack (or
infra/compose.yaml). ``up`` starts the servers (or finds them running), creates the ``cpu`` and
``gpu`` work pools (process type here), deploys prefect.yaml, starts one worker per pool and prints
the addresses. Process ids and logs live in ``<paths.cache>/stack``. Only subprocesses are used:
the library itself knows nothing of Prefect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bertrec.config import Params, apply_overrides

BIN = Path(sys.executable).parent
POOLS = ("cpu", "gpu")
STOP_TIMEOUT_S = 20.0  # how long `down` lets a process group exit after SIGTERM before SIGKILL


@dataclass(frozen=True)
class StackConfig:
    root: Path  # the project checkout
    state: Path  # pid files and logs
    prefect_port: int = 4200
    mlflow_port: int = 5000
    mlflow_backend: str = "sqlite:///mlflow.db"  # the same store the pipeline logs to by default

    @classmethod
    def of(cls, p: Params, root: Path, prefect_port: int = 4200, mlflow_port: int = 5000) -> StackConfig:
        """The stack of the project at ``root``: state under ``paths.cache``, MLflow on params' SQLite store."""
        backend = p.mlflow.tracking_uri if p.mlflow.tracking_uri.startswith("sqlite") else "sqlite:///mlflow.db"
        return cls(root, p.paths.cache / "stack", prefect_port, mlflow_port, backend)

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"


def _env(config: StackConfig) -> dict[str, str]:
    return os.environ | {
        "PREFECT_API_URL": config.prefect_api,
        "BERTREC_PROJECT_DIR": str(config.root),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        # MLflow's job runner (7 huey processes, for its GenAI jobs) does nothing for bertrec: off unless asked for.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }


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
        process = subprocess.Popen(
            command, cwd=config.root, stdout=log, stderr=subprocess.STDOUT, env=_env(config), start_new_session=True
        )
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
    _start(
        config,
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(config.prefect_port)],
    )
    _start(
        config,
        "mlflow-server",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            config.mlflow_backend,
            "--default-artifact-root",
            str(config.root / "mlruns"),
            "--host",
            "127.0.0.1",
            "--port",
            str(config.mlflow_port),
        ],
    )
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


def live_members(group: int) -> list[int]:
    """Processes of a process group that have not exited (zombies left to a non-reaping init count as exited)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel whether anything in the group can still be signalled
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [group]
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _stop_groups(groups: dict[str, int], timeout: float) -> set[str]:
    """SIGTERM process groups together, wait up to ``timeout`` for all of them to exit, then SIGKILL what is left.

    Returns the names of the groups that had to be killed.
    """
    for group in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(live_members(g) for g in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = {name for name, group in groups.items() if live_members(group)}
    for name in killed:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(groups[name], signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(live_members(groups[n]) for n in killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


def down(config: StackConfig, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop every process `up` started, the workers first, and wait until each has exited with all its children.

    The workers get SIGTERM together and ``timeout`` seconds to exit, then SIGKILL; then the servers
    the same way. Returns what was stopped, e.g. ``["worker-cpu", "mlflow-server (killed after 20 s)"]``.
    """
    running = {f.stem: int(f.read_text()) for f in sorted(config.state.glob("*.pid")) if _alive(f)}
    stopped = []
    for batch in (
        {n: g for n, g in running.items() if n.startswith("worker")},
        {n: g for n, g in running.items() if not n.startswith("worker")},
    ):
        killed = _stop_groups(batch, timeout) if batch else set()
        stopped += [f"{name} (killed after {timeout:.0f} s)" if name in killed else name for name in batch]
    for pid_file in config.state.glob("*.pid"):
        pid_file.unlink(missing_ok=True)
    return stopped


def start_worker(
    pool: str, params_file: Path, sets: list[str], dvc_remote: str | None = None, dvc_endpoint: str | None = None
) -> None:
    """Configure this checkout (params overrides, the shared DVC remote), then become `prefect worker start`.

    Raises ConfigError for a bad override, before anything is written; never returns otherwise.
    """
    if sets:
        apply_overrides(params_file, sets)
    if dvc_remote:
        subprocess.run(
            [str(BIN / "dvc"), "remote", "add", "--local", "--force", "--default", "stack", dvc_remote], check=True
        )
        if dvc_endpoint:
            subprocess.run(
                [str(BIN / "dvc"), "remote", "modify", "--local", "stack", "endpointurl", dvc_endpoint], check=True
            )
    prefect = str(BIN / "prefect")
    os.execv(prefect, [prefect, "worker", "start", "--pool", pool])


def serve(p: Params, alias: str, host: str, port: int) -> None:
    """Become `mlflow models serve` of ``models:/<registered_model>@<alias>``; never returns."""
    uri = f"models:/{p.mlflow.registered_model}@{alias}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
    ]
    # mlflow starts `uvicorn` by name: put this environment's scripts first on PATH.
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    os.execvpe(command[0], command, os.environ | {"MLFLOW_TRACKING_URI": p.mlflow.tracking_uri, "PATH": path})
