"""Re-ranking for coverage: a per-item penalty on the model's scores, its strength chosen on validation.

A score ``s`` becomes ``s - beta * log(1 + x)``, ``x`` per item by ``rerank.penalty``:

- ``exposure`` (default): how often the model itself puts the item in its unpenalised top
  ``rerank.exposure_depth`` for the validation users (appearances per 1,000 lists). The items the
  model shows everyone lose the most, whatever their training popularity; items it never shows lose
  nothing (bench/reports/model_table.md: the two penalties side by side).
- ``popularity``: the item's training interactions.

An item without training interactions (a new item) has no record to judge it by: with the
popularity penalty it loses nothing; with the exposure penalty it pays as if it were shown as often
as the warm items are on average, neither buried nor lifted. Measured on ml-100k: charged its own
exposure, the new items the model places from their text sink (cold_items test_all NDCG@10 0.068 ->
0.026); charged nothing, the few untrained items of loo rise into many lists and Coverage@10
stops near 0.50. Items added to a served catalogue later pay the same (``new_item_penalty`` in the
bundle's training record).

``rerank.beta: auto`` tries ``rerank.grid`` on the validation users after training (never the test
users) and keeps the smallest beta whose validation Coverage@10 reaches ``rerank.coverage_target``
without losing more than ``rerank.max_ndcg_drop`` of the unpenalised NDCG@10; when none reaches the
target, the beta with the highest coverage within that loss. The penalty is saved with the model, so
evaluation, the gate's re-evaluation of the champion and the served model rank the same way.
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
    shown = topk[topk >= 0]  # a list shorter than depth (a small catalogue) is padded with -1
    counts = np.bincount(shown, minlength=cases.positives.shape[1]).astype(np.float64)
    return counts * 1000.0 / max(len(topk), 1)


def penalty_signal(scorer, cases: Cases, reference: Reference, params: RerankParams, batch_size: int) -> np.ndarray:
    """What beta multiplies (see the module docstring): ``x`` per item, before ``log(1 + x)``."""
    popularity = np.asarray(reference.popularity, dtype=np.float64)
    if params.penalty == "popularity":
        return popularity
    shown = exposure(scorer, cases, params.exposure_depth, batch_size)
    warm = popularity > 0
    return np.where(warm, shown, shown[warm].mean() if warm.any() else 0.0)


def new_item_charge(signal: np.ndarray | None, reference: Reference, params: RerankParams, beta: float) -> float:
    """The penalty of an item without training interactions: 0 (popularity), or (exposure) that of an item shown
    as often as the warm items are on average.

    ``penalty_signal`` already gives the catalogue's such items this value; a served model gives it to
    the items added to its catalogue later (:meth:`bertrec.serve.recommender.Recommender.add_items`).
    """
    warm = np.asarray(reference.popularity) > 0
    if params.penalty != "exposure" or not beta or signal is None or not warm.any():
        return 0.0
    return float(popularity_penalty(np.array([signal[warm].mean()]), beta)[0])


@dataclass(frozen=True)
class RerankChoice:
    beta: float
    reason: str
    tried: list[dict[str, float]]  # per beta: beta, NDCG@10, Coverage@10 on validation
    penalty: str = "popularity"  # what the penalty measures: rerank.penalty
    new_item_penalty: float = 0.0  # the penalty of an item without training interactions (new_item_charge)

    @property
    def valid(self) -> dict[str, float]:
        """Validation NDCG@10 and Coverage@10 at the chosen beta."""
        return next(t for t in self.tried if t["beta"] == self.beta)

    def to_dict(self) -> dict:
        return {
            "beta": self.beta,
            "penalty": self.penalty,
            "new_item_penalty": self.new_item_penalty,
            "reason": self.reason,
            "tried": self.tried,
        }


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
        charge = new_item_charge(signal, reference, params, float(params.beta))
        scorer.new_item_penalty = charge
        return RerankChoice(float(params.beta), "set in params (rerank.beta)", tried, params.penalty, charge)
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
    scorer.new_item_penalty = new_item_charge(signal, reference, params, best["beta"])
    log.info("rerank: %s penalty, beta %.3f (%s)", params.penalty, best["beta"], reason)
    return RerankChoice(best["beta"], reason, tried, params.penalty, scorer.new_item_penalty)
