"""The promotion gate: a pure decision on whether a challenger replaces the champion.

Metrics are addressed as ``split/target/Metric@K`` (``loo/test/NDCG@10``), flattened from the
``{split: {model: {target: {metric: value}}}}`` results of evaluation by :func:`flat_metrics`.
The rule (``promotion`` in params) has three parts, all of which must pass:

1. the primary metric beats every baseline (when ``beat_baselines``);
2. with a champion, the primary metric improves on the champion's by at least ``min_improvement``
   (relative);
3. with a champion, no guardrail metric drops by more than its tolerance (relative).

With no champion, beating the baselines is enough.

:func:`decide_promotion` is the pure rule. :func:`gate_and_switch` applies it for real: under the
registry lock it re-evaluates the champion on the current data (both models through their served
vectors), decides, and only then moves the aliases, so a failure at any point changes no alias.
The lock serialises runs on one machine; across machines the training deployment's concurrency
limit of 1 does, and the champion alias is read again before the switch: if another run moved it
meanwhile, the gate runs again.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from bertrec.config import Params, PromotionParams
from bertrec.data.dataset import Dataset
from bertrec.errors import RegistryError
from bertrec.mlops.registry import CHAMPION, alias_version, download_version, lock_for, set_aliases
from bertrec.mlops.tracking import mlflow_name
from bertrec.serve.recommender import CatalogueScorer, Recommender

Scores = Mapping[str, float]  # "split/target/Metric@K" -> value
Checkpoint = Callable[[str], None]  # called with "decided" before the aliases move (for crash tests)
GATE_ATTEMPTS = 3
GATED_TAG = "gate.promote"  # on every version the gate has decided on


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
    return {
        f"{split}/{target}/{metric}": float(value)
        for target, metrics in results.items()
        for metric, value in metrics.items()
    }


def _value(scores: Scores, key: str, whose: str) -> float:
    if key not in scores:
        raise KeyError(f"{whose} has no metric {key!r}; it has {sorted(scores)[:8]}...")
    return float(scores[key])


def _relative(new: float, old: float) -> float:
    return (new - old) / abs(old) if old else (0.0 if new == old else float("inf") * (1 if new > old else -1))


def decide_promotion(
    challenger: Scores,
    champion: Scores | None,
    baselines: Mapping[str, Scores],
    rule: PromotionParams,
    champion_version: str | None = None,
) -> Decision:
    """Whether ``challenger`` should become champion; the reason states values, deltas and thresholds.

    ``baselines`` maps each baseline's name to its scores on the same data; ``champion`` is None
    when there is none (``champion_version``, when given, is named in the reason). Raises KeyError
    when a metric of the rule is missing from an input.
    """
    key = rule.metric
    value = _value(challenger, key, "the challenger")
    checks: list[Check] = []
    if rule.beat_baselines:
        if not baselines:
            raise KeyError("the rule requires beating the baselines, but no baseline scores were given")
        best_name, best = max(
            ((n, _value(s, key, f"baseline {n}")) for n, s in baselines.items()), key=lambda pair: pair[1]
        )
        checks.append(
            Check(
                "baselines",
                value > best,
                f"{key} {value:.4f} vs strongest baseline {best_name} {best:.4f} "
                f"(delta {value - best:+.4f}; must be > 0)",
            )
        )
    if champion is not None:
        who = f"champion (version {champion_version})" if champion_version else "champion"
        old = _value(champion, key, "the champion")
        gain = _relative(value, old)
        checks.append(
            Check(
                "improvement",
                gain >= rule.min_improvement,
                f"{key} {value:.4f} vs {who} {old:.4f} ({gain:+.2%}; must be >= {rule.min_improvement:+.2%})",
            )
        )
        for guard, tolerance in rule.guardrails.items():
            new, base = _value(challenger, guard, "the challenger"), _value(champion, guard, "the champion")
            change = _relative(new, base)
            checks.append(
                Check(
                    f"guardrail {guard}",
                    change >= -tolerance,
                    f"{guard} {new:.4f} vs champion {base:.4f} ({change:+.2%}; may drop at most {tolerance:.0%})",
                )
            )
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


def gate_splits(p: Params) -> list[str]:
    """The splits the promotion rule reads metrics from, primary first."""
    keys = [p.promotion.metric, *p.promotion.guardrails]
    return list(dict.fromkeys(key.split("/")[0] for key in keys))


def gate_scores(recommender: Recommender, data: Dataset, p: Params) -> dict[str, float]:
    """A loaded bundle's metrics on the current data, for every split of the rule, as served.

    On ``cold_items`` the new items are scored by their text part alone (their ID embeddings left
    out), so a model trained on ``loo`` is probed on the cold-start path; it has seen those items'
    interactions in training, so this is a regression check, not the protocol's cold figure.
    """
    from bertrec.data.split import read_split
    from bertrec.ranking.evaluate import evaluate_split

    scores: dict[str, float] = {}
    for name in gate_splits(p):
        split = read_split(p.paths.splits, name, data.n_users, data.n_items)
        scorer = CatalogueScorer(recommender, data.items, split.new_items)
        results = evaluate_split([scorer], split, data.items, p.eval.ks, p.eval.batch_size)
        scores |= flat_metrics(results[scorer.name], name)
    return scores


def baseline_scores(baselines: dict, p: Params) -> dict[str, dict[str, float]]:
    """``{baseline: {"split/target/metric": value}}`` from ``{split: {model: {target: metrics}}}``."""
    split = p.promotion.metric.split("/")[0]
    if p.promotion.beat_baselines and split not in baselines:
        raise RegistryError(f"no current baseline figures for split {split!r}; run `bertrec baselines --split {split}`")
    out: dict[str, dict[str, float]] = {}
    for split_name, models in baselines.items():
        for model, results in models.items():
            out.setdefault(model, {}).update(flat_metrics(results, split_name))
    return out


def load_version(client: MlflowClient, name: str, version: str, into: Path, p: Params) -> Recommender:
    """Download a version's bundle into ``into`` and load it on ``train.device``."""
    return Recommender(download_version(client, name, version, into), p.train.device)


@dataclass(frozen=True)
class Gate:
    decision: Decision
    champion: str | None  # after the switch
    champion_before: str | None
    champion_scores: dict[str, float] | None  # the champion before, re-evaluated on the current data


def gate_and_switch(
    client: MlflowClient,
    p: Params,
    version: str,
    scores: dict[str, float],
    baselines: dict[str, dict[str, float]],
    data: Dataset,
    checkpoint: Checkpoint | None = None,
    force: bool = False,
) -> Gate:
    """Under the registry lock: re-evaluate the champion, decide, move the aliases.

    ``force`` promotes even when the gate says no; the reason records both.
    """
    name = p.mlflow.registered_model
    with lock_for(p):
        for _ in range(GATE_ATTEMPTS):
            champion = alias_version(client, name, CHAMPION)
            champion_scores = None
            if champion is not None:
                with tempfile.TemporaryDirectory(prefix="bertrec-champion-") as tmp:
                    champion_scores = gate_scores(load_version(client, name, champion, Path(tmp), p), data, p)
            decision = decide_promotion(scores, champion_scores, baselines, p.promotion, champion)
            if force and not decision.promote:
                decision = Decision(True, f"forced promotion; the gate said: {decision.reason}", decision.checks)
            if checkpoint:
                checkpoint("decided")
            if alias_version(client, name, CHAMPION) == champion:
                break
        else:
            raise RegistryError(
                f"the champion of {name} kept moving during {GATE_ATTEMPTS} gate attempts; no alias was changed"
            )
        before = champion
        gate_tags = {
            "gate.reason": decision.reason,
            "gate.champion_before": champion or "none",
        }
        if champion_scores:
            gate_tags |= {
                mlflow_name(f"gate.champion.{k}"): f"{v:.6g}"
                for k, v in champion_scores.items()
                if k in (p.promotion.metric, *p.promotion.guardrails)
            }
        for key, value in gate_tags.items():
            client.set_model_version_tag(name, version, key, value)
        champion = set_aliases(client, name, version, champion, decision.promote)
        # Last: a version without it was never gated (a run killed before here); `register` gates it again.
        client.set_model_version_tag(name, version, GATED_TAG, str(decision.promote).lower())
    return Gate(decision, champion, before, champion_scores)


def promote_version(p: Params, version: str, force: bool = False) -> Gate:
    """Run the gate for an already registered ``version`` against the champion, on the current data.

    For manual promotion (the `promote` flow). Raises RegistryError when the version is the champion.
    """
    from bertrec.data.dataset import load_dataset
    from bertrec.ranking.results import current_baselines

    client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
    name = p.mlflow.registered_model
    if alias_version(client, name, CHAMPION) == str(version):
        raise RegistryError(f"version {version} of {name} is already the champion")
    data = load_dataset(p.paths.prepared)
    with tempfile.TemporaryDirectory(prefix="bertrec-version-") as tmp:
        scores = gate_scores(load_version(client, name, str(version), Path(tmp), p), data, p)
    return gate_and_switch(client, p, str(version), scores, baseline_scores(current_baselines(p), p), data, force=force)


def decision_record(decision: Decision, version: str, champion: str | None) -> str:
    return json.dumps(
        {
            "version": version,
            "promote": decision.promote,
            "reason": decision.reason,
            "champion_after": champion,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks],
        },
        indent=2,
    )
