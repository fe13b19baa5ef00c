"""The catalogue's vectors on disk: the bundle's ``embeddings/`` part, written by `embed`, read by `index` and serving.

float16, unit norm, with the map from row to item id and the throughput they were encoded at.
Needs no torch, so the steps that only read vectors start fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bertrec.errors import MissingInputError
from bertrec.io import atomic_dir, recover_dir
from bertrec.model.layout import EMBEDDINGS

VECTORS = "vectors.npy"
STATS_FILE = "embeddings.json"  # how many, how fast, on which device


@dataclass(frozen=True)
class EmbedStats:
    n_items: int
    dim: int
    seconds: float
    items_per_second: float
    device: str


def write_embeddings(vectors: np.ndarray, items: pd.DataFrame, bundle: Path, stats: EmbedStats) -> Path:
    """``bundle/embeddings``: float16 vectors, the id map, and the stats; atomically."""
    target = Path(bundle) / EMBEDDINGS
    with atomic_dir(target) as tmp:
        np.save(tmp / VECTORS, vectors.astype(np.float16))
        items[["item_idx", "item_id"]].to_parquet(tmp / "items.parquet", index=False)
        (tmp / STATS_FILE).write_text(json.dumps(asdict(stats), indent=2) + "\n")
    return target


def read_embeddings(bundle: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Vectors as float32 (re-normalised after the float16 round trip) and the id map."""
    folder = Path(bundle) / EMBEDDINGS
    recover_dir(folder)
    if not (folder / VECTORS).exists():
        raise MissingInputError(f"{folder / VECTORS} not found; run `bertrec embed` first")
    vectors = np.load(folder / VECTORS).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, pd.read_parquet(folder / "items.parquet")
