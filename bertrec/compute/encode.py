"""Text through an encoder on Ray Data: ``map_batches`` over a pool of actors, written into one array by row.

:func:`encode_on_ray` computes a frozen encoder's features of the catalogue (the feature cache of
:func:`bertrec.model.features.catalogue_features`, read by `train` and `text-zero-shot`) with
:meth:`TextEncoder.features`, the code of the local path, one encoder load per actor (on its GPU
when the actor has one). :func:`stream` is the driver's side, shared with the `embed` stage
(:mod:`bertrec.compute.embed`): the finished batches go into the output array (a float16 memmap)
by row number, so the parts assemble into the same file as a local run, and no more than a few
batches are ever held at once.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bertrec.compute.engine import Engine, parts
from bertrec.model.encoder import Int8Linear, TextEncoder
from bertrec.progress import Progress

log = logging.getLogger(__name__)

BLOCKS_PER_WORKER = 4  # input blocks per actor: enough to keep each busy while the driver writes


class EncoderActor:
    """A Ray Data actor holding a text encoder: ``{"row", "text"}`` -> ``{"row", "vector"}`` (mean-pooled features)."""

    def __init__(self, encoder: TextEncoder, batch_size: int, gpu: bool) -> None:
        import dataclasses

        import torch

        int8 = any(isinstance(m, Int8Linear) for m in encoder.model.modules())  # runs on the CPU only
        if gpu and torch.cuda.is_available() and encoder.device.type == "cpu" and not int8:
            encoder = dataclasses.replace(encoder, model=encoder.model.to("cuda"), device=torch.device("cuda"))
        self.encoder, self.batch_size = encoder, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {"row": batch["row"], "vector": self.encoder.features(texts, self.batch_size)}


def encode_on_ray(
    encoder: TextEncoder, texts: list[str], batch_size: int, out: np.ndarray, engine: Engine
) -> np.ndarray:
    """Fill ``out`` (n, hidden) with the features of ``texts`` (as :meth:`TextEncoder.features`), on actors."""
    frame = pd.DataFrame({"row": np.arange(len(texts)), "text": pd.Series(texts, dtype=object).astype(str)})
    gpu = engine.compute.gpus_per_worker > 0
    return stream(frame, EncoderActor, (encoder, batch_size, gpu), batch_size, out, engine, "encode")


def stream(
    frame: pd.DataFrame, actor: type, args: tuple, batch_size: int, out: np.ndarray, engine: Engine, what: str
) -> np.ndarray:
    """``frame``'s rows through a pool of ``actor(*args)`` on Ray Data, each batch written into ``out`` by row."""
    import ray

    c = engine.compute
    blocks = [frame.iloc[a:b] for a, b in parts(len(frame), c.workers * BLOCKS_PER_WORKER)]
    vectors = ray.data.from_pandas(blocks).map_batches(
        actor,
        fn_constructor_args=args,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=c.workers),
        num_cpus=c.cpus_per_worker,
        num_gpus=c.gpus_per_worker,
    )
    meter = Progress(f"{what} (Ray Data, {c.workers} actors)", len(frame), "items")
    done = np.zeros(len(frame), dtype=bool)
    for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
        out[batch["row"]] = batch["vector"]
        done[batch["row"]] = True
        meter.advance(len(batch["row"]))
    meter.finish()
    if not done.all():
        raise RuntimeError(f"Ray Data returned vectors for {int(done.sum())} of {len(frame)} items")
    return out
