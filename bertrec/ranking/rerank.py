"""Re-ranking for coverage: a per-item penalty on the model's scores, its strength chosen on validation.

A score ``s`` becomes ``s - beta * log(1 + x)``, ``x`` per item by ``rerank.penalty``:

- ``exposure`` (default): how often the model itself puts the item in its unpenalised top
  ``rerank.exposure_depth`` for the validation users (appearances per 1,000 lists). The items the
  model shows everyone lose the most, whatever their training popularity; items it never shows lose
  nothing. On ml-100k this reaches Coverage@10 0.60 where the popularity penalty costs 15 % of NDCG@10
  (bench/reports/model_table.md).
- ``popularity``: the item's training interactions.

Items without training interactions (new items) lose nothing either way: the model may show a new
item often, and that is how it gathers its first interactions. ``rerank.beta: auto`` tries
``rerank.grid`` on the validation users after training (never the test users) and keeps the
smallest beta whose validation Coverage@10 reaches ``rerank.coverage_target`` without losing more
than ``rerank.max_ndcg_drop`` of the unpenalised NDCG@10; when none reaches the target, the beta
with the highest coverage within that loss. The penalty is saved with the model, so evaluation,
the gate's re-evaluation of the champion and the served model rank the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bertrec.config import RerankParams
from bertrec.ranking.evaluate import Cases, rank_cases
from bertrec.ranking.metrics import Reference, compute_metrics

log = logging.getLogger(__name__)

NDCG, COVERAGE = "NDCG@10", "Coverage@10"


def popularity_penalty(popularity: np.ndarray, beta: float) -> np.ndarray:
    """``beta * log(1 + popularity)``: (n_items,) float32, subtracted from scores."""
    return (beta * np.log1p(np.asarray(popularity, dtype=np.float64))).astype(np.float32)


def exposure(scorer, cases: Cases, depth: int, batch_size: int) -> np.ndarray:
    """Each item's appearances per 1,000 of the scorer's unpenalised top-``depth`` lists of ``cases``: (n_items,)."""
    kept, scorer.penalty = scorer.penalty, None
    try:
        topk = rank_cases(scorer, cases, depth, batch_size)
    finally:
        scorer.penalty = kept
    counts = np.bincount(topk.ravel(), minlength=cases.positives.shape[1]).astype(np.float64)
    return counts * 1000.0 / max(len(topk), 1)


def penalty_signal(scorer, cases: Cases, reference: Reference, params: RerankParams, batch_size: int) -> np.ndarray:
    """What beta multiplies (see the module docstring): ``x`` per item, before ``log(1 + x)``."""
    popularity = np.asarray(reference.popularity, dtype=np.float64)
    if params.penalty == "exposure":  # an item nobody has interacted with yet needs exposure: none is held against it
        return np.where(popularity > 0, exposure(scorer, cases, params.exposure_depth, batch_size), 0.0)
    return popularity


@dataclass(frozen=True)
class RerankChoice:
    beta: float
    reason: str
    tried: list[dict[str, float]]  # per beta: beta, NDCG@10, Coverage@10 on validation
    penalty: str = "popularity"  # what the penalty measures: rerank.penalty

    @property
    def valid(self) -> dict[str, float]:
        """Validation NDCG@10 and Coverage@10 at the chosen beta."""
        return next(t for t in self.tried if t["beta"] == self.beta)

    def to_dict(self) -> dict:
        return {"beta": self.beta, "penalty": self.penalty, "reason": self.reason, "tried": self.tried}


def _try(scorer, signal: np.ndarray | None, beta: float, cases: Cases, reference: Reference, batch_size: int) -> dict:
    scorer.penalty = popularity_penalty(signal, beta) if beta else None
    topk = rank_cases(scorer, cases, 10, batch_size)
    metrics = compute_metrics(topk, cases.positives, reference, (10,), cases.candidates)
    log.info("rerank beta %.3f: valid NDCG@10 %.4f, Coverage@10 %.4f", beta, metrics[NDCG], metrics[COVERAGE])
    return {"beta": beta, NDCG: metrics[NDCG], COVERAGE: metrics[COVERAGE]}


def choose_beta(scorer, cases: Cases, reference: Reference, params: RerankParams, batch_size: int) -> RerankChoice:
    """The penalty's strength (see the module docstring); ``scorer.penalty`` is left set to it.

    ``scorer`` is a :class:`~bertrec.model.scorer.TowerScorer`; ``cases`` are validation cases.
    """
    if params.beta != "auto":
        signal = penalty_signal(scorer, cases, reference, params, batch_size) if params.beta else None
        tried = [_try(scorer, signal, float(params.beta), cases, reference, batch_size)]
        return RerankChoice(float(params.beta), "set in params (rerank.beta)", tried, params.penalty)
    signal = penalty_signal(scorer, cases, reference, params, batch_size)
    tried = [_try(scorer, signal, beta, cases, reference, batch_size) for beta in sorted(set(params.grid) | {0.0})]
    floor = tried[0][NDCG] * (1.0 - params.max_ndcg_drop)
    allowed = [t for t in tried if t[NDCG] >= floor]
    reaching = [t for t in allowed if t[COVERAGE] >= params.coverage_target]
    if reaching:
        best = reaching[0]
        reason = f"smallest beta with valid Coverage@10 >= {params.coverage_target}"
    else:
        best = max(allowed, key=lambda t: (t[COVERAGE], -t["beta"]))
        reason = (
            f"no beta reached valid Coverage@10 {params.coverage_target} within a {params.max_ndcg_drop:.0%} "
            "NDCG@10 loss: the highest coverage within it"
        )
    scorer.penalty = popularity_penalty(signal, best["beta"]) if best["beta"] else None
    log.info("rerank: %s penalty, beta %.3f (%s)", params.penalty, best["beta"], reason)
    return RerankChoice(best["beta"], reason, tried, params.penalty)
