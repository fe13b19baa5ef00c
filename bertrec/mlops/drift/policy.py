"""The retrain policy: from a drift verdict and a quality verdict to "retrain or not", with the reason.

``retrain.policy`` in params:

- ``drift`` (default): a calibrated drift check fired (its false-alarm rate is ``drift.false_alarm_rate``
  per check run, so an alarm is worth a training run; the gate still decides what gets served);
- ``drift_and_decay``: the data moved and the champion's quality on the newest interactions fell
  below its expected level; stricter, but the quality signal needs enough returning users to confirm
  a decay (on ml-100k, 30 to 50 a week: a planted shift that halves the champion's NDCG@10 on them
  is not confirmed; bench/reports/replay.md);
- ``decay``: any decay; ``schedule``: every monitor run.

Without a champion every policy retrains: there is nothing to serve yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Statuses of a verdict: checked, or why nothing could be checked.
CHECKED, NO_CHAMPION, TOO_FEW_ROWS = "checked", "no-champion", "too-few-rows"


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    policy: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_retrain(status: str, drift: bool, decay: bool, policy: str) -> RetrainDecision:
    """Apply ``policy`` to a verdict: ``status`` (checked, no-champion, too-few-rows), ``drift``, ``decay``."""
    seen = f"drift {'yes' if drift else 'no'}, decay {'yes' if decay else 'no'}"
    if status == NO_CHAMPION:
        return RetrainDecision(True, policy, "no champion yet: train one")
    if policy == "schedule":
        return RetrainDecision(True, policy, f"retrain: {seen}; policy schedule retrains on every monitor run")
    if status != CHECKED:
        return RetrainDecision(False, policy, f"nothing checked ({status}): no retraining")
    wanted = {"drift_and_decay": drift and decay, "drift": drift, "decay": decay}
    if policy not in wanted:
        raise ValueError(f"retrain.policy is {policy!r}; expected one of {sorted(wanted) + ['schedule']}")
    verb = "retrain" if wanted[policy] else "no retraining"
    return RetrainDecision(wanted[policy], policy, f"{verb}: {seen}; policy {policy}")
