"""A bundle with items added: the same weights, a larger catalogue, written as a new bundle.

New items are placed from their text alone (:meth:`bertrec.serve.recommender.Recommender.add_items`:
the item tower's text part, no ID embedding, the penalty re-ranking charges an item without
interactions), as `embed` and `index` would place an item nobody has interacted with. Every part
that lists the catalogue grows by their rows: the item table, the frozen encoder's text features,
the penalty, the vectors and their id map, the FAISS index (the new vectors added to the trained
index, its recall@10 measured again).
Everything else (towers, encoder or its reference, histories, training record, user queries) is
copied as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from bertrec.io import atomic_dir
from bertrec.model.bundle import ITEM_COLUMNS, PENALTY, TEXT_FEATURES
from bertrec.model.index import INDEX_FILE, INFO_FILE, K, item_queries, measure_recall, read_index
from bertrec.model.layout import EMBEDDINGS, INDEX, MODEL
from bertrec.model.vectors import STATS_FILE, VECTORS, EmbedStats, read_embeddings, read_queries
from bertrec.serve.recommender import Recommender


def extend_bundle(source: Path, target: Path, new_items: pd.DataFrame, device: str = "auto") -> int:
    """Write at ``target`` (atomically) the bundle at ``source`` with ``new_items`` added; returns the count.

    ``new_items`` has ``item_id``, ``text`` and optionally ``title``.

    Raises:
        ServingError: an id already in the catalogue or repeated, an empty text, or a bundle whose
            item tower reads ids only; nothing is written then.
    """
    source, target = Path(source), Path(target)
    recommender = Recommender(source, device)
    before = len(recommender.item_ids)
    began = time.perf_counter()
    recommender.add_items(new_items)
    seconds = time.perf_counter() - began
    added = len(recommender.item_ids) - before
    texts = recommender.items["text"].astype(str).tolist()[before:]
    with atomic_dir(target) as tmp:
        model = tmp / MODEL
        shutil.copytree(source / MODEL, model)
        columns = [c for c in ITEM_COLUMNS if c in recommender.items.columns]
        recommender.items[columns].to_parquet(model / "items.parquet", index=False)
        if (source / MODEL / TEXT_FEATURES).exists():
            features = recommender.scorer.text_features
            table = np.load(source / MODEL / TEXT_FEATURES, mmap_mode="r")  # (before, hidden) float16
            fresh = features.raw_features(texts).astype(np.float16)  # (added, hidden)
            np.save(model / TEXT_FEATURES, np.concatenate([np.asarray(table), fresh]))
        if recommender.scorer.penalty is not None:
            np.save(model / PENALTY, np.asarray(recommender.scorer.penalty, dtype=np.float32))
        _write_embeddings(source, tmp, recommender, before, seconds)
        _write_index(source, tmp, before)
    return added


def _write_embeddings(source: Path, bundle: Path, recommender: Recommender, before: int, seconds: float) -> None:
    """``bundle/embeddings``: the source's float16 vectors and the new ones, the id map, the stats, the queries."""
    folder = bundle / EMBEDDINGS
    shutil.copytree(source / EMBEDDINGS, folder)
    stored = np.load(source / EMBEDDINGS / VECTORS)  # (before, dim) float16, as embed wrote them
    new = recommender.vectors[before:].astype(np.float16)  # (added, dim)
    np.save(folder / VECTORS, np.concatenate([stored, new]))
    recommender.items[["item_idx", "item_id"]].to_parquet(folder / "items.parquet", index=False)
    stats = json.loads((source / EMBEDDINGS / STATS_FILE).read_text())
    added = len(new)
    fresh = EmbedStats(
        before + added, new.shape[1], round(seconds, 3), round(added / max(seconds, 1e-9), 1), stats["device"]
    )
    (folder / STATS_FILE).write_text(json.dumps(asdict(fresh), indent=2) + "\n")


def _write_index(source: Path, bundle: Path, before: int) -> None:
    """``bundle/index``: the source's trained index with the new vectors added (as served: float16, renormalised)."""
    index, info = read_index(source / INDEX)
    vectors, _ = read_embeddings(bundle)  # (n, dim) float32, exactly what `bertrec index` would read
    index.add(np.ascontiguousarray(vectors[before:]))
    queries = read_queries(bundle)
    queries = item_queries(vectors, info.sample) if queries is None or not len(queries) else queries[: info.sample]
    recall = measure_recall(index, vectors, queries, K)
    folder = bundle / INDEX
    folder.mkdir()
    faiss.write_index(index, str(folder / INDEX_FILE))
    grown = replace(info, n_items=len(vectors), recall_at_10=recall, sample=len(queries))
    (folder / INFO_FILE).write_text(json.dumps(asdict(grown), indent=2) + "\n")
