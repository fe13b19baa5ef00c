"""The pipeline's metrics files and what their figures depend on.

``metrics/baselines.json`` (``bertrec baselines``): ``{data_sha256, config, dataset, splits: {split:
{model: {target: {metric: value}}}}}``. ``metrics/evaluate.json`` (``bertrec evaluate``): ``{split,
results: {model: {target: {metric: value}}}}``. Baseline figures are reused only while the data and
the baselines' configuration are those they were computed on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertrec.config import Params

BASELINES_FILE = "baselines.json"
EVALUATE_FILE = "evaluate.json"
REGISTER_FILE = "register.json"  # what `bertrec register` decided
TRAIN_FILE = "train.json"  # best epoch and its validation metrics
TRAIN_CURVE_FILE = "train_curve.csv"  # per epoch: loss and validation NDCG@10 (a DVC plot)
# Top-K lists under paths.outputs: one folder per step, so that each DVC stage owns its outputs.
TOPK = "topk"
BASELINES_TOPK = f"{TOPK}/baselines"
EVALUATE_TOPK = f"{TOPK}/evaluate"


def data_hash(prepared: Path) -> str:
    """The content hash (sha256) of the prepared interactions, from the manifest of `prepare`."""
    from bertrec.data.dataset import INTERACTIONS_FILE, MANIFEST_FILE

    return json.loads((Path(prepared) / MANIFEST_FILE).read_text())["outputs"][INTERACTIONS_FILE]


def baseline_config(p: Params) -> dict[str, Any]:
    """What the baselines' figures depend on besides the data."""
    return json.loads(
        json.dumps(
            {
                "baselines": p.baselines.model_dump(mode="json"),
                "encoder": p.model.encoder,
                "max_length": p.model.max_length,
                "ks": list(p.eval.ks),
                "split": p.split.model_dump(mode="json"),
            }
        )
    )


def read_baselines(p: Params) -> dict[str, Any]:
    """The saved baselines report, or {} when there is none."""
    path = p.paths.metrics / BASELINES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _is_current(report: dict[str, Any], p: Params) -> bool:
    """Whether a baselines report was computed on the current prepared data and baselines config."""
    return report.get("data_sha256") == data_hash(p.paths.prepared) and report.get("config") == baseline_config(p)


def baselines_report(p: Params, dataset: str) -> dict[str, Any]:
    """The saved report to add splits to when it is current; else a new, empty one for ``dataset``."""
    saved = read_baselines(p)
    if _is_current(saved, p):
        return saved
    return {"data_sha256": data_hash(p.paths.prepared), "config": baseline_config(p), "dataset": dataset, "splits": {}}


def current_baselines(p: Params) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{split: {model: {target: metrics}}}`` of the saved baselines, or {} when they are stale."""
    saved = read_baselines(p)
    return saved.get("splits", {}) if _is_current(saved, p) else {}


def write_training_metrics(record: dict[str, Any], metrics_dir: Path) -> None:
    """``train.json`` (best epoch, validation metrics, epochs, start, seconds) and ``train_curve.csv``, atomically."""
    from bertrec.io import atomic_file, write_json

    rerank = record.get("rerank", {})
    write_json(
        Path(metrics_dir) / TRAIN_FILE,
        {
            "split": record["split"],
            "best_epoch": record["best_epoch"],
            "epochs_run": len(record["epochs"]),
            "valid": record["best_valid"],
            # the re-ranking (bertrec.ranking.rerank): its strength, what it measures, what new items pay
            "rerank_beta": rerank.get("beta", 0.0),
            "rerank_penalty": rerank.get("penalty"),
            "new_item_penalty": rerank.get("new_item_penalty", 0.0),
            "init": record.get("init"),  # where training started: mode, source, version, why (bertrec.model.warm)
            "seconds": record.get("seconds"),  # training, from reading the starting model to the best weights
        },
    )
    rows = ["epoch,loss,valid_ndcg_at_10,seconds"]
    rows += [
        f"{e['epoch']},{e['loss']:.6f},{e['valid'].get('NDCG@10', float('nan')):.6f},{e['seconds']:.2f}"
        for e in record["epochs"]
    ]
    with atomic_file(Path(metrics_dir) / TRAIN_CURVE_FILE) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
