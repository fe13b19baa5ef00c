"""The `embed` step: every catalogue item's vector, from its text, through the trained item tower.

Texts are encoded in length-sorted batches under ``torch.inference_mode()``; vectors are unit norm
and stored as float16 with the map from row to item id. Items/second is measured and saved.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bertrec.errors import MissingInputError
from bertrec.io import atomic_dir
from bertrec.model.bundle import EMBEDDINGS
from bertrec.model.scorer import TowerScorer

VECTORS = "vectors.npy"


@dataclass(frozen=True)
class EmbedStats:
    n_items: int
    dim: int
    seconds: float
    items_per_second: float
    device: str


@torch.inference_mode()
def encode_items(
    scorer: TowerScorer, texts: list[str], items: np.ndarray, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """Item-tower vectors (n, dim), float32, unit norm, for ``items`` with ``texts`` (text read afresh).

    Items beyond the trained catalogue (new items) get their text part only.
    """
    scorer.model.eval()
    out = np.empty((len(texts), scorer.model.config.dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    uses_text = scorer.model.items.use_text
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embed", unit="batch", disable=not progress or len(starts) < 2):
        idx = order[start : start + batch_size]
        text = None
        if uses_text:
            text = scorer.text_features.encoder.forward(scorer.text_features.encoder.tokenize([texts[i] for i in idx]))
        ids = torch.as_tensor(items[idx], device=scorer.device)
        out[idx] = scorer.model.items(text, ids).float().cpu().numpy()
    return out


def embed_catalogue(scorer: TowerScorer, items: pd.DataFrame, batch_size: int = 256) -> tuple[np.ndarray, EmbedStats]:
    """Vectors of the whole catalogue, with the measured throughput."""
    began = time.perf_counter()
    vectors = encode_items(scorer, items["text"].tolist(), items["item_idx"].to_numpy(), batch_size)
    seconds = time.perf_counter() - began
    stats = EmbedStats(len(items), vectors.shape[1], seconds, len(items) / max(seconds, 1e-9), str(scorer.device))
    return vectors, stats


def write_embeddings(vectors: np.ndarray, items: pd.DataFrame, bundle: Path, stats: EmbedStats) -> Path:
    """``bundle/embeddings``: float16 vectors, the id map, and the stats; atomically."""
    target = Path(bundle) / EMBEDDINGS
    with atomic_dir(target) as tmp:
        np.save(tmp / VECTORS, vectors.astype(np.float16))
        items[["item_idx", "item_id"]].to_parquet(tmp / "items.parquet", index=False)
        (tmp / "embeddings.json").write_text(json.dumps(asdict(stats), indent=2) + "\n")
    return target


def read_embeddings(bundle: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Vectors as float32 (re-normalised after the float16 round trip) and the id map."""
    folder = Path(bundle) / EMBEDDINGS
    if not (folder / VECTORS).exists():
        raise MissingInputError(f"{folder / VECTORS} not found; run `bertrec embed` first")
    vectors = np.load(folder / VECTORS).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, pd.read_parquet(folder / "items.parquet")
