"""decide_promotion: each branch of the rule, and reasons that state the numbers."""

from __future__ import annotations

import pytest

from bertrec.config import PromotionParams
from bertrec.mlops.gate import decide_promotion, flat_metrics

PRIMARY = "loo/test/NDCG@10"
COVERAGE = "loo/test/Coverage@10"
COLD = "cold_items/test_all/Hit@10"
RULE = PromotionParams(metric=PRIMARY, min_improvement=0.01, guardrails={COVERAGE: 0.05, COLD: 0.10})
BASELINES = {"popular": {PRIMARY: 0.045}, "itemknn": {PRIMARY: 0.062}}


def scores(ndcg: float, coverage: float = 0.40, cold: float = 0.20) -> dict[str, float]:
    return {PRIMARY: ndcg, COVERAGE: coverage, COLD: cold}


def test_no_champion_and_beats_baselines_promotes():
    decision = decide_promotion(scores(0.10), None, BASELINES, RULE)
    assert decision.promote
    assert "no champion" in decision.reason and "itemknn 0.0620" in decision.reason and "0.1000" in decision.reason


def test_no_champion_but_below_the_strongest_baseline_is_not_promoted():
    decision = decide_promotion(scores(0.05), None, BASELINES, RULE)
    assert not decision.promote
    assert "itemknn 0.0620" in decision.reason and "-0.0120" in decision.reason


def test_better_than_champion_by_more_than_the_threshold_promotes():
    decision = decide_promotion(scores(0.105), scores(0.100), BASELINES, RULE)
    assert decision.promote
    assert "+5.00%" in decision.reason and ">= +1.00%" in decision.reason


def test_gain_below_min_improvement_keeps_the_champion():
    decision = decide_promotion(scores(0.1005), scores(0.100), BASELINES, RULE)
    assert not decision.promote
    assert "improvement failed" in decision.reason and "+0.50%" in decision.reason and "0.1000" in decision.reason


def test_equal_challenger_is_not_promoted():
    assert not decide_promotion(scores(0.1), scores(0.1), BASELINES, RULE).promote


def test_guardrail_drop_beyond_tolerance_blocks_promotion():
    # Given a challenger that gains on NDCG but loses 10% coverage (tolerance 5%)
    decision = decide_promotion(scores(0.12, coverage=0.36), scores(0.10, coverage=0.40), BASELINES, RULE)
    # Then it stays challenger, and the reason names the guardrail with values, delta and tolerance
    assert not decision.promote
    assert f"guardrail {COVERAGE} failed" in decision.reason
    assert "0.3600 vs champion 0.4000" in decision.reason and "-10.00%" in decision.reason and "5%" in decision.reason
    assert [c.name for c in decision.checks if not c.passed] == [f"guardrail {COVERAGE}"]


def test_guardrail_drop_within_tolerance_is_allowed():
    decision = decide_promotion(scores(0.12, cold=0.19), scores(0.10, cold=0.20), BASELINES, RULE)
    assert decision.promote  # cold Hit -5% within its 10% tolerance


def test_a_champion_weaker_than_the_baselines_does_not_excuse_the_challenger():
    # Given data where the old champion has fallen below itemknn
    decision = decide_promotion(scores(0.060), scores(0.050), BASELINES, RULE)
    # Then beating the champion is not enough
    assert not decision.promote and "baselines failed" in decision.reason


def test_baseline_check_can_be_switched_off():
    rule = RULE.model_copy(update={"beat_baselines": False})
    assert decide_promotion(scores(0.05), None, {}, rule).promote


def test_missing_metric_is_named():
    with pytest.raises(KeyError, match="cold_items/test_all/Hit@10"):
        decide_promotion({PRIMARY: 0.1, COVERAGE: 0.4}, scores(0.1), BASELINES, RULE)
    with pytest.raises(KeyError, match="no baseline"):
        decide_promotion(scores(0.1), None, {}, RULE)


def test_flat_metrics_names_split_target_and_metric():
    assert flat_metrics({"test": {"NDCG@10": 0.1}, "valid": {"Hit@20": 0.5}}, "loo") == {
        "loo/test/NDCG@10": 0.1,
        "loo/valid/Hit@20": 0.5,
    }


def test_rule_rejects_malformed_metric_keys():
    with pytest.raises(ValueError, match="split/target/Metric@K"):
        PromotionParams(metric="NDCG@10")
    with pytest.raises(ValueError, match="relative drops"):
        PromotionParams(guardrails={COVERAGE: 5})


def test_a_rule_on_baselines_without_their_figures_is_refused(make_params):
    from bertrec.errors import RegistryError
    from bertrec.mlops.gate import baseline_scores

    p = make_params()
    with pytest.raises(RegistryError, match=r"no current baseline figures for split 'loo'; run `bertrec baselines"):
        baseline_scores({"ratio": {}}, p)


def test_the_reason_names_the_champion_version_when_given():
    decision = decide_promotion(scores(0.1005), scores(0.100), BASELINES, RULE, champion_version="4")
    assert "vs champion (version 4) 0.1000" in decision.reason
