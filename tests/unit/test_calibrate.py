"""Calibrated drift (bertrec.mlops.drift.calibrate, .behaviour), the quality signal (.decay) and the retrain
policy (.policy), on synthetic, seeded data: weeks like the weeks before are not drift, a planted shift is."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from bertrec.config import DriftParams
from bertrec.mlops.drift.behaviour import BehaviourBasis, item_table, user_table
from bertrec.mlops.drift.calibrate import (
    PERIODS,
    SPLIT_HALF,
    decide,
    holm,
    interaction_scores,
    lagged_pairs,
    tail_p_value,
)
from bertrec.mlops.drift.decay import decay_verdict, next_items, per_user_quality
from bertrec.mlops.drift.policy import CHECKED, NO_CHAMPION, TOO_FEW_ROWS, decide_retrain

PARAMS = DriftParams()
N_USERS, N_ITEMS, GENRES = 300, 200, ("Action", "Comedy", "Drama", "Horror", "Romance")
WEEK = 7 * 86_400
_world = np.random.default_rng(3)
ITEM_P = _world.permutation(1.0 / (np.arange(N_ITEMS) + 5.0))
ITEM_P /= ITEM_P.sum()
ITEM_GENRE = np.array(GENRES)[_world.integers(0, len(GENRES), N_ITEMS)]
ITEMS = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "genres": [f"{g}|Drama" for g in ITEM_GENRE]})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with threadpool_limits(1):
        yield


def week(index: int, seed: int, n: int = 1500, boost: str | None = None) -> pd.DataFrame:
    """One week of interactions from the fixed world; ``boost``: every other row moved onto that genre."""
    rng = np.random.default_rng(seed)
    items = rng.choice(N_ITEMS, n, p=ITEM_P)
    if boost is not None:
        pool = np.flatnonzero(ITEM_GENRE == boost)
        items[::2] = rng.choice(pool, len(items[::2]))
    return pd.DataFrame(
        {
            "user_idx": rng.integers(0, N_USERS, n),
            "item_idx": items,
            "timestamp": index * WEEK + rng.integers(1, WEEK, n),
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )


def test_behaviour_tables_aggregate_per_user_and_per_item():
    rows = pd.DataFrame({"user_idx": [0, 0, 0, 1], "item_idx": [0, 0, 1, 2], "rating": [5.0, 3.0, 4.0, 1.0]})
    items = pd.DataFrame({"item_idx": [0, 1, 2], "genres": ["Horror|Drama", "Comedy", None]})
    basis = BehaviourBasis.of(items, np.array([0, 0, 0, 1, 2]), 3)  # item 0 alone holds half the interactions
    assert basis.head.tolist() == [True, False, False]
    users = user_table(rows, basis)
    assert users["activity"].tolist() == [3.0, 1.0]
    assert users["head_share"].tolist() == pytest.approx([2 / 3, 0.0])
    assert basis.genres == ("Drama", "Horror", "Comedy")  # by reference interactions, ties by name
    assert users["genre:Horror"].tolist() == pytest.approx([2 / 3, 0.0])
    assert users["genre:Comedy"].tolist() == pytest.approx([1 / 3, 0.0])
    assert users["rating"].tolist() == [4.0, 1.0]
    assert item_table(rows)["interactions"].tolist() == [2.0, 1.0, 1.0]


def test_tail_p_value_reads_the_observed_statistic_against_its_null():
    null = [0.10, 0.12, 0.11, 0.09, 0.10]
    assert tail_p_value(0.105, null) > 0.3
    assert tail_p_value(0.5, null) < 1e-4
    assert tail_p_value(0.2, [0.1, 0.1]) == 0.0 and tail_p_value(0.1, [0.1, 0.1]) == 1.0
    assert math.isnan(tail_p_value(0.2, [0.1]))


def test_lagged_pairs_are_as_far_apart_as_reference_and_current():
    assert lagged_pairs(list("abcde"), 0) == [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]
    assert lagged_pairs(list("abcde"), 2) == [("a", "d"), ("b", "e")]
    assert lagged_pairs(list("abcde"), 4) == []


def test_holm_rejects_step_down_and_never_a_nan():
    p_values = {"a": 0.001, "b": 0.013, "c": 0.04, "d": float("nan")}
    # sorted 0.001 <= 0.05/3, 0.013 <= 0.05/2, 0.04 <= 0.05/1: all three
    assert holm(p_values, 0.05) == {"a": True, "b": True, "c": True, "d": False}
    # with a fourth: 0.001 <= 0.05/4, 0.013 <= 0.05/3, then 0.03 > 0.05/2 stops, and 0.04 goes with it
    assert holm({"a": 0.001, "b": 0.013, "c": 0.04, "e": 0.03}, 0.05) == {"a": True, "b": True, "c": False, "e": False}


@pytest.fixture(scope="module")
def history() -> list[pd.DataFrame]:
    return [week(i, seed=100 + i) for i in range(6)]


def scored_against(history: list[pd.DataFrame], current: pd.DataFrame, periods: int):
    basis = BehaviourBasis.of(ITEMS, pd.concat(history)["item_idx"].to_numpy(), N_ITEMS)
    return interaction_scores(history[-periods:], current, basis, PARAMS, "interactions")


def test_a_week_like_the_weeks_before_is_not_drift(history):
    scored = scored_against(history, week(8, seed=500), periods=6)
    [decided] = decide([scored], PARAMS.false_alarm_rate)
    assert scored.null_method == PERIODS and len(scored.null["users.activity"]) == 5
    assert set(scored.observed) == {"users.activity", "users.head_share", "users.rating", "items.interactions"} | {
        f"users.genre:{g}" for g in GENRES
    }
    assert not decided.drift, decided.p_values


def test_a_genre_taking_half_the_week_is_drift_in_the_genre_mix(history):
    scored = scored_against(history, week(8, seed=501, boost="Horror"), periods=6)
    [decided] = decide([scored], PARAMS.false_alarm_rate)
    assert decided.drift and decided.rejected["users.genre:Horror"], decided.p_values
    assert min(decided.p_values, key=decided.p_values.get) == "users.genre:Horror"  # the clearest of the moves
    details = decided.details()
    assert details["columns"]["users.genre:Horror"]["p_value"] < 0.001
    assert details["genre_share"]["current"]["Horror"] > 2 * details["genre_share"]["reference"]["Horror"]


def test_a_short_history_falls_back_to_split_halves(history):
    scored = scored_against(history, week(8, seed=502), periods=2)
    assert scored.null_method == SPLIT_HALF and len(scored.null["users.activity"]) == PARAMS.resamples
    [decided] = decide([scored], PARAMS.false_alarm_rate)
    assert not decided.drift, decided.p_values


def test_next_items_are_each_returning_users_first_new_interaction():
    before = pd.DataFrame({"user_idx": [0, 1], "item_idx": [5, 6], "timestamp": [1, 2]})
    current = pd.DataFrame({"user_idx": [0, 0, 2], "item_idx": [8, 7, 9], "timestamp": [20, 10, 30]})
    first = next_items(before, current)
    assert first[["user_idx", "item_idx"]].values.tolist() == [[0, 7]]


def test_decay_when_the_interval_lies_below_the_expected_level():
    rng = np.random.default_rng(0)
    topk = np.tile(np.arange(10), (200, 1))
    hit = rng.random(200) < 0.1  # one user in ten has the target in the list, at rank 1
    targets = np.where(hit, 0, 50)
    values = per_user_quality(topk, targets, 100)
    assert values["Hit@10"].mean() == pytest.approx(hit.mean())
    below = decay_verdict(values, {"NDCG@10": 0.3, "Hit@10": 0.3}, PARAMS)
    assert below.status == CHECKED and below.decay and "NDCG@10" in below.reason
    level = decay_verdict(values, {"NDCG@10": hit.mean(), "Hit@10": hit.mean()}, PARAMS)
    assert not level.decay and level.metrics["Hit@10"]["low"] < 0 < level.metrics["Hit@10"]["high"]
    few = decay_verdict({k: v[:5] for k, v in values.items()}, {"NDCG@10": 0.3, "Hit@10": 0.3}, PARAMS)
    assert few.status == "too-few-users" and not few.decay
    first = decay_verdict(values, {}, PARAMS)  # no earlier check: this one is part of the baseline
    assert first.status == "baseline" and not first.decay
    assert first.metrics["Hit@10"]["observed"] == pytest.approx(hit.mean())


@pytest.mark.parametrize(
    ("policy", "drift", "decay", "retrain"),
    [
        ("drift_and_decay", True, False, False),
        ("drift_and_decay", True, True, True),
        ("drift", True, False, True),
        ("decay", True, False, False),
        ("decay", False, True, True),
        ("schedule", False, False, True),
    ],
)
def test_the_retrain_policy_states_its_reason(policy, drift, decay, retrain):
    decision = decide_retrain(CHECKED, drift, decay, policy)
    assert decision.retrain is retrain and policy in decision.reason
    assert f"drift {'yes' if drift else 'no'}" in decision.reason


def test_without_a_champion_every_policy_trains_and_without_rows_none_does():
    assert decide_retrain(NO_CHAMPION, False, False, "drift").retrain
    assert not decide_retrain(TOO_FEW_ROWS, False, False, "drift_and_decay").retrain
    with pytest.raises(ValueError, match="retrain.policy is 'sometimes'"):
        decide_retrain(CHECKED, True, True, "sometimes")
