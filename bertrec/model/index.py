"""A FAISS index over the catalogue's item vectors (inner product on unit vectors = cosine).

The index type is a ``faiss.index_factory`` string from params (``index.factory``); ``auto`` picks
it by catalogue size (:func:`choose_factory`). At build time the index's search-time parameters
(HNSW ``efSearch``, IVF ``nprobe``, the refine factor) are raised step by step until recall@10
against exact search reaches :data:`RECALL_TARGET` on the query sample, which is the embed stage's
sample of user vectors (what the index serves) or, without one, a sample of item vectors. The
parameters and the recall are stored in ``index.json`` beside the index; :func:`read_index`
re-applies the parameters.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from bertrec.compute.engine import Engine
from bertrec.errors import DataError, MissingInputError
from bertrec.io import atomic_dir, recover_dir
from bertrec.progress import Progress

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"

K = 10
RECALL_TARGET = 0.95  # recall@10 against exact search that a chosen index must keep

FLAT_BELOW = 100_000  # auto: exact search below this many items, IVF-PQ from it (measured: see choose_factory)

# IVF: about IVF_LISTS_PER_ROOT * sqrt(n) lists, trained on a seeded sample.
IVF_LISTS_PER_ROOT = 2
TRAIN_PER_LIST = 64  # training rows per IVF list (faiss warns below 39)
TRAIN_MIN = 50_000  # training rows at least, whatever the lists (PQ codebooks)
REFINE_FACTOR = 8  # RFlat: candidates re-ranked exactly per result asked for
# faiss trains with many short parallel loops (k-means per PQ sub-quantizer): on 2 busy cores, two
# threads trained PQ64x4fs on 20k rows in 21-26 s against 0.4 s for one, IVF2048,PQ64x4fs on 131k
# rows in 14.6 s against 5.9 s. Training uses one thread; adding and searching use them all.
TRAIN_THREADS = 1

EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
ADD_CHUNK = 65_536  # vectors added per call, so a long build logs its progress
EXACT_QUERIES = 256  # queries per brute-force pass over the catalogue
QUERY_SEED = 0


@dataclass(frozen=True)
class IndexInfo:
    factory: str
    n_items: int
    dim: int
    recall_at_10: float  # against exact inner-product search, on `sample` queries
    sample: int
    queries: str = "items"  # users: the embed stage's user vectors (queries.npy); items: sampled item vectors
    search: dict[str, int] = field(default_factory=dict)  # search-time parameters, re-applied by read_index


def ivf_lists(n_items: int) -> int:
    """IVF lists for ``n_items``: a power of two near ``IVF_LISTS_PER_ROOT * sqrt(n)``."""
    return int(2 ** round(np.log2(max(IVF_LISTS_PER_ROOT * np.sqrt(n_items), 1.0))))


def ivf_pq_factory(n_items: int, dim: int) -> str:
    """IVF over ``ivf_lists(n_items)`` lists, 4-bit fast-scan PQ codes (one per dimension), exact re-ranking."""
    return f"IVF{ivf_lists(n_items)},PQ{dim}x4fs,RFlat"


def choose_factory(factory: str, n_items: int, dim: int) -> str:
    """The factory string for ``n_items`` vectors of ``dim``: ``factory`` itself unless it is ``auto``.

    ``auto`` is ``Flat`` (exact) below ``FLAT_BELOW`` items and :func:`ivf_pq_factory` from there.
    Measured with ``bench/index_scale.py`` (bench/reports/index_scale.md: 64-dim unit vectors,
    inner product, 1000 user-like queries, 2 shared cores): the QPS of each type at the first search
    setting with recall@10 >= 0.95, over exact search's, per CPU-second (wall clock in brackets),
    and its build seconds:

    ======  ===================  ==================  ==================  ===================
    items   HNSW32               IVF,Flat            IVF,SQ8,RFlat       IVF,PQ64x4fs,RFlat
    ======  ===================  ==================  ==================  ===================
    30k     7.7x (5.5x), 4 s     10.2x (8.8x), 0 s   4.7x (3.1x), 0 s    9.5x (5.1x), 1 s
    100k    10.6x (10.7x), 12 s  22.4x (17.2x), 1 s  12.5x (10.7x), 1 s  26.5x (17.0x), 2 s
    300k    24x (21x), 43 s      30x (26x), 3 s      29x (26x), 3 s      55x (42x), 5 s
    1M      34x (44x), 218 s     69x (69x), 15 s     75x (71x), 17 s     149x (119x), 21 s
    ======  ===================  ==================  ==================  ===================

    The crossover from ``Flat`` is where an approximate index first serves 10x the exact QPS:
    not yet at 30k (10x at best), well past it at 100k, so exact search (recall 1) is kept below
    100k. From 100k, IVF with fast-scan 4-bit PQ codes and exact re-ranking of ``8 x k`` candidates
    (``RFlat``, so the scores served are exact inner products) is the fastest to search (even with
    IVF,Flat at 100k, 2x it at 300k and 1M) and builds in seconds. HNSW32 was never the pick: the
    slowest to build at every size, slower to search, and with users who mix two tastes it needed
    ``efSearch`` 3-4 times larger for the same recall (bench/reports/index_scale_tastes2.md).
    """
    if factory != "auto":
        return factory
    return "Flat" if n_items < FLAT_BELOW else ivf_pq_factory(n_items, dim)


def train_sample(vectors: np.ndarray, index: faiss.Index, seed: int = 0) -> np.ndarray:
    """A seeded sample of rows to train ``index`` on: ``TRAIN_PER_LIST`` per IVF list, at least ``TRAIN_MIN``."""
    ivf = faiss.try_extract_index_ivf(index)
    rows = max(TRAIN_MIN, TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 0))
    if rows >= len(vectors):
        return vectors
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), size=rows, replace=False))
    return vectors[pick]


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """faiss's OpenMP threads set to ``n`` inside the block."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def trained_index(vectors: np.ndarray, factory: str) -> faiss.Index:
    """An empty inner-product index of ``factory``, trained (on :func:`train_sample`) when the type needs it."""
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        with omp_threads(TRAIN_THREADS):
            index.train(train_sample(vectors, index))
    return index


def build_index(vectors: np.ndarray, factory: str = "Flat", engine: Engine | None = None) -> faiss.Index:
    """An inner-product index over ``vectors`` (n, d), trained (on a sample) when the type needs it.

    With a distributed ``engine``, the trained index is filled in parts on its workers and merged
    (:mod:`bertrec.compute.index`): the same index as one process builds.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = trained_index(vectors, factory)
    if engine is not None and engine.name != "local":
        from bertrec.compute.index import fill_in_parts

        return fill_in_parts(index, vectors, engine)
    meter = Progress(f"index: add to {factory}", len(vectors), logger=log)
    for start in range(0, len(vectors), ADD_CHUNK):
        index.add(vectors[start : start + ADD_CHUNK])
        meter.advance(min(ADD_CHUNK, len(vectors) - start))
    meter.finish()
    return index


def search_ladder(index: faiss.Index) -> list[dict[str, int]]:
    """Search-time settings of ``index``, cheapest first; ``[{}]`` when it has none (Flat)."""
    inner = faiss.downcast_index(index)
    refine = {}
    if isinstance(inner, faiss.IndexRefine):
        refine = {"k_factor_rf": REFINE_FACTOR}
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexHNSW):
        return [{"efSearch": ef} for ef in EF_SEARCH]
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        steps = [p for p in NPROBE if p < ivf.nlist] + [ivf.nlist]
        return [{"nprobe": p, **refine} for p in steps]
    return [refine]


def apply_search(index: faiss.Index, search: dict[str, int]) -> None:
    """Set search-time parameters (``efSearch``, ``nprobe``, ``k_factor_rf``) on ``index``."""
    space = faiss.ParameterSpace()
    for name, value in search.items():
        space.set_index_parameter(index, name, value)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k (n_queries, k), best first, for checking an index.

    Brute force (``faiss.knn``), ``EXACT_QUERIES`` queries at a time: faiss scores the catalogue in
    blocks of a few MB, so no (queries, n_items) matrix is ever held. Ties come in any order.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), dtype=np.int64)
    meter = Progress("index: exact top-k", len(queries), unit="queries", logger=log)
    for start in range(0, len(queries), EXACT_QUERIES):
        block = queries[start : start + EXACT_QUERIES]
        out[start : start + len(block)] = faiss.knn(block, vectors, k, faiss.METRIC_INNER_PRODUCT)[1]
        meter.advance(len(block))
    meter.finish()
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found row ∩ truth row| / k over rows of (n_queries, k) ids."""
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found[:, :k], truth, strict=True)]))


def item_queries(vectors: np.ndarray, sample: int, seed: int = QUERY_SEED) -> np.ndarray:
    """A seeded sample of item vectors as queries: the fallback when there are no user vectors."""
    rows = np.random.default_rng(seed).choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    return vectors[rows]


def measure_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = K) -> float:
    """Recall@k of ``index`` against exact search over ``vectors``, for ``queries`` (n_queries, d)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    _, found = index.search(queries, k)
    return recall_at_k(found, exact_top(vectors, queries, k))


def tune_search(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float | None = None
) -> tuple[dict[str, int], float]:
    """The cheapest step of :func:`search_ladder` whose recall on ``queries`` reaches ``target``.

    ``truth`` is the exact top-k of ``queries``; ``target`` defaults to :data:`RECALL_TARGET`.
    Returns the step (applied to ``index``) and its recall; when no step reaches ``target``, the last one.
    """
    target = RECALL_TARGET if target is None else target
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    search, recall = {}, 0.0
    for search in search_ladder(index):
        apply_search(index, search)
        _, found = index.search(queries, truth.shape[1])
        recall = recall_at_k(found, truth)
        log.info("index: %s recall@%d %.4f", search or "exact", truth.shape[1], recall)
        if recall >= target:
            break
    return search, recall


def write_index(
    vectors: np.ndarray,
    folder: Path,
    factory: str = "auto",
    sample: int = 1000,
    queries: np.ndarray | None = None,
    engine: Engine | None = None,
) -> IndexInfo:
    """Build, tune, measure and write ``index.faiss`` and ``index.json`` into ``folder`` atomically.

    ``engine``: where the index is filled (:func:`build_index`).

    ``queries`` (n, d) are the user vectors recall is measured on (the first ``sample`` of them);
    without them (None or empty), ``sample`` item vectors are. When ``auto``'s choice cannot reach
    :data:`RECALL_TARGET`, the index is ``Flat``; an explicit factory is kept with its measured recall.

    Raises:
        DataError: ``queries`` of another dimension than ``vectors``.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if queries is not None and len(queries) and queries.shape[1] != vectors.shape[1]:
        raise DataError(f"user queries have {queries.shape[1]} dimensions, the item vectors {vectors.shape[1]}")
    if queries is not None and not len(queries):
        queries = None
    kind = "items" if queries is None else "users"
    queries = item_queries(vectors, sample) if queries is None else queries[:sample]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_top(vectors, queries, K)
    chosen = choose_factory(factory, len(vectors), vectors.shape[1])
    index = build_index(vectors, chosen, engine)
    search, recall = tune_search(index, queries, truth)
    if recall < RECALL_TARGET and factory == "auto" and chosen != "Flat":
        log.warning("index: %s reaches recall@%d %.4f < %.2f; using Flat", chosen, K, recall, RECALL_TARGET)
        chosen, index = "Flat", build_index(vectors, "Flat", engine)
        search, recall = tune_search(index, queries, truth)
    elif recall < RECALL_TARGET:
        log.warning("index: %s reaches recall@%d %.4f only (target %.2f)", chosen, K, recall, RECALL_TARGET)
    info = IndexInfo(chosen, len(vectors), vectors.shape[1], recall, len(queries), kind, search)
    with atomic_dir(folder) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def read_index(folder: Path) -> tuple[faiss.Index, IndexInfo]:
    """The index of ``folder`` with its search-time parameters applied, and its info."""
    folder = Path(folder)
    recover_dir(folder)
    if not (folder / INDEX_FILE).exists():
        raise MissingInputError(f"{folder / INDEX_FILE} not found; run `bertrec index` first")
    info = IndexInfo(**json.loads((folder / INFO_FILE).read_text()))
    index = faiss.read_index(str(folder / INDEX_FILE))
    apply_search(index, info.search)
    return index, info
