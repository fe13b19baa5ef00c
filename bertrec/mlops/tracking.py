"""MLflow tracking of a pipeline run: params, every metric per split and K, curves, artifacts, lineage.

Metric names follow ``<split>/<target>/<Metric>_at_<K>`` for the model (MLflow names cannot hold
``@``), ``baselines/<name>/<split>/<target>/...`` for the baselines, and ``train/loss`` and
``valid/<Metric>_at_<K>`` per epoch (step = epoch).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bertrec.config import Params

METRICS_PER_BATCH = 1000  # MLflow's limits per log_batch call
PARAMS_PER_BATCH = 100
PARAM_VALUE_LIMIT = 6000


def mlflow_name(key: str) -> str:
    """``loo/test/NDCG@10`` -> ``loo/test/NDCG_at_10`` (MLflow names allow no ``@``)."""
    return key.replace("@", "_at_")


def connect(p: Params) -> MlflowClient:
    """Point MLflow at ``mlflow.tracking_uri`` and the experiment of params; returns a client."""
    mlflow.set_tracking_uri(p.mlflow.tracking_uri)
    mlflow.set_registry_uri(p.mlflow.tracking_uri)
    mlflow.set_experiment(p.mlflow.experiment)
    return MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)


def git_commit(cwd: Path = Path(".")) -> tuple[str, bool]:
    """(commit, dirty) of the repository around ``cwd``; ("unknown", False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit.stdout.strip(), bool(status.stdout.strip())


def dvc_hash(path: Path, lock: Path = Path("dvc.lock")) -> str | None:
    """The md5 that dvc.lock records for ``path`` (an out of some stage), or None."""
    if not lock.exists():
        return None
    import yaml

    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in [*stage.get("outs", []), *stage.get("deps", [])]:
            if Path(out.get("path", "")) == Path(path):
                return out.get("md5")
    return None


def lineage_tags(p: Params, dataset: str, data_sha256: str) -> dict[str, str]:
    """Where a run came from: git commit, data hashes (ours and DVC's), dataset, base encoder."""
    commit, dirty = git_commit()
    tags = {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "data.sha256": data_sha256,
        "data.dataset": dataset,
        "model.encoder": p.model.encoder,
    }
    for name, path in (("data.dvc_md5.raw", p.paths.raw), ("data.dvc_md5.prepared", p.paths.prepared)):
        found = dvc_hash(path)
        if found:
            tags[name] = found
    return tags


def metric_entries(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], split: str, prefix: str = ""
) -> dict[str, float]:
    """``{target: {metric: value}}`` of one model -> ``{"<prefix><split>/<target>/<Metric>_at_<K>": value}``."""
    return {
        mlflow_name(f"{prefix}{split}/{target}/{metric}"): float(value)
        for target, metrics in results.items()
        for metric, value in metrics.items()
    }


def curve_entries(epochs: Iterable[Mapping]) -> list[tuple[str, float, int]]:
    """Per-epoch (name, value, step) from training.json's epochs."""
    out = []
    for e in epochs:
        out.append(("train/loss", float(e["loss"]), int(e["epoch"])))
        out.append(("train/epoch_seconds", float(e["seconds"]), int(e["epoch"])))
        out += [(mlflow_name(f"valid/{k}"), float(v), int(e["epoch"])) for k, v in e["valid"].items()]
    return out


def log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    curves: Iterable[tuple[str, float, int]] = (),
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Everything in as few calls as MLflow's batch limits allow (non-finite metrics are left out)."""
    now = int(time.time() * 1000)
    points = [Metric(k, v, now, 0) for k, v in (metrics or {}).items() if np.isfinite(v)]
    points += [Metric(k, v, now, step) for k, v, step in curves if np.isfinite(v)]
    values = [
        Param(mlflow_name(k), (v if isinstance(v, str) else json.dumps(v))[:PARAM_VALUE_LIMIT])
        for k, v in (params or {}).items()
    ]
    labels = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for start in range(0, len(values), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=values[start : start + PARAMS_PER_BATCH])
    for start in range(0, len(labels), PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=labels[start : start + PARAMS_PER_BATCH])
    for start in range(0, len(points), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=points[start : start + METRICS_PER_BATCH])


def topk_lists(topk_dir: Path, split: str, target: str) -> dict[str, np.ndarray]:
    """``{model: (users, K) item indices}`` from the top-K lists of one split and target in any step's folder."""
    out = {}
    for path in sorted(Path(topk_dir).glob(f"*/{split}/*.{target}.parquet")):
        frame = pd.read_parquet(path, columns=["item_idx"])
        out[path.name.split(".")[0]] = np.stack(frame["item_idx"].to_numpy()) if len(frame) else np.empty((0, 0), int)
    return out
