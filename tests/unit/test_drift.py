"""bertrec.mlops.drift.checks on synthetic, seeded data: planted shifts are found, equal distributions are not,
and Evidently's recsys metrics agree with ours exactly where the definitions say they should."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bertrec.config import DriftParams
from bertrec.mlops.drift.checks import (
    DriftCheck,
    Verdict,
    check_embeddings,
    check_interactions,
    check_predictions,
    draw_user_sample,
    interaction_features,
    prediction_features,
    write_verdict,
)
from bertrec.mlops.drift.recsys import compare_recsys, evidently_recsys
from bertrec.ranking.metrics import Reference, compute_metrics

PARAMS = DriftParams()
N_USERS, N_ITEMS = 400, 300
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
BOOSTED = "Horror"
DAY = 86_400
START = 1_700_006_400  # a midnight, UTC

_world = np.random.default_rng(7)
ITEM_P = _world.permutation(1.0 / (np.arange(N_ITEMS) + 10.0))  # long-tailed popularity
ITEM_P /= ITEM_P.sum()
USER_P = _world.lognormal(0.0, 0.8, N_USERS)
USER_P /= USER_P.sum()
ITEM_GENRE = np.array(GENRES)[_world.integers(0, len(GENRES), N_ITEMS)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Evidently draws a t-SNE picture of the embeddings; OpenMP threads on a busy 2-core box slow it tenfold
    with threadpool_limits(1):
        yield


def items_table() -> pd.DataFrame:
    """Genres in every form the items table may hold them: lists, "a|b", "a, b", and none."""
    forms = [lambda g: [g, "Drama"], lambda g: f"{g}|Drama", lambda g: f"{g}, Drama"]
    genres = [forms[i % 3](g) for i, g in enumerate(ITEM_GENRE)]
    return pd.DataFrame({"item_id": np.arange(N_ITEMS), "genres": genres})


def window(seed: int, n: int = 2500, peak_hour: float = 20.0) -> pd.DataFrame:
    """Interactions of one four-week window; users, items, hours and ratings drawn independently."""
    rng = np.random.default_rng(seed)
    hours = rng.normal(peak_hour, 2.5, n) % 24
    return pd.DataFrame(
        {
            "user_id": rng.choice(N_USERS, n, p=USER_P),
            "item_id": rng.choice(N_ITEMS, n, p=ITEM_P),
            "timestamp": START + rng.integers(0, 28, n) * DAY + (hours * 3600).astype(np.int64),
            "rating": rng.integers(1, 6, n),
        }
    )


def drifted(check: DriftCheck) -> set[str]:
    return {name for name, column in check.details["columns"].items() if column["drifted"]}


# --- features ------------------------------------------------------------------------------------


def test_interaction_features_count_within_the_window_and_read_every_genre_form():
    # Given four interactions, one of them with an item missing from the items table
    interactions = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 11, 10, 99],
            "timestamp": [0, 3600 * 5 + 59, DAY + 3600 * 23, 7200],
            "rating": [5, 4, 3, 1],
        }
    )
    items = pd.DataFrame({"item_id": [10, 11, 12], "genres": [["Drama", "War"], " Comedy , Drama", ""]})
    # When the features are made
    features = interaction_features(interactions, items)
    # Then counts are per window, hours are UTC, and the first genre is kept ("unknown" when none)
    assert features["user_activity"].tolist() == [2, 2, 2, 2]
    assert features["item_popularity"].tolist() == [2, 1, 2, 1]
    assert features["hour"].tolist() == [0, 5, 23, 2]
    assert features["genre"].tolist() == ["Drama", "Comedy", "Drama", "unknown"]
    assert features["rating"].tolist() == [5.0, 4.0, 3.0, 1.0]
    pipes = interaction_features(
        interactions.drop(columns="rating"), items.assign(item_id=[10, 11, 99], genres=["Drama|War", "Comedy", None])
    )
    assert "rating" not in pipes and pipes["genre"].tolist() == ["Drama", "Comedy", "Drama", "unknown"]


def test_interaction_features_name_a_missing_column():
    with pytest.raises(ValueError, match=r"interactions: missing column\(s\) \['timestamp'\]"):
        interaction_features(pd.DataFrame({"user_id": [1], "item_id": [1]}), items_table())


def test_prediction_features_put_the_top_score_on_each_users_first_row():
    topk = np.array([[2, 0, -1], [1, 2, 0]])
    frame = prediction_features(topk, np.array([0.9, 0.4]), np.array([5, 7, 9]))
    assert frame["rec_popularity"].tolist() == [9, 5, 7, 9, 5]
    assert frame["top_score"].fillna(-1).tolist() == [0.9, -1, 0.4, -1, -1]


def test_user_sample_is_fixed_by_the_seed():
    users = np.arange(2000)[::-1]
    sample = draw_user_sample(users, PARAMS)
    assert len(sample) == PARAMS.sample_users and np.all(np.diff(sample) > 0)
    assert np.array_equal(sample, draw_user_sample(users, PARAMS))
    assert len(draw_user_sample(np.array([3, 3, 1]), PARAMS)) == 2


# --- interactions --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genre_check() -> DriftCheck:
    reference = window(1)
    boosted = reference[ITEM_GENRE[reference["item_id"]] == BOOSTED]
    current = pd.concat([reference, boosted, boosted, boosted], ignore_index=True)  # Horror x4
    return check_interactions(reference, current, items_table(), PARAMS)


@pytest.fixture(scope="module")
def hour_check() -> DriftCheck:
    reference = window(1)
    return check_interactions(
        reference, reference.assign(timestamp=reference["timestamp"] + 12 * 3600), items_table(), PARAMS
    )


def test_a_genre_multiplied_fourfold_is_drift_in_genre_and_the_counts(genre_check):
    # Given a current window in which every Horror interaction of the reference appears four times
    # Then genre drifts, and so do the counts it drives: Horror items' popularity, their fans' activity
    assert drifted(genre_check) == {"genre", "item_popularity", "user_activity"}
    assert genre_check.drift and genre_check.score == pytest.approx(3 / 5) and genre_check.threshold == 0.5
    shares = genre_check.details["genre_share"]
    assert shares["current"][BOOSTED] > 2 * shares["reference"][BOOSTED]
    assert sum(shares["current"].values()) == pytest.approx(1.0)
    column = genre_check.details["columns"]["genre"]
    assert column["test"] == "Jensen-Shannon distance" and column["score"] >= column["threshold"] == 0.1


def test_a_twelve_hour_shift_is_drift_in_hour_only(hour_check):
    # Given the same interactions twelve hours later
    # Then only hour drifts; one column of five is below the default share of 0.5, so no overall drift
    assert drifted(hour_check) == {"hour"}
    assert hour_check.score == pytest.approx(1 / 5) and not hour_check.drift
    hour = hour_check.details["columns"]["hour"]
    assert hour["mean"]["reference"] != pytest.approx(hour["mean"]["current"])
    assert hour_check.details["genre_share"]["reference"] == hour_check.details["genre_share"]["current"]


def test_two_windows_from_one_distribution_are_not_drift():
    # Given two windows drawn independently from the same distribution
    check = check_interactions(window(11), window(12), items_table(), PARAMS)
    # Then no overall drift; the counts (a few hundred users and items) carry Poisson noise near
    # Evidently's 0.1 distance threshold, the other columns are far below theirs (see bench/drift_false_alarms.py)
    assert not check.drift and check.score < PARAMS.drift_share
    assert not drifted(check) & {"rating", "hour", "genre"}
    json.dumps(check.details)  # plain JSON


def test_windows_with_and_without_ratings_are_refused():
    with pytest.raises(ValueError, match="'rating' must be in both windows"):
        check_interactions(window(1), window(2).drop(columns="rating"), items_table(), PARAMS)


# --- embeddings ----------------------------------------------------------------------------------


def item_vectors(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around topic centres, like a text encoder's."""
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, centres.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def embedding_checks() -> tuple[DriftCheck, DriftCheck]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 32))
    catalogue = item_vectors(rng, 400, centres)
    alike = item_vectors(rng, 100, centres)
    other = item_vectors(rng, 100, rng.normal(size=(12, 32)))  # topics the catalogue does not have
    return check_embeddings(catalogue, alike, PARAMS), check_embeddings(catalogue, other, PARAMS)


def test_new_items_from_other_topics_are_embedding_drift(embedding_checks):
    _, other = embedding_checks
    assert other.drift and other.score > other.threshold == 0.55
    assert other.details["method"] == "model" and other.details["rows"] == {"catalogue": 400, "new": 100}


def test_new_items_like_the_catalogue_are_not_embedding_drift(embedding_checks):
    alike, other = embedding_checks
    assert not alike.drift and alike.score <= alike.threshold
    assert alike.details["centroid_distance"] < other.details["centroid_distance"]


def test_embedding_check_is_deterministic():
    rng = np.random.default_rng(5)
    catalogue, new = rng.normal(size=(60, 8)), rng.normal(size=(20, 8))
    first = check_embeddings(catalogue, new, PARAMS.model_copy(update={"embedding_method": "mmd"}))
    again = check_embeddings(catalogue, new, PARAMS.model_copy(update={"embedding_method": "mmd"}))
    assert first == again and first.threshold == 0.015  # the run (with its t-SNE picture) is not compared


def test_vectors_of_different_width_are_refused():
    with pytest.raises(ValueError, match="catalogue vectors have dim 8, new ones 4"):
        check_embeddings(np.zeros((5, 8)), np.zeros((5, 4)), PARAMS)


# --- predictions ---------------------------------------------------------------------------------


def recommendations(seed: int, lean: float, score_seed: int, users: int = 300, k: int = 10) -> pd.DataFrame:
    """Top-k lists drawn with probability ~ popularity**lean; first scores ~ N(5, 1)."""
    rng = np.random.default_rng(seed)
    popularity = np.round(2000 * ITEM_P).astype(np.int64) + 1
    p = popularity**lean / (popularity**lean).sum()
    topk = np.stack([rng.choice(N_ITEMS, k, replace=False, p=p) for _ in range(users)])
    return prediction_features(topk, np.random.default_rng(score_seed).normal(5.0, 1.0, users), popularity)


@pytest.fixture(scope="module")
def prediction_check() -> DriftCheck:
    # the same users' first scores in both windows: the planted change is popularity alone
    return check_predictions(recommendations(1, 0.5, score_seed=9), recommendations(2, 1.5, score_seed=9), PARAMS)


def test_a_lean_towards_popular_items_is_prediction_drift(prediction_check):
    # Given the same users recommended far more popular items, with first scores alike
    # Then rec_popularity drifts, top_score does not, and one drifted column is enough
    assert drifted(prediction_check) == {"rec_popularity"}
    assert prediction_check.drift and prediction_check.score == 0.5 and prediction_check.threshold == 0.5
    popularity = prediction_check.details["columns"]["rec_popularity"]["mean"]
    assert popularity["current"] > 2 * popularity["reference"]
    assert prediction_check.details["columns"]["top_score"]["test"] == "K-S p_value"  # 300 users: a p-value


def test_unchanged_recommendations_are_not_prediction_drift():
    # Given lists and first scores drawn anew from the same distributions
    check = check_predictions(recommendations(1, 1.0, score_seed=3), recommendations(2, 1.0, score_seed=4), PARAMS)
    # Then neither column drifts (top_score's KS test at p < 0.05 would flag one such pair in twenty)
    assert not check.drift and not drifted(check)


# --- Evidently's recsys metrics against ours -----------------------------------------------------

K = 10


def recsys_case(seed: int, cold: bool) -> tuple[np.ndarray, sp.csr_matrix, pd.DataFrame, int]:
    """Top-K lists over part of the catalogue, 1-3 positives per user (some outside the list), training rows.

    ``cold``: ten items never occur in training but are recommended, and some training pairs repeat.
    """
    rng = np.random.default_rng(seed)
    n_items, n_users, n_train_users = 80, 60, 50
    warm = np.arange(n_items - 10 if cold else n_items)
    pool = np.r_[np.arange(50), np.arange(70, 80)] if cold else np.arange(60)  # what the lists draw from
    pairs = [(u, i) for u in range(n_train_users) for i in rng.choice(warm, rng.integers(3, 15), replace=False)]
    pairs += [(int(i) % n_train_users, int(i)) for i in warm]  # every warm item is trained on
    train = pd.DataFrame(sorted(set(pairs)), columns=["user_idx", "item_idx"])
    if cold:
        train = pd.concat([train, train.iloc[::7]], ignore_index=True)  # repeated (user, item) pairs
    topk = np.stack([rng.permutation(pool)[:K] for _ in range(n_users)])
    rows, cols = [], []
    for u in range(n_users):
        chosen = set(rng.choice(n_items, rng.integers(1, 4), replace=False).tolist())
        if u % 2:
            chosen.add(int(topk[u, rng.integers(0, K)]))  # a hit for every other user
        rows += [u] * len(chosen)
        cols += sorted(chosen)
    positives = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    return topk, positives, train, n_items


def ours(topk, positives, train, n_items) -> dict[str, float]:
    reference = Reference.from_train(train["item_idx"].to_numpy(), train["user_idx"].to_numpy(), n_items)
    return compute_metrics(topk, positives, reference, ks=(K,))


def evidently_way(topk: np.ndarray, train: pd.DataFrame) -> dict[str, float]:
    """ARP, Novelty, Coverage, Gini and Personalization as the module docstring says Evidently defines them."""
    users_of = train.groupby("item_idx")["user_idx"].nunique().to_dict()  # distinct training users per item
    n_train_users = train["user_idx"].nunique()
    arp, novelty = [], []
    for row in topk:
        seen = [i for i in row if i in users_of]  # items absent from training are left out
        if seen:
            arp.append(np.mean([users_of[i] for i in seen]))
            novelty.append(np.mean([-math.log2(users_of[i] / n_train_users) for i in seen]))
    counts = np.sort(np.unique(topk, return_counts=True)[1])  # recommended items only
    n = len(counts)
    gini = float(np.sum((2 * np.arange(1, n + 1) - n - 1) * counts) / ((n - 1) * counts.sum()))
    lists = [set(row) for row in topk]
    overlap = [len(a & b) / K for x, a in enumerate(lists) for y, b in enumerate(lists) if x != y]
    return {
        f"ARP@{K}": float(np.mean(arp)),
        f"Novelty@{K}": float(np.mean(novelty)),
        f"Coverage@{K}": len(set(topk.ravel()) & set(users_of)) / len(users_of),
        f"Gini@{K}": gini,
        f"Personalization@{K}": 1.0 - float(np.mean(overlap)),
    }


def test_evidently_agrees_with_ours_where_the_definitions_agree():
    # Given every item trained on, no repeated training pair, and users with positives outside their lists
    topk, positives, train, n_items = recsys_case(1, cold=False)
    mine, theirs = ours(topk, positives, train, n_items), evidently_recsys(topk, positives, train, K)
    # Then NDCG (binary, ideal over min(|positives|, K)), Hit, ARP, Novelty and Coverage agree;
    # Gini differs by its definition (recommended items only, divided by n - 1)
    assert compare_recsys(mine, theirs, PARAMS.recsys_tolerance) == [f"Gini@{K}"]
    assert 0 < mine[f"NDCG@{K}"] < 1 and 0 < mine[f"Hit@{K}"] < 1
    expected = evidently_way(topk, train)
    assert theirs[f"Gini@{K}"] == pytest.approx(expected[f"Gini@{K}"], abs=1e-12)
    assert theirs[f"Personalization@{K}"] == pytest.approx(expected[f"Personalization@{K}"], abs=1e-12)


def test_evidently_differs_from_ours_exactly_as_documented():
    # Given recommended items that never occur in training, and repeated training pairs
    topk, positives, train, n_items = recsys_case(2, cold=True)
    mine, theirs = ours(topk, positives, train, n_items), evidently_recsys(topk, positives, train, K)
    # Then accuracy still agrees, and each beyond-accuracy metric is Evidently's definition on our data
    assert compare_recsys(mine, theirs, PARAMS.recsys_tolerance) == [
        f"{m}@{K}" for m in ("ARP", "Coverage", "Gini", "Novelty")
    ]
    for name, value in evidently_way(topk, train).items():
        assert theirs[name] == pytest.approx(value, abs=1e-12), name


def test_compare_recsys_names_only_shared_metrics_beyond_the_tolerance():
    assert compare_recsys({"A@1": 1.0, "B@1": 2.0, "C@1": 0.0}, {"A@1": 1.0 + 1e-9, "B@1": 2.1, "D@1": 5.0}, 1e-6) == [
        "B@1"
    ]
    assert compare_recsys({"A@1": float("nan")}, {"A@1": float("nan")}, 1e-6) == ["A@1"]


# --- verdict -------------------------------------------------------------------------------------


def test_write_verdict_writes_each_report_and_a_matching_json(tmp_path, hour_check, embedding_checks, prediction_check):
    # Given three checks, one of which drifted
    verdict = Verdict.of([hour_check, embedding_checks[0], prediction_check])
    assert verdict.drift
    # When the verdict is written over an older one
    folder = tmp_path / "drift"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    path = write_verdict(verdict, folder)
    # Then the folder holds Evidently's HTML per check and a JSON with every check's numbers
    assert path == folder / "verdict.json"
    assert sorted(p.name for p in folder.iterdir()) == [
        "embeddings.html",
        "interactions.html",
        "predictions.html",
        "verdict.json",
    ]
    for check in verdict.checks:
        assert "<html" in (folder / f"{check.name}.html").read_text(encoding="utf-8")[:2000].lower()
    written = json.loads(path.read_text())
    assert written == {"drift": True, "checks": {c.name: json.loads(json.dumps(c.summary())) for c in verdict.checks}}
    assert written["checks"]["predictions"]["details"]["columns"]["rec_popularity"]["drifted"] is True
    assert written["checks"]["embeddings"]["threshold"] == 0.55


def test_verdict_refuses_duplicate_names_and_leaves_the_folder_alone(tmp_path):
    check = DriftCheck("interactions", False, 0.0, 0.5, {})
    folder = tmp_path / "drift"
    folder.mkdir()
    (folder / "verdict.json").write_text("{}")
    with pytest.raises(ValueError, match="unique"):
        write_verdict(Verdict.of([check, check]), folder)
    assert (folder / "verdict.json").read_text() == "{}"
    with pytest.raises(ValueError, match="verdict drift=True"):
        Verdict(True, (check,))
