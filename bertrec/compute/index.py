"""The `index` stage on a cluster: a trained index filled in parts on the workers, merged into one.

The index is trained once, on the driver, on the same seeded sample as a local build. Its trained,
empty form and the vectors go to the object store once; each worker adds one contiguous part of
the vectors and sends back its part as a serialized index; the driver merges the parts in order
(IVF lists with ids shifted by the rows before them; flat codes appended). Codes and ids are those
of a local build, so the merged index answers every search as the local one does. A ``RFlat``
re-ranking layer keeps the raw vectors, which the driver adds itself (a copy, no computation).
``Flat`` (a copy of the vectors) and types that cannot merge (HNSW) are filled on the driver, and the
log says so.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from bertrec.compute.engine import Engine
from bertrec.progress import Progress

log = logging.getLogger(__name__)


def _coarse(index: faiss.Index) -> faiss.Index:
    """The part of ``index`` that holds codes: the base of a re-ranking index, else the index itself."""
    outer = faiss.downcast_index(index)
    return faiss.downcast_index(outer.base_index) if isinstance(outer, faiss.IndexRefine) else outer


def mergeable(index: faiss.Index) -> bool:
    """Whether filling ``index`` in parts pays: IVF lists, or encoded flat codes (PQ, SQ).

    ``Flat`` keeps the vectors as they are (adding them is a copy, nothing to compute): it is
    filled on the driver.
    """
    base = _coarse(index)
    if faiss.try_extract_index_ivf(base) is not None:
        return True
    return isinstance(base, faiss.IndexFlatCodes) and not isinstance(base, faiss.IndexFlat)


def _fill_part(shared: tuple[bytes, np.ndarray], part: tuple[int, int]) -> bytes:
    """On a worker: the trained empty index with vectors ``part`` added, serialized."""
    empty, vectors = shared
    whole = faiss.deserialize_index(np.frombuffer(empty, dtype=np.uint8))
    base = _coarse(whole)
    start, stop = part
    base.add(np.ascontiguousarray(vectors[start:stop]))
    return faiss.serialize_index(base).tobytes()


def fill_in_parts(index: faiss.Index, vectors: np.ndarray, engine: Engine) -> faiss.Index:
    """``index`` (trained, empty) with every row of ``vectors`` added, the adding done by ``engine``'s workers."""
    if not mergeable(index):
        kind = type(faiss.downcast_index(index)).__name__
        log.info("index: %s is filled on the driver (a copy of the vectors, or a type that cannot merge)", kind)
        index.add(vectors)
        return index
    outer, base = faiss.downcast_index(index), _coarse(index)
    shared = engine.put((faiss.serialize_index(base).tobytes(), vectors))
    ranges = engine.parts(len(vectors))
    meter = Progress(f"index: merge {len(ranges)} parts", len(vectors), logger=log)
    for (start, stop), blob in zip(ranges, engine.map(_fill_part, shared, ranges), strict=True):
        part = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        base.merge_from(part, 0 if isinstance(base, faiss.IndexFlatCodes) else base.ntotal)
        meter.advance(stop - start)
    meter.finish()
    if isinstance(outer, faiss.IndexRefine):
        outer.refine_index.add(vectors)
        outer.ntotal = base.ntotal
    return index
