"""`bertrec replay`: walk a log's timeline in steps, as if each step's interactions had just arrived.

The replay runs in a workspace of its own (default ``outputs/replay``): a git + DVC repository with
this project's dvc.yaml, the code its stages depend on, and params.yaml, whose MLflow registry is a
SQLite file inside it, so the project's own registry is left alone. Step 0 trains the first
champion on the data up to ``start``. Every later step moves ``data.window`` one step on and runs
``dvc repro drift`` (fetch, prepare: a new DVC data version; then `bertrec drift` against the
champion); when the verdict's retrain decision says so (``retrain.policy`` applied to the calibrated
drift checks and the quality signal), or ``retrain_every`` steps have passed since the last training
(when set), it runs ``dvc repro register`` (split to register: train, gate, promote). Each row also
keeps the uncalibrated rule's alarm (``legacy_drift``: per-row features at Evidently's thresholds,
the monitor's rule before calibration) and whether the step's new data hold a planted shift. Each step is
a git commit of dvc.lock and params.yaml, so ``git checkout <step> && dvc checkout`` brings back
the data of any step.

Writes ``replay.json`` and ``replay.md`` (a row per step) in the workspace after every step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bertrec.config import DEFAULT_PARAMS, Params, apply_overrides, load_params
from bertrec.data.dataset import MANIFEST_FILE
from bertrec.errors import ReplayError
from bertrec.mlops.drift.checks import VERDICT_FILE
from bertrec.mlops.drift.monitor import DECAY, DRIFT_DIR, LEGACY, QUALITY, RETRAIN
from bertrec.render import replay_table

log = logging.getLogger(__name__)
BIN = Path(sys.executable).parent
DVC_FILE = "dvc.yaml"
RESULTS = "replay.json"
TABLE = "replay.md"
CHECK_NAMES = ("interactions", "embeddings", "predictions")


@dataclass
class Step:
    step: int
    window: str  # data.window of the step (ISO)
    rows: int  # interactions up to the window
    new_rows: int | None  # interactions since the champion's data (the drift check's current window)
    drift: dict[str, bool | None]  # per check; None where skipped or not run
    drift_any: bool | None
    quality_ndcg: float | None  # the champion (before retraining) on the new rows, NDCG@10, ours
    quality_ndcg_evidently: float | None
    decay: bool | None  # the quality signal's verdict (None: not checked)
    champion_ndcg_new: float | None  # the champion's NDCG@10 on returning users' next items
    legacy_drift: bool | None  # the uncalibrated rule's alarm on the same windows
    planted: bool  # the step's new rows include the planted shift
    decision: str  # the retrain policy's reason
    retrained: str  # "" or why ("first", "policy", "schedule")
    version: str | None  # the version the step registered, if any
    promoted: bool
    champion: str | None  # champion version after the step
    champion_ndcg: float | None  # its loo test NDCG@10 (gate metric tag)
    seconds: float


def prepare_workspace(project: Path, workdir: Path, params_file: Path, sets: list[str]) -> Path:
    """Create the replay's repository (once): dvc.yaml, stage code, params.yaml, raw data, git, DVC."""
    workdir = workdir.resolve()
    if (workdir / ".git").exists():
        raise ReplayError(f"{workdir} already holds a replay; remove it or pick another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    stages = yaml.safe_load((project / DVC_FILE).read_text())["stages"]
    produced = {_path(o) for spec in stages.values() for o in spec.get("outs", []) + spec.get("metrics", [])}
    shutil.copy(project / DVC_FILE, workdir / DVC_FILE)
    for dep in sorted({d for spec in stages.values() for d in spec.get("deps", [])} - produced):
        source = project / dep
        if not source.exists():
            raise ReplayError(f"{project / DVC_FILE}: dependency {dep} not found in {project}")
        (workdir / dep).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():  # a folder of code modules
            shutil.copytree(source, workdir / dep, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy(source, workdir / dep)
    source = load_params(params_file, sets)
    # A local log named relative to the project is read from there.
    local = [
        f"data.{key}={project.resolve() / value}"
        for key, value in (("path", source.data.path), ("items_path", source.data.items_path))
        if value and not value.is_absolute()
    ]
    shutil.copy(params_file, workdir / DEFAULT_PARAMS)
    apply_overrides(
        workdir / DEFAULT_PARAMS,
        [
            *sets,
            *local,
            f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
            f"paths.cache={workdir / '.cache'}",
        ],
    )
    p = load_params(workdir / DEFAULT_PARAMS)
    raw = project / source.paths.raw
    if raw.is_dir():  # the project's fetched snapshot: no second download
        shutil.copytree(raw, workdir / p.paths.raw)
    ignored = [
        ".cache/",
        "mlflow.db",
        "mlruns/",
        "__pycache__/",
        f"/{p.paths.raw}/",
        f"/{p.paths.outputs}/{DRIFT_DIR}/",
    ]
    (workdir / ".gitignore").write_text("\n".join(ignored) + "\n")  # DVC adds its outputs as they appear
    _run(workdir, "git", "init", "-q")
    _run(workdir, "git", "config", "user.name", "bertrec replay")
    _run(workdir, "git", "config", "user.email", "replay@bertrec.invalid")
    _run(workdir, str(BIN / "dvc"), "init", "-q")
    _run(workdir, str(BIN / "dvc"), "config", "core.analytics", "false")
    cache = project / ".dvc" / "cache"
    if cache.is_dir():  # share the project's DVC cache: steps mostly store what it already has
        _run(workdir, str(BIN / "dvc"), "cache", "dir", str(cache))
    _run(workdir, "git", "add", "-A")
    _run(workdir, "git", "commit", "-q", "-m", "replay workspace")
    return workdir


def replay(
    project: Path,
    workdir: Path,
    params_file: Path,
    sets: list[str],
    start: datetime,
    step: timedelta,
    steps: int | None,
    retrain_every: int | None,
    on_step=None,
    planted_at: datetime | None = None,
) -> list[Step]:
    """Run the replay (see the module docstring); ``on_step`` is called with each finished step.

    ``planted_at``: when the log holds a planted shift from that time on, the steps whose new rows
    include it are marked ``planted``.
    """
    root = prepare_workspace(project, workdir, params_file, sets)
    rows: list[Step] = []
    since_training = 0
    index = 0
    while steps is None or index < steps:
        began = time.monotonic()
        window = start + index * step
        apply_overrides(root / DEFAULT_PARAMS, [f"data.window={window.isoformat()}"])
        p = load_params(root / DEFAULT_PARAMS)
        verdict: dict[str, Any] = {}
        if index == 0:
            reason = "first"
            _dvc(root, "repro", "prepare")
        else:
            _dvc(root, "repro", "drift")
            verdict = json.loads((root / p.paths.outputs / DRIFT_DIR / VERDICT_FILE).read_text())
            scheduled = retrain_every is not None and since_training + 1 >= retrain_every
            reason = "policy" if verdict[RETRAIN]["retrain"] else "schedule" if scheduled else ""
        manifest = json.loads((root / p.paths.prepared / MANIFEST_FILE).read_text())
        version = promoted = None
        if reason:
            _dvc(root, "repro", "register")
            registered = json.loads((root / p.paths.metrics / "register.json").read_text())
            version, promoted = registered.get("version"), bool(registered.get("promote"))
            since_training = 0
        else:
            since_training += 1
        champion, ndcg = _champion(p)
        planted = planted_at is not None and window > planted_at
        row = _row(index, window, manifest, verdict, reason, version, bool(promoted), champion, ndcg, began, planted)
        rows.append(row)
        write_results(root, rows)
        _run(root, "git", "add", "-A")
        _run(
            root,
            "git",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            f"replay step {index}: data as of {row.window}{'; retrained (' + reason + ')' if reason else ''}",
        )
        if on_step is not None:
            on_step(row)
        if manifest["rows"].get("after_window", 0) == 0:  # the window has reached the end of the log
            break
        index += 1
    return rows


def write_results(root: Path, rows: list[Step]) -> None:
    (root / RESULTS).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    (root / TABLE).write_text(replay_table(rows, CHECK_NAMES))


def _row(
    index: int,
    window: datetime,
    manifest: dict,
    verdict: dict,
    reason: str,
    version,
    promoted: bool,
    champion: str | None,
    ndcg: float | None,
    began: float,
    planted: bool = False,
) -> Step:
    checks = verdict.get("checks", {})
    drift = {
        name: (None if checks[name]["score"] is None else checks[name]["drift"]) if name in checks else None
        for name in CHECK_NAMES
    }
    quality = verdict.get(QUALITY, {}).get("ours", {})
    theirs = verdict.get(QUALITY, {}).get("evidently", {})
    decay = verdict.get(DECAY, {})
    new_ndcg = decay.get("metrics", {}).get("NDCG@10", {}).get("observed")
    return Step(
        step=index,
        window=window.isoformat(),
        rows=int(manifest["rows"]["kept"]),
        new_rows=verdict["windows"]["current"]["rows"] if "windows" in verdict else None,
        drift=drift,
        drift_any=verdict.get("drift") if checks else None,
        quality_ndcg=quality.get("NDCG@10"),
        quality_ndcg_evidently=theirs.get("NDCG@10"),
        decay=decay["decay"] if decay.get("status") == "checked" else None,
        champion_ndcg_new=new_ndcg,
        legacy_drift=verdict[LEGACY]["drift"] if LEGACY in verdict else None,
        planted=planted,
        decision=verdict.get(RETRAIN, {}).get("reason", ""),
        retrained=reason,
        version=str(version) if version else None,
        promoted=promoted,
        champion=champion,
        champion_ndcg=ndcg,
        seconds=time.monotonic() - began,
    )


def _champion(p: Params) -> tuple[str | None, float | None]:
    from bertrec.mlops.registry import CHAMPION, versions
    from bertrec.mlops.tracking import mlflow_name

    for row in versions(p):
        if CHAMPION in row.aliases:
            value = row.tags.get(mlflow_name(p.promotion.metric))
            return str(row.version), float(value) if value else None
    return None, None


def _dvc(root: Path, *args: str) -> str:
    log.info("$ dvc %s", " ".join(args))
    return _run(root, str(BIN / "dvc"), *args)


def _run(root: Path, *command: str) -> str:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        raise ReplayError(
            f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))}` failed in "
            f"{root}:\n" + "\n".join(output[-40:])
        )
    return done.stdout


def _path(entry) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))
