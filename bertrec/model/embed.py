"""Every catalogue item's vector, from its text, through the trained item tower.

Texts are encoded in length-sorted batches under ``torch.inference_mode()``, each batch written into
the output array as it is done (a float16 memmap keeps a large catalogue off the heap), with
progress in the log; vectors are unit norm. Items/second is measured. :mod:`bertrec.model.vectors`
stores them.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from bertrec.compute.engine import Engine
from bertrec.model.scorer import TowerScorer
from bertrec.model.vectors import EmbedStats
from bertrec.progress import EVERY_S, Progress
from bertrec.ranking.scoring import Histories


@torch.inference_mode()
def encode_items(
    scorer: TowerScorer,
    texts: list[str],
    items: np.ndarray,
    batch_size: int = 256,
    progress: bool = True,
    out: np.ndarray | None = None,
    every: float = EVERY_S,
) -> np.ndarray:
    """Item-tower vectors (n, dim), unit norm, for ``items`` with ``texts`` (text read afresh).

    Items beyond the trained catalogue (new items) get their text part only. Each batch is written
    into ``out`` (default: a new float32 array), which is returned; ``progress`` logs the count,
    rate and ETA every ``every`` seconds.
    """
    scorer.model.eval()
    if out is None:
        out = np.empty((len(texts), scorer.model.config.dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    uses_text = scorer.model.items.use_text
    meter = Progress("embed", len(texts), "items", every) if progress else None
    for start in range(0, len(texts), batch_size):
        idx = np.sort(order[start : start + batch_size])  # rows in file order: fewer pages touched
        text = None
        if uses_text:
            encoder = scorer.text_features.encoder
            text = encoder.forward(encoder.tokenize([texts[i] for i in idx]))
        ids = torch.as_tensor(items[idx], device=scorer.device)
        out[idx] = scorer.model.items(text, ids).float().cpu().numpy()
        if meter is not None:
            meter.advance(len(idx))
    if meter is not None:
        meter.finish()
    return out


@torch.inference_mode()
def tower_items(
    scorer: TowerScorer, items: np.ndarray, batch_size: int = 8192, out: np.ndarray | None = None
) -> np.ndarray:
    """Item-tower vectors (n, dim), unit norm, of catalogue ``items`` from the frozen text features the model holds.

    With a frozen encoder the bundle's features are the encoder's output for these very texts, so the
    catalogue is not read through the encoder again: only the item tower runs.
    """
    scorer.model.eval()
    if out is None:
        out = np.empty((len(items), scorer.model.config.dim), dtype=np.float32)
    meter = Progress("embed (frozen features)", len(items), "items")
    for start in range(0, len(items), batch_size):
        ids = torch.tensor(items[start : start + batch_size], dtype=torch.int64, device=scorer.device)  # a copy
        out[start : start + len(ids)] = scorer.item_vectors(ids).float().cpu().numpy()
        meter.advance(len(ids))
    meter.finish()
    return out


def reads_features(scorer: TowerScorer, n_items: int) -> bool:
    """Whether the catalogue of ``n_items`` is embedded from the model's frozen features (no encoder pass)."""
    features = scorer.text_features
    return features is not None and features.table is not None and len(features.table) == n_items


def item_part(
    scorer: TowerScorer,
    texts: list[str],
    items: np.ndarray,
    batch_size: int,
    frozen: bool,
    out: np.ndarray | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Vectors of ``items`` (part of the catalogue, or all of it): by :func:`tower_items` when ``frozen``.

    Otherwise the texts go through the encoder (:func:`encode_items`).
    """
    if frozen:
        return tower_items(scorer, items, out=out)
    return encode_items(scorer, texts, items, batch_size, progress, out)


def embed_catalogue(
    scorer: TowerScorer,
    items: pd.DataFrame,
    batch_size: int = 256,
    out: np.ndarray | None = None,
    engine: Engine | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors of the whole catalogue (written into ``out`` when given, e.g. a float16 memmap), with the throughput.

    With a Ray ``engine`` the catalogue goes through Ray Data (:mod:`bertrec.compute.embed`); the
    vectors are those of this process, part by part.
    """
    began = time.perf_counter()
    frozen = reads_features(scorer, len(items))
    if engine is not None and engine.name == "ray":
        from bertrec.compute.embed import embed_on_ray

        if out is None:
            out = np.empty((len(items), scorer.model.config.dim), dtype=np.float32)
        vectors, device = embed_on_ray(scorer, items, batch_size, frozen, out, engine), engine.where()
    else:
        vectors, device = (
            item_part(scorer, items["text"].tolist(), items["item_idx"].to_numpy(), batch_size, frozen, out),
            str(scorer.device),
        )
    seconds = time.perf_counter() - began
    stats = EmbedStats(len(items), vectors.shape[1], seconds, len(items) / max(seconds, 1e-9), device)
    return vectors, stats


def sample_histories(train: pd.DataFrame, n: int, seed: int) -> Histories:
    """Training histories of ``n`` users (seeded draw, in user order) among those with a training row."""
    users = np.unique(train["user_idx"].to_numpy())
    picked = np.sort(np.random.default_rng(seed).choice(users, size=min(n, len(users)), replace=False))
    return Histories.from_frame(train, picked)


@torch.inference_mode()
def encode_users(scorer: TowerScorer, histories: Histories, vectors: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """User vectors (n_users, dim), float32, of ``histories`` over the stored item ``vectors``, as served."""
    scorer.model.eval()
    table = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(scorer.device)  # (n_items, dim)
    parts = [
        scorer.user_vectors_for(histories.slice(s, min(s + batch_size, len(histories))), table).float().cpu().numpy()
        for s in range(0, len(histories), batch_size)
    ]
    return np.concatenate(parts) if parts else np.empty((0, table.shape[1]), dtype=np.float32)
