"""bertrec.ranking.scoring: top_k against a full stable sort, masking, Histories and Scorer.recommend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bertrec.ranking.scoring import Histories, Scorer, TrainSet, mask_out, segment_top_k, top_k


def slow_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Full stable sort by (-score, index); -1 for -inf slots and for slots past the catalogue."""
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for r, row in enumerate(scores):
        ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        for slot, i in enumerate(ranked):
            out[r, slot] = -1 if row[i] == -np.inf else i
    return out


def histories(lists: list[list[int]]) -> Histories:
    indptr = np.r_[0, np.cumsum([len(x) for x in lists])].astype(np.int64)
    items = np.array([i for x in lists for i in x], dtype=np.int64)
    return Histories(indptr, items)


class PlantedScorer(Scorer):
    """Scores from a fixed matrix, with each history item pushed to the top."""

    name = "planted"

    def __init__(self, base: np.ndarray) -> None:
        self.base = base

    def fit(self, train: TrainSet) -> PlantedScorer:
        return self

    def score(self, h: Histories) -> np.ndarray:
        scores = self.base[: len(h)].copy()
        for u in range(len(h)):
            scores[u, h[u]] += 100.0
        return scores


# --- top_k ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_top_k_matches_full_stable_sort(seed: int) -> None:
    # Given integer scores 0..3 (many ties) with some -inf entries
    rng = np.random.default_rng(seed)
    n_rows, n_items = int(rng.integers(1, 8)), int(rng.integers(1, 15))
    scores = rng.integers(0, 4, (n_rows, n_items)).astype(np.float32)
    scores[rng.random((n_rows, n_items)) < 0.3] = -np.inf
    for k in (1, 3, n_items, n_items + 4):
        # When the top k are taken
        got = top_k(scores.copy(), k)
        # Then they equal the full sort, padded with -1 past the catalogue
        assert got.shape == (n_rows, k)
        np.testing.assert_array_equal(got, slow_top_k(scores, k), err_msg=f"k={k}")


@pytest.mark.parametrize("levels", [3, 50, 10_000])
def test_top_k_wide_rows_with_and_without_boundary_ties(levels: int) -> None:
    # Given wide rows where ties at the k-th score are common (3 levels), occasional (50) or rare
    rng = np.random.default_rng(levels)
    scores = rng.integers(0, levels, (40, 300)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    # Then the fast selection equals the full stable sort
    np.testing.assert_array_equal(top_k(scores.copy(), 20), slow_top_k(scores, 20))


@pytest.mark.parametrize("seed", range(5))
def test_segment_top_k_matches_a_sort_of_each_segment(seed: int) -> None:
    # Given segments of 0 to 70 values with ties and -inf, some longer than k, some shorter
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 70, 30)
    indptr = np.r_[0, np.cumsum(counts)]
    values = rng.integers(0, 6, indptr[-1]).astype(np.float32)
    values[rng.random(len(values)) < 0.1] = -np.inf
    # When each segment's top 8 positions are taken, a few cells at a time
    got = segment_top_k(indptr, values, 8, cells=64)
    # Then they are each segment's stable sort by value, as positions in `values`
    for s in range(len(counts)):
        offsets = slow_top_k(values[None, indptr[s] : indptr[s + 1]], 8)[0] if counts[s] else np.full(8, -1)
        np.testing.assert_array_equal(got[s], np.where(offsets >= 0, indptr[s] + offsets, -1))


def test_top_k_ties_broken_by_index_by_hand() -> None:
    # Given a row with ties and a -inf
    scores = np.array([[1.0, 3.0, 1.0, 3.0, -np.inf, 2.0]], dtype=np.float32)

    # When all 8 slots are asked for; Then ties go by index, -inf and past-the-end are -1
    assert top_k(scores, 8).tolist() == [[1, 3, 5, 0, 2, -1, -1, -1]]


def test_top_k_all_minus_inf_row_is_empty() -> None:
    # Given a row where every item is masked
    scores = np.array([[-np.inf] * 4, [0.0, 1.0, 0.0, 0.0]], dtype=np.float32)

    # When the top 3 are taken; Then the masked row has no item
    assert top_k(scores, 3).tolist() == [[-1, -1, -1], [1, 0, 2]]


def test_top_k_nan_raises() -> None:
    # Given a score that is NaN; When ranked; Then it raises
    scores = np.array([[0.5, np.nan, 0.1]], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        top_k(scores, 2)


# --- mask_out ------------------------------------------------------------------------------------


def test_mask_out_history_only() -> None:
    # Given scores for 2 users and their histories (one empty)
    scores = np.zeros((2, 5), dtype=np.float32)

    # When their histories are masked
    mask_out(scores, histories([[1, 3], []]))

    # Then exactly those entries are -inf
    expected = np.zeros((2, 5), dtype=np.float32)
    expected[0, [1, 3]] = -np.inf
    np.testing.assert_array_equal(scores, expected)


def test_mask_out_with_candidates() -> None:
    # Given candidates {0, 2, 3} and a history holding candidate 2
    scores = np.ones((2, 5), dtype=np.float32)

    # When masked
    mask_out(scores, histories([[2], [4]]), candidates=np.array([0, 2, 3]))

    # Then non-candidates and history items are -inf, the rest untouched
    finite = np.isfinite(scores)
    assert finite[0].tolist() == [True, False, False, True, False]
    assert finite[1].tolist() == [True, False, True, True, False]
    assert (scores[finite] == 1.0).all()


# --- Histories -----------------------------------------------------------------------------------


def test_from_frame_orders_by_seq_and_keeps_requested_users() -> None:
    # Given rows in shuffled order with their seq
    frame = pd.DataFrame({"user_idx": [2, 0, 2, 0, 2, 5], "item_idx": [12, 1, 10, 0, 11, 7], "seq": [2, 1, 0, 0, 1, 0]})

    # When histories are built for users 0, 3 (no rows), 2, in that order
    h = Histories.from_frame(frame.sample(frac=1.0, random_state=0), np.array([0, 3, 2]))

    # Then each is its user's items in seq order
    assert len(h) == 3
    assert [h[u].tolist() for u in range(3)] == [[0, 1], [], [10, 11, 12]]
    assert h.lengths().tolist() == [2, 0, 3]


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_last_keeps_most_recent_items(n: int) -> None:
    # Given histories of various lengths
    lists = [[1, 2, 3, 4], [], [7], [5, 6]]

    # When cut to the last n
    h = histories(lists).last(n)

    # Then each is the list's tail, in order
    assert [h[u].tolist() for u in range(len(h))] == [x[len(x) - min(n, len(x)) :] for x in lists]
    assert h.indptr[-1] == len(h.items)


def test_slice_is_a_sub_batch() -> None:
    # Given 4 histories
    lists = [[1, 2], [3], [], [4, 5, 6]]

    # When users 1..3 are sliced out
    h = histories(lists).slice(1, 4)

    # Then the slice holds exactly those users, re-based at 0
    assert len(h) == 3
    assert h.indptr[0] == 0
    assert [h[u].tolist() for u in range(3)] == lists[1:4]


def test_matrix_is_binary_membership() -> None:
    # Given histories with a repeated item
    h = histories([[0, 2, 2], [], [1]])

    # When turned into a matrix over 4 items
    m = h.matrix(4).toarray()

    # Then each cell is 1 exactly where the item is in the history
    assert m.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]


def test_trainset_histories_and_popularity() -> None:
    # Given training rows of users 0 and 2 (user 1 has none)
    rows = pd.DataFrame({"user_idx": [2, 0, 2], "item_idx": [3, 1, 1], "timestamp": [5, 1, 4], "seq": [1, 0, 0]})
    train = TrainSet(3, 4, rows, pd.DataFrame({"item_idx": range(4)}))

    # Then every user has a history in seq order, and popularity counts rows
    h = train.histories()
    assert [h[u].tolist() for u in range(3)] == [[1], [], [1, 3]]
    assert train.popularity().tolist() == [0, 2, 0, 1]


# --- Scorer.recommend ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_recommend_never_returns_history(seed: int) -> None:
    # Given a scorer that scores history items highest, with ties
    rng = np.random.default_rng(seed)
    n_users, n_items = 6, 12
    scorer = PlantedScorer(rng.integers(0, 3, (n_users, n_items)).astype(np.float32))
    lists = [sorted(rng.choice(n_items, int(rng.integers(0, 10)), replace=False).tolist()) for _ in range(n_users)]
    h = histories(lists)

    # When 8 items are recommended
    recs = scorer.recommend(h, 8)

    # Then no history item appears, and slots past the unseen items are -1
    for u, seen in enumerate(lists):
        real = [i for i in recs[u] if i >= 0]
        assert not set(real) & set(seen)
        assert len(real) == min(8, n_items - len(seen))
        assert len(set(real)) == len(real)


def test_recommend_with_exclude_and_candidates() -> None:
    # Given a scorer, an explicit exclusion and candidates {1, 2, 3}
    scorer = PlantedScorer(np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], dtype=np.float32))
    context = histories([[0]])

    # When recommending 4 among the candidates, excluding item 2
    recs = scorer.recommend(context, 4, exclude=histories([[2]]), candidates=np.array([1, 2, 3]))

    # Then only non-excluded candidates appear, best first
    assert recs.tolist() == [[1, 3, -1, -1]]


def test_recommend_nan_scores_raise() -> None:
    # Given a scorer that outputs NaN; When recommending; Then it raises
    scorer = PlantedScorer(np.array([[np.nan, 1.0, 0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        scorer.recommend(histories([[]]), 2)
