"""The catalogue's vectors on disk: the bundle's ``embeddings/`` part, written by `embed`, read by `index` and serving.

float16, unit norm for a cosine model (as they came for a dot-product one), with the map from row to
item id and the throughput they were encoded at.
Needs no torch, so the steps that only read vectors start fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bertrec.errors import MissingInputError
from bertrec.io import atomic_dir, atomic_file, recover_dir
from bertrec.model.layout import EMBEDDINGS, MODEL

VECTORS = "vectors.npy"
STATS_FILE = "embeddings.json"  # how many, how fast, on which device
QUERIES = "queries.npy"  # user vectors of a seeded sample of training users: the index's recall queries


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
        _write_rest(tmp, items, stats)
    return target


def stream_embeddings(
    items: pd.DataFrame, bundle: Path, dim: int, fill: Callable[[np.ndarray], EmbedStats]
) -> tuple[Path, EmbedStats]:
    """``bundle/embeddings`` as :func:`write_embeddings` writes it, the vectors filled in place.

    ``fill`` writes the (len(items), dim) vectors into the float16 memmap it is given (the final
    ``vectors.npy``, inside the temporary folder) and returns their stats; nothing is replaced
    unless it returns.
    """
    target = Path(bundle) / EMBEDDINGS
    with atomic_dir(target) as tmp:
        out = np.lib.format.open_memmap(tmp / VECTORS, mode="w+", dtype=np.float16, shape=(len(items), dim))
        stats = fill(out)
        out.flush()
        del out
        _write_rest(tmp, items, stats)
    return target, stats


def _write_rest(folder: Path, items: pd.DataFrame, stats: EmbedStats) -> None:
    items[["item_idx", "item_id"]].to_parquet(folder / "items.parquet", index=False)
    (folder / STATS_FILE).write_text(json.dumps(asdict(stats), indent=2) + "\n")


def read_embeddings(bundle: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Vectors as float32 (a cosine model's re-normalised after the float16 round trip) and the id map."""
    folder = Path(bundle) / EMBEDDINGS
    recover_dir(folder)
    if not (folder / VECTORS).exists():
        raise MissingInputError(f"{folder / VECTORS} not found; run `bertrec embed` first")
    vectors = np.load(folder / VECTORS).astype(np.float32)
    if unit_norm(bundle):
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors, pd.read_parquet(folder / "items.parquet")


def unit_norm(bundle: Path) -> bool:
    """Whether the bundle's vectors are unit norm: one cosine model (bundles from before ``score``: yes).

    An ensemble's vectors are its members' concatenated, which normalising would rescale.
    """
    tower = Path(bundle) / MODEL / "tower.json"
    if not tower.exists():
        return True
    config = json.loads(tower.read_text())
    return config.get("score", "cosine") == "cosine" and config.get("ensemble", 1) == 1


def write_queries(queries: np.ndarray, bundle: Path) -> Path:
    """``bundle/embeddings/queries.npy``: user vectors (n, dim), float32, written atomically."""
    path = Path(bundle) / EMBEDDINGS / QUERIES
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(queries, dtype=np.float32))
    return path


def read_queries(bundle: Path) -> np.ndarray | None:
    """The user vectors `embed` sampled for the index's recall: (n, dim) float32; None when there are none."""
    path = Path(bundle) / EMBEDDINGS / QUERIES
    return np.load(path).astype(np.float32) if path.exists() else None
