"""The `embed` stage on Ray Data: the catalogue through ``map_batches`` over a pool of scorer actors.

Each actor receives the trained scorer once (one model load per actor, moved to its GPU when the
actor has one) and turns a batch of rows into vectors with :func:`bertrec.model.embed.item_part`,
the code of the local path; :func:`bertrec.compute.encode.stream` writes them into the stage's
float16 memmap by row, so the parts assemble into the same ``embeddings/`` folder as a local run.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bertrec.compute.encode import stream
from bertrec.compute.engine import Engine
from bertrec.model.embed import item_part
from bertrec.model.scorer import TowerScorer

log = logging.getLogger(__name__)


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
    scorer: TowerScorer, items: pd.DataFrame, batch_size: int, frozen: bool, out: np.ndarray, engine: Engine
) -> np.ndarray:
    """Fill ``out`` (n_items, dim) with the item vectors of ``items``, computed by ``compute.workers`` actors."""
    frame = pd.DataFrame(
        {"row": np.arange(len(items)), "item_idx": items["item_idx"].to_numpy(), "text": items["text"].astype(str)}
    )
    gpu = engine.compute.gpus_per_worker > 0
    return stream(frame, ItemTowerActor, (scorer, batch_size, frozen, gpu), batch_size, out, engine, "embed")
