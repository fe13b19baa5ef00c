"""The `train` stage on Ray Train: data-parallel training (PyTorch DDP) over ``compute.workers`` workers.

The driver builds the fresh model once (seeded as a local run, the frozen text features encoded or
read from the cache) and stores it with the split in the object store. Each worker runs
:func:`bertrec.model.train.train`, the loop of the local path, as one rank of a
:class:`~bertrec.model.train.Replicas` group (gloo on CPU, NCCL on GPU): every global batch of
``train.batch_size`` windows is cut into ``workers`` parts, and the gradients are averaged so a
step follows the whole batch.

Checkpoints keep the local path's semantics through Ray Train: rank 0 writes the epoch's checkpoint
and reports it; when a worker dies, Ray Train restarts the group (``compute.max_failures`` times)
and every rank resumes from the last reported checkpoint. Storage is ``compute.storage`` (a path
all nodes see, or a cloud URI), by default ``<bundle>/checkpoints/ray``. The driver reads the
final checkpoint back: the best epoch's weights and the epoch log.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch

from bertrec.compute.engine import RayEngine
from bertrec.config import Params
from bertrec.data.split import Split
from bertrec.model.replicas import Replicas
from bertrec.model.scorer import TowerScorer, build_towers
from bertrec.model.train import CHECKPOINTS, EpochLog, TrainResult, run_fingerprint
from bertrec.model.train import train as fit

log = logging.getLogger(__name__)

RAY_STORAGE = "ray"  # under the stage's checkpoint folder, unless compute.storage says otherwise


def storage_of(params: Params, work_dir: Path) -> str:
    """Where Ray Train keeps the run's checkpoints: ``compute.storage``, or ``work_dir/ray`` made absolute."""
    if params.compute.storage:
        return (
            params.compute.storage if "://" in params.compute.storage else str(Path(params.compute.storage).resolve())
        )
    return str((Path(work_dir) / RAY_STORAGE).resolve())


def _worker(config: dict) -> None:
    """One Ray Train worker: a rank of the data-parallel run, resuming from Ray's latest checkpoint if any."""
    import ray
    import ray.train

    params, split, items, scorer = ray.get(config["inputs"])
    context = ray.train.get_context()
    replicas = Replicas(context.get_world_rank(), context.get_world_size())
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        scorer.to(device)
    work = Path(tempfile.mkdtemp(prefix=f"bertrec-train-rank{replicas.rank}-"))
    restored = ray.train.get_checkpoint()
    if restored is not None:
        log.info("rank %d: restarting from Ray Train checkpoint %s", replicas.rank, restored.path)
        with restored.as_directory() as folder:
            shutil.copytree(folder, work / CHECKPOINTS)

    def report(entry: EpochLog) -> None:
        metrics = {"epoch": entry.epoch, "loss": entry.loss, **{f"valid_{k}": v for k, v in entry.valid.items()}}
        if replicas.rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(work / CHECKPOINTS))
        else:
            ray.train.report(metrics)

    try:
        fit(params, split, items, work, on_epoch_end=report, replicas=replicas, scorer=scorer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_on_ray(
    params: Params,
    split: Split,
    items: pd.DataFrame,
    work_dir: Path,
    engine: RayEngine,
    scorer: TowerScorer | None = None,
) -> TrainResult:
    """:func:`bertrec.model.train.train` as a Ray Train run of ``compute.workers`` DDP workers.

    ``scorer``: the model to start from (a warm start); default: a fresh one, seeded as a local run.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    c = params.compute
    if scorer is None:
        torch.manual_seed(params.train.seed)
        scorer = build_towers(params, split, items, engine)  # seeded as a local run: the same initial weights
    gpu = c.gpus_per_worker > 0
    resources = {"CPU": c.cpus_per_worker} | ({"GPU": c.gpus_per_worker} if gpu else {})
    fingerprint = run_fingerprint(params, split)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"inputs": ray.put((params, split, items, scorer))},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=c.workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"train-{fingerprint[:12]}",
            storage_path=storage_of(params, work_dir),
            failure_config=FailureConfig(max_failures=c.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome = trainer.fit()
    if outcome.checkpoint is None:
        raise RuntimeError(f"the Ray Train run ended without a checkpoint: {outcome.error}")
    with outcome.checkpoint.as_directory() as folder:
        state = torch.load(_only(folder), map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise RuntimeError("the Ray Train checkpoint belongs to another configuration or split")
    result = TrainResult(scorer, [EpochLog(**e) for e in state["epochs"]], state["best_epoch"], state["best_valid"])
    scorer.load_state_dict(state["best_state"] if state["best_state"] is not None else state["scorer"])
    return result


def _only(folder: str) -> Path:
    found = sorted(Path(folder).glob("epoch-*.pt"))
    if not found:
        raise RuntimeError(f"no epoch checkpoint in the Ray Train checkpoint {folder}")
    return found[-1]
