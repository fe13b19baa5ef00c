"""FAISS: Flat equals exact search; auto picks the type by size; search settings are tuned to recall and kept."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

import bertrec.model.index as idx
from bertrec.config import load_params
from bertrec.errors import DataError
from bertrec.model.embed import encode_users, sample_histories
from bertrec.model.index import (
    INDEX_FILE,
    RECALL_TARGET,
    build_index,
    choose_factory,
    exact_top,
    item_queries,
    ivf_lists,
    measure_recall,
    read_index,
    recall_at_k,
    write_index,
)
from bertrec.model.scorer import TowerScorer
from bertrec.model.towers import TowerConfig, TwoTower
from bertrec.model.vectors import EmbedStats, read_queries, write_embeddings, write_queries
from bertrec.ranking.scoring import Histories
from bertrec.steps.index import run as run_index


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, d)))


def clustered(n: int, d: int = 32, clusters: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit item vectors around ``clusters`` centres, and user queries: noisy means of 4 items of one cluster."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, d)))
    labels = rng.integers(clusters, size=n)
    items = unit(centres[labels] + rng.normal(size=(n, d)) / np.sqrt(d))
    picks = [rng.choice(np.flatnonzero(labels == c), size=4) for c in rng.integers(clusters, size=300)]
    users = unit(np.stack([items[p].mean(axis=0) for p in picks]) + 0.3 * rng.normal(size=(300, d)) / np.sqrt(d))
    return items, users


def reference_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The slow obvious exact top-k: every score, fully sorted."""
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_exact_top_in_blocks_equals_the_full_sort(monkeypatch):
    # Given more queries than one block holds
    monkeypatch.setattr(idx, "EXACT_QUERIES", 7)
    vectors, queries = unit_vectors(500, 16), unit_vectors(50, 16, seed=1)
    # Then the blocked brute force equals sorting every score
    assert np.array_equal(exact_top(vectors, queries, 10), reference_top(vectors, queries, 10))
    assert np.array_equal(exact_top(vectors[:5], queries, 10), reference_top(vectors[:5], queries, 5))


def test_flat_results_equal_exact_search():
    vectors, queries = unit_vectors(500, 16), unit_vectors(50, 16, seed=1)
    _, found = build_index(vectors, "Flat").search(queries, 10)
    assert np.array_equal(found, reference_top(vectors, queries, 10))
    assert measure_recall(build_index(vectors, "Flat"), vectors, queries) == 1.0


def test_recall_at_k_counts_the_shared_ids():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(np.array([[4, 3, 9, 9], [5, 6, 7, 8]]), truth) == (0.5 + 1.0) / 2


def test_auto_is_exact_below_the_crossover_and_ivf_pq_from_it():
    # Below the measured crossover the index is exact
    assert choose_factory("auto", 1682, 64) == choose_factory("auto", idx.FLAT_BELOW - 1, 64) == "Flat"
    # from it, IVF with fast-scan PQ codes (one per dimension) and exact re-ranking, its lists growing with sqrt(n)
    assert choose_factory("auto", idx.FLAT_BELOW, 64) == f"IVF{ivf_lists(idx.FLAT_BELOW)},PQ64x4fs,RFlat"
    assert choose_factory("auto", 1_000_000, 32) == "IVF2048,PQ32x4fs,RFlat"
    assert ivf_lists(100_000) == 512 and ivf_lists(300_000) == 1024
    # an explicit factory is kept as it is
    assert choose_factory("HNSW32", 1_000_000, 64) == "HNSW32"
    assert choose_factory("IVF64,Flat", 10, 64) == "IVF64,Flat"


def test_recall_is_measured_on_user_queries_when_given(tmp_path):
    # Given item vectors and a sample of user vectors
    items, users = clustered(3000)
    # When the index is written with the user vectors (more than the sample asks for)
    info = write_index(items, tmp_path / "index", "IVF32,Flat", sample=200, queries=users)
    index, saved = read_index(tmp_path / "index")
    # Then recall was measured on the first 200 user vectors, and says so
    assert saved == info and info.queries == "users" and info.sample == 200
    assert info.recall_at_10 == measure_recall(index, items, users[:200]) >= RECALL_TARGET


def test_recall_falls_back_to_item_queries_without_users(tmp_path):
    items, _ = clustered(3000)
    info = write_index(items, tmp_path / "index", "IVF32,Flat", sample=150)
    index, _ = read_index(tmp_path / "index")
    assert info.queries == "items" and info.sample == 150
    assert info.recall_at_10 == measure_recall(index, items, item_queries(items, 150)) >= RECALL_TARGET


@pytest.mark.parametrize(("factory", "name"), [("HNSW32", "efSearch"), ("IVF64,Flat", "nprobe")])
def test_search_settings_are_tuned_and_persist_through_write_and_read(tmp_path, factory, name):
    # Given an approximate index written by the stage
    items, users = clustered(4000)
    info = write_index(items, tmp_path / "index", factory, sample=300, queries=users)
    assert set(info.search) == {name} and info.recall_at_10 >= RECALL_TARGET
    # Then faiss's own file keeps the tuned setting
    raw = faiss.read_index(str(tmp_path / "index" / INDEX_FILE))
    assert setting(raw, name) == info.search[name]
    # and read_index applies the one in index.json even when the file holds another
    faiss.ParameterSpace().set_index_parameter(raw, name, 1)
    faiss.write_index(raw, str(tmp_path / "index" / INDEX_FILE))
    index, saved = read_index(tmp_path / "index")
    assert setting(index, name) == saved.search[name] == info.search[name]


def setting(index: faiss.Index, name: str) -> int:
    inner = faiss.downcast_index(index)
    return inner.hnsw.efSearch if name == "efSearch" else faiss.extract_index_ivf(inner).nprobe


def test_refined_ivf_pq_tunes_nprobe_and_keeps_its_refine_factor(tmp_path):
    items, users = clustered(4000)
    info = write_index(items, tmp_path / "index", "IVF64,PQ16x4fs,RFlat", sample=300, queries=users)
    assert info.search["k_factor_rf"] == idx.REFINE_FACTOR and info.recall_at_10 >= RECALL_TARGET
    index, _ = read_index(tmp_path / "index")
    assert faiss.downcast_index(index).k_factor == idx.REFINE_FACTOR
    assert faiss.extract_index_ivf(faiss.downcast_index(index).base_index).nprobe == info.search["nprobe"]


def test_auto_ivf_pq_at_small_size_reaches_the_recall_target_on_clustered_data(tmp_path, monkeypatch):
    # Given auto's crossover moved down to a small catalogue of clustered vectors
    monkeypatch.setattr(idx, "FLAT_BELOW", 100)
    items, users = clustered(8000, d=64, clusters=200)
    # When the stage writes the index
    info = write_index(items, tmp_path / "index", "auto", sample=300, queries=users)
    # Then it is the IVF-PQ type, tuned to the target without probing every list
    assert info.factory == choose_factory("auto", 8000, 64) == "IVF128,PQ64x4fs,RFlat"
    assert info.recall_at_10 >= RECALL_TARGET and info.search["nprobe"] < ivf_lists(8000)
    assert info.search["k_factor_rf"] == idx.REFINE_FACTOR


def test_auto_falls_back_to_flat_when_no_setting_reaches_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FLAT_BELOW", 100)
    monkeypatch.setattr(idx, "RECALL_TARGET", 1.01)  # unreachable by any approximate index
    items, users = clustered(2000)
    info = write_index(items, tmp_path / "index", "auto", sample=100, queries=users)
    assert info.factory == "Flat" and info.recall_at_10 == 1.0 and info.search == {}
    # an explicit factory is kept, with the recall it reached
    assert write_index(items, tmp_path / "hnsw", "HNSW32", sample=100, queries=users).factory == "HNSW32"


def test_flat_and_hnsw_written_and_read_back(tmp_path):
    vectors = unit_vectors(2000, 16)
    assert write_index(vectors, tmp_path / "flat", "auto", sample=200).recall_at_10 == 1.0
    info = write_index(vectors, tmp_path / "index", "HNSW32", sample=200)
    index, saved = read_index(tmp_path / "index")
    assert saved == info and index.ntotal == 2000
    assert RECALL_TARGET <= info.recall_at_10 <= 1.0


def test_index_stage_uses_the_embed_stage_user_vectors_when_present(tmp_path):
    # Given a bundle's item vectors, at first without user vectors
    p = load_params(tmp_path / "absent.yaml", [f"paths.bundle={tmp_path / 'bundle'}", "index.recall_sample=100"])
    items, users = clustered(2000)
    frame = pd.DataFrame({"item_idx": np.arange(2000), "item_id": np.arange(2000).astype(str)})
    write_embeddings(items, frame, p.paths.bundle, EmbedStats(2000, items.shape[1], 1.0, 2000.0, "cpu"))
    # Then recall is measured on item vectors, and the summary says so
    first = run_index(p)
    assert first.info.queries == "items" and "on 100 queries (items)" in first.summary()
    # When the embed stage's queries.npy is there, recall is measured on (the first 100 of) them
    write_queries(users, p.paths.bundle)
    second = run_index(p).info
    assert second.queries == "users" and second.sample == 100 and second.factory == "Flat"
    assert np.allclose(read_queries(p.paths.bundle), users)


def test_the_user_sample_is_seeded_and_drawn_from_users_with_training_rows():
    train = pd.DataFrame(
        {"user_idx": [0, 0, 0, 2, 2, 5, 7, 7], "item_idx": [3, 1, 2, 4, 0, 1, 2, 3], "seq": [2, 0, 1, 0, 1, 0, 1, 0]}
    )
    sample, again = sample_histories(train, 3, seed=4), sample_histories(train, 3, seed=4)
    assert len(sample) == 3 and np.array_equal(sample.items, again.items)
    assert np.array_equal(sample.indptr, again.indptr)
    assert len(sample_histories(train, 99, seed=0)) == 4  # every user that has a training row, no more
    whole = sample_histories(train, 4, seed=0)
    assert whole[0].tolist() == [1, 2, 3] and whole[3].tolist() == [3, 2]  # ordered by seq


def test_user_vectors_of_the_sample_are_those_serving_computes_in_any_batch_size():
    # Given a small id-only two-tower model and stored item vectors
    torch.manual_seed(0)
    config = TowerConfig(
        n_items=12, text_dim=1, dim=16, item_repr="id", user_encoder="sequence", max_history=6, layers=1, heads=2,
        dropout=0.0, temperature=0.1,
    )  # fmt: skip
    scorer = TowerScorer(
        TwoTower(config), None, np.array([f"t{i}" for i in range(12)], dtype=object), torch.device("cpu")
    )
    vectors = scorer.item_vectors().detach().numpy()
    histories = Histories(np.array([0, 3, 4, 9]), np.array([1, 2, 3, 5, 0, 1, 2, 3, 11]))
    # When the users are encoded in batches of 2
    users = encode_users(scorer, histories, vectors, batch_size=2)
    # Then they equal the whole batch at once, as the recommender computes them
    whole = scorer.user_vectors_for(histories, torch.from_numpy(vectors)).numpy()
    assert users.shape == (3, 16) and np.allclose(users, whole, atol=1e-6)


def test_user_queries_of_another_dimension_are_refused_and_empty_ones_ignored(tmp_path):
    items, users = clustered(500)
    with pytest.raises(DataError, match="user queries have 31 dimensions, the item vectors 32"):
        write_index(items, tmp_path / "index", "Flat", sample=50, queries=users[:, :31])
    assert not (tmp_path / "index").exists()
    assert write_index(items, tmp_path / "index", "Flat", sample=50, queries=users[:0]).queries == "items"
