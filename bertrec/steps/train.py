"""The `train` stage: the two-tower model fine-tuned on a split's training data, as the bundle's ``model/``.

Checkpoints go to ``<bundle>/checkpoints`` after every epoch; an interrupted run resumes from the
last one, and the folder is removed once the model is saved.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bertrec.compute.engine import announce, engine_for
from bertrec.config import Params
from bertrec.data.dataset import load_dataset
from bertrec.data.split import read_split
from bertrec.model.bundle import save_model, training_record
from bertrec.model.train import CHECKPOINTS, PRIMARY
from bertrec.model.train import train as fit
from bertrec.ranking.results import write_training_metrics


@dataclass(frozen=True)
class Trained:
    split: str
    best_epoch: int
    best_valid: dict[str, float]
    folder: Path  # the bundle's model/

    def summary(self) -> str:
        ndcg = self.best_valid.get(PRIMARY, float("nan"))
        return f"trained on {self.split}: best epoch {self.best_epoch}, valid {PRIMARY} {ndcg:.4f} -> {self.folder}"


def run(p: Params) -> Trained:
    """Train on ``train.split``; write the bundle's ``model/``, ``metrics/train.json`` and the curve."""
    data = load_dataset(p.paths.prepared)
    split = read_split(p.paths.splits, p.train.split, data.n_users, data.n_items)
    work = p.paths.bundle / CHECKPOINTS
    engine = engine_for(p.compute)
    if engine.name == "ray":
        from bertrec.compute.train import train_on_ray

        announce("train", engine, "data-parallel training (Ray Train, DDP)")
        result = train_on_ray(p, split, data.items, work, engine)
    else:
        announce("train", engine, "training")
        result = fit(p, split, data.items, work)
    record = training_record(result, p, split.name)
    folder = save_model(result.scorer, data.items, p.paths.bundle, record, data.interactions)
    write_training_metrics(record, p.paths.metrics)
    shutil.rmtree(work, ignore_errors=True)
    return Trained(split.name, result.best_epoch, result.best_valid, folder)
