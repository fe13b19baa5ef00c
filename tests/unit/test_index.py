"""FAISS: Flat equals exact search; recall is measured against exact search."""

from __future__ import annotations

import numpy as np

from bertrec.model.index import build_index, choose_factory, exact_top, measure_recall, read_index, write_index


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_flat_results_equal_exact_search():
    vectors, queries = unit_vectors(500, 16), unit_vectors(50, 16, seed=1)
    _, found = build_index(vectors, "Flat").search(queries, 10)
    assert np.array_equal(found, exact_top(vectors, queries, 10))


def test_recall_is_one_for_flat_and_measured_for_hnsw(tmp_path):
    vectors = unit_vectors(2000, 16)
    assert measure_recall(build_index(vectors, "Flat"), vectors, sample=200) == 1.0
    info = write_index(vectors, tmp_path / "index", "HNSW32", sample=200)
    index, saved = read_index(tmp_path / "index")
    assert saved == info and index.ntotal == 2000
    assert 0.5 < info.recall_at_10 <= 1.0


def test_auto_factory_is_exact_below_100k_items():
    assert choose_factory("auto", 1682) == "Flat"
    assert choose_factory("auto", 250_000) == "HNSW32"
    assert choose_factory("IVF64,Flat", 10) == "IVF64,Flat"
