"""The `train` stage: the two-tower model fine-tuned on a split's training data, as the bundle's ``model/``.

After training, the popularity penalty of re-ranking is chosen on the validation users
(:mod:`bertrec.ranking.rerank`) and saved with the model.

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
from bertrec.model.ensemble import train_model
from bertrec.model.train import CHECKPOINTS, PRIMARY
from bertrec.ranking.evaluate import build_cases, reference_of, train_set
from bertrec.ranking.rerank import choose_beta
from bertrec.ranking.results import write_training_metrics


@dataclass(frozen=True)
class Trained:
    split: str
    best_epoch: int
    best_valid: dict[str, float]
    folder: Path  # the bundle's model/
    rerank_beta: float = 0.0

    def summary(self) -> str:
        ndcg = self.best_valid.get(PRIMARY, float("nan"))
        return (
            f"trained on {self.split}: best epoch {self.best_epoch}, valid {PRIMARY} {ndcg:.4f}, "
            f"popularity penalty beta {self.rerank_beta:g} -> {self.folder}"
        )


def run(p: Params) -> Trained:
    """Train on ``train.split``; write the bundle's ``model/``, ``metrics/train.json`` and the curve."""
    data = load_dataset(p.paths.prepared)
    split = read_split(p.paths.splits, p.train.split, data.n_users, data.n_items)
    work = p.paths.bundle / CHECKPOINTS
    engine = engine_for(p.compute)
    if engine.name == "ray":
        from bertrec.compute.train import train_on_ray

        announce("train", engine, "data-parallel training (Ray Train, DDP)")
        result = train_model(
            p,
            split,
            data.items,
            work,
            fit=lambda member, folder, _: train_on_ray(member, split, data.items, folder, engine),
        )
    else:
        announce("train", engine, "training")
        result = train_model(p, split, data.items, work)
    valid = build_cases(split, "valid").sample(p.train.valid_users, p.train.seed)
    choice = choose_beta(result.scorer, valid, reference_of(train_set(split, data.items)), p.rerank, p.eval.batch_size)
    record = training_record(result, p, split.name) | {"rerank": choice.to_dict()}
    folder = save_model(result.scorer, data.items, p.paths.bundle, record, data.interactions)
    write_training_metrics(record, p.paths.metrics)
    shutil.rmtree(work, ignore_errors=True)
    return Trained(split.name, result.best_epoch, result.best_valid, folder, choice.beta)
