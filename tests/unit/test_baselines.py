"""Baselines behind the Scorer interface, checked against slow, obvious references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bertrec.ranking.baselines import ItemKNN, Popular, TextZeroShot, knn_similarity
from bertrec.ranking.scoring import Histories, TrainSet


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


def test_itemknn_score_is_sum_of_similarities_to_history():
    train = random_train(1)
    model = ItemKNN(neighbours=5).fit(train)
    history = Histories(np.array([0, 3]), np.array([2, 7, 11]))
    w = model.similarity.toarray()
    assert np.allclose(model.score(history)[0], w[2] + w[7] + w[11], atol=1e-6)


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
