"""bertrec.ranking.metrics against a slow reference written straight from shared/PROTOCOL.md, and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from bertrec.ranking.metrics import METRICS, Reference, compute_metrics, gini, head_items, metric_key

KS = (1, 5, 10)


# --- slow, obvious reference ---------------------------------------------------------------------


def slow_reference(train_users: list[int], train_items: list[int], n_items: int) -> dict:
    """Popularity, user shares and tail, one item at a time."""
    popularity = [0] * n_items
    users_of: list[set[int]] = [set() for _ in range(n_items)]
    for u, i in zip(train_users, train_items, strict=True):
        popularity[i] += 1
        users_of[i].add(u)
    n_train_users = max(1, len(set(train_users)))
    share = [max(len(users), 1) / n_train_users for users in users_of]
    total, held, head = sum(popularity), 0, set()
    for i in sorted(range(n_items), key=lambda i: (-popularity[i], i)):
        if 5 * held >= 4 * total:  # 80%, in exact integer arithmetic
            break
        head.add(i)
        held += popularity[i]
    return {"popularity": popularity, "share": share, "tail": set(range(n_items)) - head}


def slow_gini(counts: list[int]) -> float:
    """Gini as half the relative mean absolute difference."""
    n, total = len(counts), sum(counts)
    if total == 0:
        return 0.0
    return sum(abs(a - b) for a in counts for b in counts) / (2 * n * total)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def slow_metrics(topk, positives: list[set[int]], ref: dict, k: int, catalogue: list[int]) -> dict[str, float]:
    per_user: dict[str, list[float]] = {name: [] for name in METRICS if name not in ("Coverage", "Gini", "TailHit")}
    tail_hits: list[float] = []
    counts = {i: 0 for i in catalogue}
    for row, pos in zip(topk, positives, strict=True):
        items = [int(i) for i in row[:k]]
        real = [i for i in items if i >= 0]
        ranks = [r for r, i in enumerate(items, start=1) if i in pos]
        dcg = sum(1 / math.log2(r + 1) for r in ranks)
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(pos), k) + 1))
        per_user["Hit"].append(1.0 if ranks else 0.0)
        per_user["Recall"].append(len(ranks) / len(pos))
        per_user["NDCG"].append(dcg / idcg)
        per_user["MRR"].append(1 / ranks[0] if ranks else 0.0)
        per_user["Precision"].append(len(ranks) / k)
        per_user["ARP"].append(mean([ref["popularity"][i] for i in real]))
        per_user["TailShare"].append(mean([1.0 if i in ref["tail"] else 0.0 for i in real]))
        per_user["Novelty"].append(mean([-math.log2(ref["share"][i]) for i in real]))
        tail_pos = pos & ref["tail"]
        if tail_pos:
            tail_hits.append(1.0 if any(i in tail_pos for i in items) else 0.0)
        for i in real:
            if i in counts:
                counts[i] += 1
    out = {name: mean(values) for name, values in per_user.items()}
    out["TailHit"] = mean(tail_hits)
    out["Coverage"] = sum(1 for c in counts.values() if c > 0) / len(catalogue)
    out["Gini"] = slow_gini(list(counts.values()))
    return out


def random_case(seed: int, with_candidates: bool):
    """Random training log, top-10 lists with some empty slots, users with 1-4 positives."""
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(6, 30))
    n_users = int(rng.integers(1, 15))
    n_train = int(rng.integers(0, 60))
    train_users = rng.integers(0, 8, n_train).tolist()
    train_items = (rng.zipf(1.5, n_train) % n_items).tolist()  # skewed popularity
    candidates = np.sort(rng.choice(n_items, int(rng.integers(3, n_items)), replace=False)) if with_candidates else None
    pool = candidates if with_candidates else np.arange(n_items)
    topk = np.full((n_users, 10), -1, dtype=np.int64)
    positives: list[set[int]] = []
    for u in range(n_users):
        ranked = rng.permutation(pool)[:10]
        topk[u, : len(ranked)] = ranked
        topk[u, rng.random(10) < 0.15] = -1
        positives.append(set(rng.choice(n_items, int(rng.integers(1, 5)), replace=False).tolist()))
    return train_users, train_items, n_items, topk, positives, candidates


def csr(positives: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, pos in enumerate(positives) for _ in pos]
    cols = [i for pos in positives for i in sorted(pos)]
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(positives), n_items))


# --- against the reference -----------------------------------------------------------------------


@pytest.mark.parametrize("with_candidates", [False, True])
@pytest.mark.parametrize("seed", range(25))
def test_compute_metrics_matches_slow_reference(seed: int, with_candidates: bool) -> None:
    # Given a random training log, random top-10 lists and random multi-positive users
    train_users, train_items, n_items, topk, positives, candidates = random_case(seed, with_candidates)
    items, users = np.array(train_items, dtype=np.int64), np.array(train_users, dtype=np.int64)
    reference = Reference.from_train(items, users, n_items)
    slow_ref = slow_reference(train_users, train_items, n_items)
    catalogue = candidates.tolist() if with_candidates else list(range(n_items))

    # When every metric is computed for K in (1, 5, 10)
    got = compute_metrics(topk, csr(positives, n_items), reference, KS, candidates)

    # Then each equals the slow reference
    assert set(got) == {metric_key(name, k) for name in METRICS for k in KS}
    for k in KS:
        expected = slow_metrics(topk, positives, slow_ref, k, catalogue)
        for name in METRICS:
            assert got[metric_key(name, k)] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), (name, k)


@pytest.mark.parametrize("seed", range(10))
def test_reference_from_train_matches_slow_reference(seed: int) -> None:
    # Given a random training log
    train_users, train_items, n_items, *_ = random_case(seed, False)

    # When the reference statistics are computed
    ref = Reference.from_train(np.array(train_items, dtype=np.int64), np.array(train_users, dtype=np.int64), n_items)

    # Then popularity, shares and tail equal the slow ones
    slow = slow_reference(train_users, train_items, n_items)
    assert ref.popularity.tolist() == slow["popularity"]
    assert ref.user_share == pytest.approx(slow["share"])
    assert set(np.flatnonzero(ref.tail).tolist()) == slow["tail"]


# --- by hand -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_reference() -> Reference:
    # 4 training users; popularity [4, 3, 2, 1, 0]: 80% of 10 is reached by items 0, 1, 2
    users = [0, 1, 2, 3, 0, 1, 2, 0, 1, 0]
    items = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
    return Reference.from_train(np.array(items), np.array(users), 5)


def test_tiny_reference_by_hand(tiny_reference: Reference) -> None:
    # Then popularity, head/tail and user shares are as worked out by hand
    assert tiny_reference.popularity.tolist() == [4, 3, 2, 1, 0]
    assert tiny_reference.tail.tolist() == [False, False, False, True, True]
    assert tiny_reference.user_share.tolist() == [1.0, 0.75, 0.5, 0.25, 0.25]  # unseen item: one user


def test_tiny_case_by_hand(tiny_reference: Reference) -> None:
    # Given 2 users: user 0 wants head item 0 (ranked 2nd), user 1 wants tail item 3 (ranked 1st)
    topk = np.array([[2, 0, 4], [3, 1, -1]])
    positives = csr([{0}, {3}], 5)

    # When metrics are computed at 1 and 3
    m = compute_metrics(topk, positives, tiny_reference, (1, 3))

    # Then accuracy at 1: only user 1 hits
    for name in ("Hit", "Recall", "NDCG", "MRR", "Precision"):
        assert m[f"{name}@1"] == pytest.approx(0.5), name
    # And at 3: both hit, user 0 at rank 2
    assert m["Hit@3"] == 1.0
    assert m["Recall@3"] == 1.0
    assert m["NDCG@3"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert m["MRR@3"] == pytest.approx(0.75)
    assert m["Precision@3"] == pytest.approx(1 / 3)
    # And beyond accuracy: items {2, 3} at 1, all 5 at 3
    assert m["Coverage@1"] == pytest.approx(2 / 5)
    assert m["Coverage@3"] == 1.0
    assert m["Gini@1"] == pytest.approx(0.6)  # counts [0,0,0,1,1]: (2*4-6 + 2*5-6) / (5*2)
    assert m["Gini@3"] == 0.0
    assert m["ARP@1"] == pytest.approx((2 + 1) / 2)
    assert m["ARP@3"] == pytest.approx(((2 + 4 + 0) / 3 + (1 + 3) / 2) / 2)  # the empty slot is not an item
    assert m["TailShare@1"] == pytest.approx(0.5)
    assert m["TailShare@3"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # And TailHit is over user 1 only, the one user with a tail positive
    assert m["TailHit@1"] == 1.0
    assert m["TailHit@3"] == 1.0
    assert m["Novelty@1"] == pytest.approx((1 + 2) / 2)
    assert m["Novelty@3"] == pytest.approx(((1 + 0 + 2) / 3 + (2 - math.log2(0.75)) / 2) / 2)


def test_ndcg_with_several_positives_by_hand(tiny_reference: Reference) -> None:
    # Given one user with positives {0, 2, 4} ranked [1, 0, 2]
    topk = np.array([[1, 0, 2]])

    # When metrics are computed at 1, 2, 3
    m = compute_metrics(topk, csr([{0, 2, 4}], 5), tiny_reference, (1, 2, 3))

    # Then IDCG is over min(|positives|, K) positions
    g2, g3 = 1 / math.log2(3), 1 / math.log2(4)
    assert m["NDCG@1"] == 0.0
    assert m["NDCG@2"] == pytest.approx(g2 / (1 + g2))
    assert m["NDCG@3"] == pytest.approx((g2 + g3) / (1 + g2 + g3))
    assert m["Recall@3"] == pytest.approx(2 / 3)
    assert m["Precision@3"] == pytest.approx(2 / 3)
    assert m["Precision@2"] == pytest.approx(1 / 2)
    assert m["MRR@3"] == pytest.approx(1 / 2)


def test_coverage_and_gini_over_candidates_by_hand(tiny_reference: Reference) -> None:
    # Given candidates {3, 4} and lists that also name a non-candidate
    topk = np.array([[3, 0], [3, -1]])

    # When metrics are computed with candidates
    m = compute_metrics(topk, csr([{3}, {4}], 5), tiny_reference, (2,), candidates=np.array([3, 4]))

    # Then the catalogue of Coverage and Gini is the candidates: counts [2, 0]
    assert m["Coverage@2"] == pytest.approx(1 / 2)
    assert m["Gini@2"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("popularity", "head"),
    [
        ([4, 3, 2, 1, 0], [0, 1, 2]),
        ([2, 2, 2, 2, 2], [0, 1, 2, 3]),  # ties by item id
        ([1, 3, 3, 0, 3], [1, 2, 4]),  # 9 of 10 after three tied items
        ([5, 3, 2], [0, 1]),  # exactly 80% is enough
        ([0, 0, 0], []),
        ([0, 7], [1]),
    ],
)
def test_head_items_by_hand(popularity: list[int], head: list[int]) -> None:
    # When the head is computed; Then it is the smallest most popular set holding 80%
    assert np.flatnonzero(head_items(np.array(popularity))).tolist() == head


def test_gini_by_hand() -> None:
    # Then equal counts give 0, all on one of n items gives (n - 1) / n, nothing gives 0
    assert gini(np.array([3, 3, 3, 3])) == 0.0
    assert gini(np.array([0, 0, 0, 5])) == pytest.approx(3 / 4)
    assert gini(np.array([1, 0, 2])) == pytest.approx(slow_gini([1, 0, 2]))
    assert gini(np.zeros(4)) == 0.0


# --- errors --------------------------------------------------------------------------------------


def test_topk_narrower_than_largest_k_raises(tiny_reference: Reference) -> None:
    # Given top-3 lists; When metrics at 5 are asked for; Then it raises
    with pytest.raises(ValueError, match="need at least 5"):
        compute_metrics(np.array([[0, 1, 2]]), csr([{0}], 5), tiny_reference, (1, 5))


def test_user_without_positive_raises(tiny_reference: Reference) -> None:
    # Given a second user with no positive; When metrics are computed; Then it raises
    positives = sp.csr_matrix(([1.0], ([0], [0])), shape=(2, 5))
    with pytest.raises(ValueError, match="positive"):
        compute_metrics(np.array([[0, 1], [1, 2]]), positives, tiny_reference, (2,))
