"""The promotion gate: a pure decision on whether a challenger replaces the champion.

Metrics are addressed as ``split/target/Metric@K`` (``loo/test/NDCG@10``), flattened from the
``{split: {model: {target: {metric: value}}}}`` results of evaluation by :func:`flat_metrics`.
The rule (``promotion`` in params) has three parts, all of which must pass:

1. the primary metric beats every baseline (when ``beat_baselines``);
2. with a champion, the primary metric improves on the champion's by at least ``min_improvement``
   (relative);
3. with a champion, no guardrail metric drops by more than its tolerance (relative).

With no champion, beating the baselines is enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bertrec.config import PromotionParams

Scores = Mapping[str, float]  # "split/target/Metric@K" -> value


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: tuple[Check, ...] = ()


def flat_metrics(results: Mapping[str, Mapping[str, Mapping[str, float]]], split: str) -> dict[str, float]:
    """One model's ``{target: {metric: value}}`` on ``split`` as ``{"split/target/metric": value}``."""
    return {f"{split}/{target}/{metric}": float(value)
            for target, metrics in results.items() for metric, value in metrics.items()}  # fmt: skip


def _value(scores: Scores, key: str, whose: str) -> float:
    if key not in scores:
        raise KeyError(f"{whose} has no metric {key!r}; it has {sorted(scores)[:8]}...")
    return float(scores[key])


def _relative(new: float, old: float) -> float:
    return (new - old) / abs(old) if old else (0.0 if new == old else float("inf") * (1 if new > old else -1))


def decide_promotion(
    challenger: Scores, champion: Scores | None, baselines: Mapping[str, Scores], rule: PromotionParams
) -> Decision:
    """Whether ``challenger`` should become champion; the reason states values, deltas and thresholds.

    ``baselines`` maps each baseline's name to its scores on the same data; ``champion`` is None
    when there is none. Raises KeyError when a metric of the rule is missing from an input.
    """
    key = rule.metric
    value = _value(challenger, key, "the challenger")
    checks: list[Check] = []
    if rule.beat_baselines:
        if not baselines:
            raise KeyError("the rule requires beating the baselines, but no baseline scores were given")
        best_name, best = max(((n, _value(s, key, f"baseline {n}")) for n, s in baselines.items()),
                              key=lambda pair: pair[1])  # fmt: skip
        checks.append(Check("baselines", value > best,
                            f"{key} {value:.4f} vs strongest baseline {best_name} {best:.4f} "
                            f"(delta {value - best:+.4f}; must be > 0)"))  # fmt: skip
    if champion is not None:
        old = _value(champion, key, "the champion")
        gain = _relative(value, old)
        checks.append(Check("improvement", gain >= rule.min_improvement,
                            f"{key} {value:.4f} vs champion {old:.4f} "
                            f"({gain:+.2%}; must be >= {rule.min_improvement:+.2%})"))  # fmt: skip
        for guard, tolerance in rule.guardrails.items():
            new, base = _value(challenger, guard, "the challenger"), _value(champion, guard, "the champion")
            change = _relative(new, base)
            checks.append(Check(f"guardrail {guard}", change >= -tolerance,
                                f"{guard} {new:.4f} vs champion {base:.4f} "
                                f"({change:+.2%}; may drop at most {tolerance:.0%})"))  # fmt: skip
    promote = all(c.passed for c in checks)
    failed = [c for c in checks if not c.passed]
    if promote:
        head = "promote: " + ("no champion yet; " if champion is None else "")
        reason = head + "; ".join(c.detail for c in checks) if checks else head + "no check configured"
    else:
        reason = "keep the champion: " + "; ".join(f"{c.name} failed: {c.detail}" for c in failed)
        if champion is None:
            reason = "no champion, and the challenger is not promoted: " + "; ".join(c.detail for c in failed)
    return Decision(promote, reason, tuple(checks))
