"""A FAISS index over the catalogue's item vectors (inner product on unit vectors = cosine).

The index type is a ``faiss.index_factory`` string from params (``index.factory``): ``Flat``
(exact) by default; ``HNSW32`` or ``IVF1024,PQ32`` for catalogues in the hundreds of thousands.
At build time the index's recall@10 against exact search is measured on a sample of queries and
stored beside it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from bertrec.errors import MissingInputError
from bertrec.io import atomic_dir, recover_dir

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"


@dataclass(frozen=True)
class IndexInfo:
    factory: str
    n_items: int
    dim: int
    recall_at_10: float  # against exact inner-product search, on sampled item vectors as queries
    sample: int


def choose_factory(factory: str, n_items: int) -> str:
    """``auto``: exact below 100k items, HNSW32 above."""
    if factory != "auto":
        return factory
    return "Flat" if n_items < 100_000 else "HNSW32"


def build_index(vectors: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """An inner-product index over ``vectors`` (n, d), trained when the type needs it."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k (n_queries, k), ties by index, for checking an index."""
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def measure_recall(index: faiss.Index, vectors: np.ndarray, sample: int = 1000, k: int = 10, seed: int = 0) -> float:
    """Mean |index top-k ∩ exact top-k| / k over a sample of item vectors used as queries."""
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)].astype(np.float32)
    k = min(k, len(vectors))
    _, found = index.search(queries, k)
    truth = exact_top(vectors.astype(np.float32), queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def write_index(vectors: np.ndarray, folder: Path, factory: str = "auto", sample: int = 1000) -> IndexInfo:
    """Build, measure and write ``index.faiss`` and ``index.json`` into ``folder`` atomically."""
    chosen = choose_factory(factory, len(vectors))
    index = build_index(vectors, chosen)
    info = IndexInfo(
        chosen, len(vectors), vectors.shape[1], measure_recall(index, vectors, sample), min(sample, len(vectors))
    )
    with atomic_dir(folder) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def read_index(folder: Path) -> tuple[faiss.Index, IndexInfo]:
    folder = Path(folder)
    recover_dir(folder)
    if not (folder / INDEX_FILE).exists():
        raise MissingInputError(f"{folder / INDEX_FILE} not found; run `bertrec index` first")
    info = IndexInfo(**json.loads((folder / INFO_FILE).read_text()))
    return faiss.read_index(str(folder / INDEX_FILE)), info
