"""Evaluation at scale gives today's answers: chunked ranking = one shot, a full sample = every user."""

from __future__ import annotations

import numpy as np
import pytest

from bertrec.config import SplitParams
from bertrec.data.split import split_ratio
from bertrec.ranking.baselines import ItemKNN, Popular
from bertrec.ranking.evaluate import build_cases, chunk_rows, evaluate, reference_of, train_set

from builders import cyclic_dataset


@pytest.fixture(scope="module")
def fitted():
    data = cyclic_dataset(n_users=90, n_items=70, length=15, seed=3)
    split = split_ratio(data, SplitParams())
    train = train_set(split, data.items)
    return split, train, reference_of(train)


def test_chunk_rows_bounds_the_score_matrix():
    assert chunk_rows(1024, 1_682) == 1024  # ml-100k: eval.batch_size as before
    assert chunk_rows(1024, 200_000) == (1 << 25) // 200_000  # 167 users x 200k items
    assert chunk_rows(1024, 10**9) == 1


@pytest.mark.parametrize("model", [Popular(), ItemKNN(neighbours=10)], ids=["popular", "itemknn"])
def test_chunked_ranking_equals_one_shot(monkeypatch, fitted, model):
    # Given a fitted scorer and the test cases of a split
    split, train, reference = fitted
    model.fit(train)
    cases = build_cases(split, "test")
    one_shot = evaluate(model, cases, reference, (10, 20), batch_size=len(cases.users))
    # When the score matrix may hold only 150 cells (2 users of 70 items at a time)
    monkeypatch.setattr("bertrec.ranking.evaluate.SCORE_CELLS", 150)
    chunked = evaluate(model, cases, reference, (10, 20), batch_size=len(cases.users))
    # Then every list and every metric is the same
    assert np.array_equal(chunked.topk, one_shot.topk)
    assert chunked.metrics == one_shot.metrics


def test_sampled_validation_users(fitted):
    split, train, reference = fitted
    cases = build_cases(split, "valid")
    model = ItemKNN(neighbours=10).fit(train)
    # A sample as large as the set is the set itself: the same metrics as the full evaluation
    full = evaluate(model, cases, reference, (10,))
    assert evaluate(model, cases.sample(len(cases.users), seed=1), reference, (10,)).metrics == full.metrics
    # A smaller sample keeps each sampled user's own context and positives, and is seeded
    sample = cases.sample(7, seed=1)
    assert len(sample.users) == 7 and np.array_equal(sample.users, cases.sample(7, seed=1).users)
    for row, user in enumerate(sample.users):
        at = int(np.searchsorted(cases.users, user))
        assert np.array_equal(sample.context[row], cases.context[at])
        assert (sample.positives[row] != cases.positives[at]).nnz == 0
    assert not np.array_equal(sample.users, cases.sample(7, seed=2).users)
