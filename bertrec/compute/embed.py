"""The `embed` stage on Ray Data: the catalogue through ``map_batches`` over a pool of model actors.

Each actor receives the trained scorer once (one model load per actor, moved to its GPU when the
actor has one) and turns a batch of rows into vectors with :func:`bertrec.model.embed.item_part`,
the code of the local path. The driver streams the finished batches into the output array (the
stage's float16 memmap) by row number, so the shards assemble into the same ``embeddings/`` folder
as a local run, and no more than a few batches are ever held at once.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bertrec.compute.engine import RayEngine, parts
from bertrec.model.embed import item_part
from bertrec.model.scorer import TowerScorer
from bertrec.progress import Progress

log = logging.getLogger(__name__)

BLOCKS_PER_WORKER = 4  # input blocks per actor: enough to keep each busy while the driver writes


class ItemTowerActor:
    """A Ray Data actor holding the scorer: ``{"row", "item_idx", "text"}`` -> ``{"row", "vector"}``."""

    def __init__(self, scorer: TowerScorer, batch_size: int, frozen: bool, gpu: bool) -> None:
        import torch

        self.scorer = scorer.to("cuda") if gpu and torch.cuda.is_available() else scorer
        self.batch_size, self.frozen = batch_size, frozen

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = batch["item_idx"].astype(np.int64)
        texts = [str(t) for t in batch["text"]]
        vectors = item_part(self.scorer, texts, items, self.batch_size, self.frozen, progress=False)
        return {"row": batch["row"], "vector": vectors.astype(np.float32)}


def embed_on_ray(
    scorer: TowerScorer, items: pd.DataFrame, batch_size: int, frozen: bool, out: np.ndarray, engine: RayEngine
) -> np.ndarray:
    """Fill ``out`` (n_items, dim) with the vectors of ``items``, computed by ``compute.workers`` actors."""
    import ray

    c = engine.compute
    frame = pd.DataFrame(
        {"row": np.arange(len(items)), "item_idx": items["item_idx"].to_numpy(), "text": items["text"].astype(str)}
    )
    blocks = [frame.iloc[a:b] for a, b in parts(len(frame), c.workers * BLOCKS_PER_WORKER)]
    vectors = ray.data.from_pandas(blocks).map_batches(
        ItemTowerActor,
        fn_constructor_args=(scorer, batch_size, frozen, c.gpus_per_worker > 0),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=c.workers),
        num_cpus=c.cpus_per_worker,
        num_gpus=c.gpus_per_worker,
    )
    meter = Progress("embed (Ray Data)", len(items), "items")
    done = np.zeros(len(items), dtype=bool)
    for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
        out[batch["row"]] = batch["vector"]
        done[batch["row"]] = True
        meter.advance(len(batch["row"]))
    meter.finish()
    if not done.all():
        raise RuntimeError(f"Ray Data returned vectors for {int(done.sum())} of {len(items)} items")
    return out
