"""Baselines behind the Scorer interface, checked against slow, obvious references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bertrec.ranking.baselines import ItemKNN, Popular, TextZeroShot, knn_similarity
from bertrec.ranking.scoring import Histories, Scorer, TrainSet


def random_train(seed: int, n_users: int = 30, n_items: int = 25, per_user: int = 6) -> TrainSet:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for s, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            rows.append((u, int(i), s, s))
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "seq"])
    items = pd.DataFrame({"item_idx": range(n_items), "item_id": [str(i) for i in range(n_items)], "text": ""})
    return TrainSet(n_users, n_items, frame, items)


def test_popular_scores_training_counts():
    train = random_train(0)
    scores = Popular().fit(train).score(train.histories().slice(0, 3))
    expected = np.bincount(train.interactions["item_idx"], minlength=train.n_items)
    assert scores.shape == (3, train.n_items)
    assert np.array_equal(scores[1], expected)


@pytest.mark.parametrize("candidates", [None, np.array([1, 4, 5, 9, 20, 21, 22])])
def test_popular_fast_ranking_equals_full_catalogue_ranking(candidates):
    # Given popularity with ties, and histories of different lengths
    train = random_train(5, n_users=40, n_items=25, per_user=9)
    model = Popular().fit(train)
    histories = train.histories()
    exclude = histories.last(4)
    # When the shortcut ranks them (with and without a candidate set)
    fast = model.recommend(histories, 12, exclude=exclude, candidates=candidates)
    # Then it equals the full-catalogue ranking of the Scorer interface, slot for slot (-1 included)
    full = Scorer.recommend(model, histories, 12, exclude=exclude, candidates=candidates)
    assert np.array_equal(fast, full)
    assert (full == -1).any() == (candidates is not None)


@pytest.mark.parametrize("neighbours", [3, 100])
def test_knn_similarity_matches_dense_cosine(neighbours):
    # Given a random binary matrix
    rng = np.random.default_rng(neighbours)
    x = (rng.random((40, 30)) < 0.2).astype(np.float32)
    # When the blocked sparse similarity is computed
    got = knn_similarity(sp.csr_matrix(x), neighbours).toarray()
    # Then it equals dense cosine with a zero diagonal, each column keeping its top `neighbours`
    norms = np.sqrt(x.sum(0))
    dense = (x.T @ x) / (np.outer(norms, norms) + 1e-6)
    np.fill_diagonal(dense, 0.0)
    for j in range(30):
        column = dense[:, j]
        kept = got[:, j] > 0
        assert np.allclose(got[kept, j], column[kept], atol=1e-6)
        assert kept.sum() == min(neighbours, int((column > 0).sum()))
        if kept.any() and (~kept).any():
            assert column[kept].min() >= column[~kept].max() - 1e-6


def dense_knn_reference(x: np.ndarray, neighbours: int) -> np.ndarray:
    """Today's reference: the full dense cosine matrix, each column's top entries, ties by lower index."""
    norms = np.sqrt(x.sum(0))
    dense = (x.T @ x) / (np.outer(norms, norms) + 1e-6)
    np.fill_diagonal(dense, 0.0)
    out = np.zeros_like(dense)
    for j in range(dense.shape[1]):
        order = np.lexsort((np.arange(len(dense)), -dense[:, j]))[:neighbours]
        order = order[dense[order, j] > 0]
        out[order, j] = dense[order, j]
    return out


@pytest.mark.parametrize("neighbours", [1, 4, 50])
def test_sparse_knn_equals_dense_knn_with_ties_and_small_blocks(monkeypatch, neighbours):
    # Given a binary matrix with many tied similarities, and blocks of a few co-occurrences each
    rng = np.random.default_rng(7)
    x = (rng.random((60, 40)) < 0.1).astype(np.float32)
    monkeypatch.setattr("bertrec.ranking.baselines.SIMILARITY_NNZ", 30)
    # When the sparse similarity is computed block by block
    got = knn_similarity(sp.csr_matrix(x), neighbours)
    # Then it is exactly the dense reference, tie for tie
    assert np.allclose(got.toarray(), dense_knn_reference(x, neighbours), atol=1e-6)
    assert got.nnz == np.count_nonzero(dense_knn_reference(x, neighbours))


def test_itemknn_score_is_sum_of_similarities_to_history():
    train = random_train(1)
    model = ItemKNN(neighbours=5).fit(train)
    history = Histories(np.array([0, 3]), np.array([2, 7, 11]))
    w = model.similarity.toarray()
    assert np.allclose(model.score(history)[0], w[2] + w[7] + w[11], atol=1e-6)


@pytest.mark.parametrize("candidates", [None, np.array([0, 2, 3, 8, 13, 21, 24])])
def test_itemknn_sparse_ranking_equals_dense_ranking(candidates):
    # Given few neighbours per item, so that many users have fewer than k scored items
    train = random_train(6, n_users=40, n_items=25, per_user=5)
    model = ItemKNN(neighbours=2).fit(train)
    histories = train.histories()
    exclude = histories.last(3)
    # When the sparse path ranks (zeros filled by index), with and without candidates
    fast = model.recommend(histories, 10, exclude=exclude, candidates=candidates)
    # Then it equals the dense ranking of the Scorer interface, slot for slot
    dense = Scorer.recommend(model, histories, 10, exclude=exclude, candidates=candidates)
    assert np.array_equal(fast, dense)
    assert (model.sparse_scores(histories).getnnz(axis=1) < 10).any()
    # and users with no history at all (no stored score anywhere) get the lowest allowed indices
    empty = Histories(np.zeros(4, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert np.array_equal(
        model.recommend(empty, 10, candidates=candidates), Scorer.recommend(model, empty, 10, candidates=candidates)
    )


def test_itemknn_recommend_excludes_history():
    train = random_train(2)
    model = ItemKNN(neighbours=10).fit(train)
    histories = train.histories()
    top = model.recommend(histories, k=10)
    for u in range(len(histories)):
        assert not set(top[u]) & set(histories[u])


def test_text_zero_shot_user_is_mean_of_recent_items(tiny_encoder):
    # Given items with texts and the tiny random encoder
    train = random_train(3, n_items=6)
    texts = ["space robot", "love story", "ghost city", "war movie", "robot love", "night of the ghost"]
    train = TrainSet(train.n_users, 6, train.interactions, train.items.assign(text=texts))
    model = TextZeroShot(str(tiny_encoder), history=2).fit(train)
    # Then item vectors are unit norm, and a user's scores are cosine to the mean of the last 2 items
    assert np.allclose(np.linalg.norm(model.vectors, axis=1), 1.0, atol=1e-5)
    history = Histories(np.array([0, 3]), np.array([0, 4, 5]))
    user = model.vectors[[4, 5]].mean(0)
    expected = model.vectors @ (user / np.linalg.norm(user))
    assert np.allclose(model.score(history)[0], expected, atol=1e-5)


def test_text_zero_shot_encodes_once_per_catalogue(tiny_encoder):
    train = random_train(4, n_items=3, per_user=2)
    train = TrainSet(train.n_users, 3, train.interactions, train.items.assign(text=["a", "b", "c"]))
    model = TextZeroShot(str(tiny_encoder)).fit(train)
    first = model.vectors
    model.fit(train)
    assert model.vectors is first
