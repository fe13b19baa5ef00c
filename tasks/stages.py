"""Tasks around the DVC stages of dvc.yaml, the one definition of the pipeline's steps.

A stage task runs ``dvc repro --single-item <stage>``: DVC decides from dvc.lock whether the stage
must run, and the task never re-declares what a stage reads or writes. The command's output is
streamed to the Prefect log line by line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import get_run_logger, task

BIN = Path(sys.executable).parent
DVC_FILE = "dvc.yaml"
LOCK_FILE = "dvc.lock"
# Stages that move data over the network are retried; compute stages are not (a rerun would fail alike).
RETRIES = {"fetch": 3}
TIMEOUTS_S = {"train": 6 * 3600, "baselines": 3600, "evaluate": 3600, "register": 3600}
DEFAULT_TIMEOUT_S = 1800
# Stages the flows always run (`dvc repro --force`): fetch notices a new snapshot of the data; the
# drift monitor's check depends on the registry's champion, which DVC does not see.
TRAINING_FORCED = ("fetch",)
MONITOR_FORCED = ("fetch", "drift")


@dataclass(frozen=True)
class StageRun:
    stage: str
    ran: bool  # False when DVC found nothing changed and skipped it
    seconds: float


def declared(project: Path) -> dict:
    """The ``stages`` mapping of dvc.yaml, in the order the file lists them (a topological order)."""
    return yaml.safe_load((Path(project) / DVC_FILE).read_text())["stages"]


def stages(project: Path) -> list[str]:
    """The training pipeline's stages in order: every stage of dvc.yaml (drift, the check of the newest
    data against the champion, comes before register)."""
    return list(declared(project))


def dvc(project: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``dvc <args>`` in ``project``, streaming its output to the run log; returns the lines.

    Raises RuntimeError with the last lines of output when DVC fails.
    """
    return stream(project, "dvc", *args, env=env)


def stream(project: Path, program: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``program`` (one of this environment's: dvc, bertrec) with ``args`` in ``project``, its output
    streamed to the run log; returns the lines. Raises RuntimeError with the last lines when it fails."""
    logger = get_run_logger()
    lines: list[str] = []
    command = [str(BIN / program), *args]
    logger.info("$ %s %s", program, " ".join(args))
    # the stages' commands (`bertrec <step>`) come from this environment
    path = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with subprocess.Popen(
        command,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | path | (env or {}),
    ) as process:
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            if line:
                logger.info(line)
    if process.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"`{program} {' '.join(args)}` failed with exit code {process.returncode}:\n{tail}")
    return lines


@task(task_run_name="stage {stage}", retries=0)
def run_stage(project: Path, stage: str, env: dict[str, str] | None = None, force: bool = False) -> StageRun:
    """``dvc repro --single-item <stage>``: runs the stage when its deps or params changed (``force``: always)."""
    began = time.monotonic()
    lines = dvc(project, "repro", "--single-item", *(["--force"] if force else []), stage, env=env)
    skipped = any("didn't change, skipping" in line for line in lines)
    return StageRun(stage, not skipped, time.monotonic() - began)


def stage_task(stage: str):
    """``run_stage`` with the retries and timeout of ``stage``."""
    return run_stage.with_options(
        retries=RETRIES.get(stage, 0), retry_delay_seconds=30, timeout_seconds=TIMEOUTS_S.get(stage, DEFAULT_TIMEOUT_S)
    )


@task(task_run_name="dvc push {targets}", retries=3, retry_delay_seconds=10)
def push(project: Path, targets: list[str]) -> None:
    """Upload stage outputs to the DVC remote (retried: network)."""
    dvc(project, "push", *targets)


@task(task_run_name="dvc pull {targets}", retries=3, retry_delay_seconds=10)
def pull(project: Path, targets: list[str]) -> None:
    """Download stage outputs named in dvc.lock from the DVC remote and check them out (retried: network)."""
    dvc(project, "pull", *targets)


@task(task_run_name="dvc status {stage}")
def is_current(project: Path, stage: str) -> bool:
    """Whether ``stage`` is up to date (its deps, params and outs match dvc.lock), so it need not run."""
    import json

    lines = dvc(project, "status", stage, "--json")
    return json.loads("\n".join(lines) or "{}") == {}


def upstream_outputs(project: Path, stage: str) -> list[str]:
    """The deps of ``stage`` that other stages produce (what a separate worker must pull before running it)."""
    all_stages = declared(project)
    produced = {path for name, spec in all_stages.items() if name != stage for path in _cached_outputs(spec)}
    return [d for d in all_stages[stage].get("deps", []) if d in produced]


def outputs_of(project: Path, stage: str) -> list[str]:
    """The cached outputs of ``stage`` (those a DVC remote carries)."""
    return _cached_outputs(declared(project)[stage])


def _cached_outputs(spec: dict) -> list[str]:
    entries = spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", [])
    return [_path(o) for o in entries if isinstance(o, str) or next(iter(o.values())).get("cache", True)]


def _path(entry) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))
