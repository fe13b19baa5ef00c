"""The `train` stage: the two-tower model fine-tuned on a split's training data, as the bundle's ``model/``.

Training starts where ``train.init`` says (:func:`find_start`): from scratch, from the registry's
champion, or from a bundle folder; a warm start copies that model's towers and trains for a few
epochs (:mod:`bertrec.model.warm`). ``metrics/train.json`` records the start (mode, source,
version, why), the epochs and the seconds; with no champion yet, the run says it started from scratch.

After training, the re-ranking penalty (``rerank.penalty``: the model's own exposure by default) and
its strength are chosen on the validation users (:mod:`bertrec.ranking.rerank`) and saved with the model.

Checkpoints go to ``<bundle>/checkpoints`` after every epoch; an interrupted run resumes from the
last one, and the folder is removed once the model is saved.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from bertrec.compute.engine import announce, engine_for
from bertrec.config import Params
from bertrec.data.dataset import load_dataset
from bertrec.data.split import read_split
from bertrec.errors import ConfigError, MissingInputError
from bertrec.mlops.registry import champion_of, download_version
from bertrec.model.bundle import save_model, training_record
from bertrec.model.ensemble import train_model
from bertrec.model.train import CHECKPOINTS, PRIMARY
from bertrec.model.warm import CHAMPION, SCRATCH, Start, differences, read_towers, warm_settings, warm_towers
from bertrec.ranking.evaluate import build_cases, reference_of, train_set
from bertrec.ranking.rerank import choose_beta
from bertrec.ranking.results import write_training_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    split: str
    best_epoch: int
    best_valid: dict[str, float]
    folder: Path  # the bundle's model/
    rerank_beta: float = 0.0
    start: str = "from scratch"  # how training started
    rerank_penalty: str = "exposure"  # what the re-ranking penalty measures (rerank.penalty)

    def summary(self) -> str:
        ndcg = self.best_valid.get(PRIMARY, float("nan"))
        return (
            f"trained on {self.split} {self.start}: best epoch {self.best_epoch}, valid {PRIMARY} {ndcg:.4f}, "
            f"{self.rerank_penalty} penalty beta {self.rerank_beta:g} -> {self.folder}"
        )


def champion_version(p: Params) -> str | None:
    """The version the registry's ``champion`` alias names, or None when there is none (no model, no alias).

    Raises:
        RegistryError: the registry cannot be read (an outage is not "no champion").
    """
    name, uri = p.mlflow.registered_model, p.mlflow.tracking_uri
    champion = champion_of(MlflowClient(uri, uri), name, uri, "train.init=champion: ")
    return None if champion is None else str(champion.version)


def find_start(p: Params, into: Path) -> Start:
    """Where this run starts (``train.init``): scratch, the champion (downloaded into ``into``) or a bundle.

    A champion whose towers cannot seed the configured model (another encoder or shape) gives a
    start from scratch that says why; so does a registry without a champion (the first run).

    Raises:
        RegistryError: the registry cannot be read.
        MissingInputError: ``train.init`` names a folder without a trained bundle.
        ConfigError: that bundle's towers cannot seed the configured model.
    """
    init, name, uri = p.train.init, p.mlflow.registered_model, p.mlflow.tracking_uri
    if init == SCRATCH:
        return Start(init, "scratch", "train.init is scratch")
    if init == CHAMPION:
        version = champion_version(p)
        if version is None:
            return Start(init, "scratch", f"{name} has no champion at {uri}: a first run, from scratch")
        source = f"models:/{name}/{version}"
        saved = read_towers(download_version(MlflowClient(uri, uri), name, version, into))
    else:
        version, source = None, str(init)
        try:
            saved = read_towers(Path(init))
        except MissingInputError as exc:
            raise MissingInputError(f"train.init={init}: {exc}") from None
    found = differences(saved, p)
    if found and init == CHAMPION:
        reason = f"the champion ({source}) cannot seed this model ({'; '.join(found)}): from scratch"
        return Start(init, "scratch", reason, source, version)
    if found:
        raise ConfigError(f"train.init={init}: its towers cannot seed the configured model: {'; '.join(found)}")
    return Start(init, "warm", f"warm start from {source}", source, version, saved)


def run(p: Params) -> Trained:
    """Train on ``train.split``; write the bundle's ``model/``, ``metrics/train.json`` and the curve."""
    data = load_dataset(p.paths.prepared)
    split = read_split(p.paths.splits, p.train.split, data.n_users, data.n_items)
    work = p.paths.bundle / CHECKPOINTS
    engine = engine_for(p.compute)
    began = time.perf_counter()
    mapped = []
    with tempfile.TemporaryDirectory(prefix="bertrec-init-") as tmp:
        start = find_start(p, Path(tmp))
        log.info("train: %s", start.reason)

        def initial(member: Params, k: int):
            if not start.warm:
                return None
            scorer, rows = warm_towers(member, split, data.items, start.saved, k, engine)
            mapped.append(rows)
            return scorer

        settings = warm_settings(p) if start.warm else p
        if engine.name == "ray":
            from bertrec.compute.train import train_on_ray

            announce("train", engine, "data-parallel training (Ray Train, DDP)")
            result = train_model(
                settings,
                split,
                data.items,
                work,
                fit=lambda member, folder, _, scorer: train_on_ray(member, split, data.items, folder, engine, scorer),
                initial=initial,
            )
        else:
            announce("train", engine, "training")
            result = train_model(settings, split, data.items, work, initial=initial)
    seconds = time.perf_counter() - began
    valid = build_cases(split, "valid").sample(p.train.valid_users, p.train.seed)
    choice = choose_beta(result.scorer, valid, reference_of(train_set(split, data.items)), p.rerank, p.eval.batch_size)
    init = start.to_dict()
    if mapped:
        init |= {"items_kept": mapped[0].kept, "items_new": mapped[0].new}
    record = training_record(result, p, split.name) | {
        "rerank": choice.to_dict(),
        "init": init,
        "seconds": round(seconds, 2),
    }
    folder = save_model(result.scorer, data.items, p.paths.bundle, record, data.interactions)
    write_training_metrics(record, p.paths.metrics)
    shutil.rmtree(work, ignore_errors=True)
    how = f"warm-started from {start.source}" if start.warm else "from scratch"
    return Trained(split.name, result.best_epoch, result.best_valid, folder, choice.beta, how, choice.penalty)
