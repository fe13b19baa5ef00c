"""Evidently's recsys metrics on our top-K lists, and where they differ from ours (bertrec.ranking.metrics).

:func:`evidently_recsys` gives Evidently one row per filled top-K slot (``rank`` 1..K, ``target`` 1
for a positive) and one row per positive missing from the list (``rank`` K+1), so both sides see the
same ground truth. Against bertrec.ranking.metrics (shared/PROTOCOL.md):

- ``NDCG@K`` (``NDCG``): the same. Evidently's gain is the target itself (graded) and its ideal DCG
  sorts the user's rows by target; with 0/1 targets and the K+1 rows that is our binary NDCG with the
  ideal over min(|positives|, K) positions. Without the K+1 rows Evidently's ideal would count only
  the positives that were recommended. Evidently 0.7 labels its NDCG series one rank too high
  (NDCG@k sits at ``rank`` k+1); we read both series by position.
- ``Hit@K`` (``HitRate``): the same. Evidently drops users without a positive; ours refuses them.
- ``ARP@K`` (``PopularityBiasMetric(metric="arp")``): both average, over users, the mean popularity of
  the recommended items. Evidently's popularity is the number of distinct training users of the item,
  ours the number of training interactions (equal when training repeats no (user, item) pair, which
  ``prepare`` guarantees). An item absent from training counts 0 in ours; Evidently leaves it out
  of the user's mean, and a user left with no item drops out.
- ``Novelty@K`` (``Novelty``): both average -log2(share of training users who interacted with the
  item). An item absent from training counts as seen by one user in ours; Evidently leaves it out.
- ``Coverage@K`` (``metric="coverage"``): ours divides the distinct recommended items by the
  catalogue; Evidently counts only recommended items that occur in training and divides by the
  number of items that occur in training.
- ``Gini@K`` (``metric="gini"``): ours runs over the whole catalogue (never-recommended items count
  0) and divides by n (RecBole); Evidently's runs over the recommended items only and divides by
  n - 1. They differ in general (by n / (n - 1) when every item is recommended).
- ``Personalization@K``: no counterpart in ours. Evidently's is 1 - the mean, over ordered pairs of
  distinct users, of |list_u ∩ list_v| / K; it assumes every list holds K items.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

# Defined the same way on both sides (module docstring): any difference beyond rounding is a bug.
SAME_DEFINITION = ("NDCG", "Hit")


def evidently_recsys(
    topk_ids: np.ndarray, positives: sp.csr_matrix, train_interactions: pd.DataFrame, k: int
) -> dict[str, float]:
    """Evidently's recsys metrics at ``k`` (see :func:`recsys_report`), without the report."""
    return recsys_report(topk_ids, positives, train_interactions, k)[0]


def recsys_report(
    topk_ids: np.ndarray, positives: sp.csr_matrix, train_interactions: pd.DataFrame, k: int
) -> tuple[dict[str, float], Any]:
    """Evidently's NDCG, HitRate, popularity bias (ARP, coverage, Gini), Novelty and Personalization at
    ``k``, and Evidently's run (for its HTML).

    Named like ours (``"NDCG@10"``, ``"Hit@10"``, ``"ARP@10"``, ``"Coverage@10"``, ``"Gini@10"``,
    ``"Novelty@10"``, ``"Personalization@10"``); the module docstring says how each differs from ours.

    Args:
        topk_ids: (users, K) ranked item indices, -1 where no item; K >= k.
        positives: (users, n_items) CSR, non-zero where the item is a positive of that user.
        train_interactions: the training rows, with ``user_idx`` and ``item_idx``.
        k: the cut-off.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.datasets import Recsys
    from evidently.metrics import NDCG, HitRate, Novelty, Personalization, PopularityBiasMetric

    rows = _ranking_rows(topk_ids, positives, k)
    train = train_interactions[["user_idx", "item_idx"]].rename(columns={"user_idx": "user_id", "item_idx": "item_id"})
    definition = DataDefinition(
        numerical_columns=["rank", "target"], ranking=[Recsys(prediction="rank", recommendations_type="rank")]
    )
    metrics = {
        "NDCG": NDCG(k=k),
        "Hit": HitRate(k=k),
        "ARP": PopularityBiasMetric(k=k, metric="arp"),
        "Coverage": PopularityBiasMetric(k=k, metric="coverage"),
        "Gini": PopularityBiasMetric(k=k, metric="gini"),
        "Novelty": Novelty(k=k),
        "Personalization": Personalization(k=k),
    }
    run = Report(list(metrics.values())).run(
        Dataset.from_pandas(rows, data_definition=definition),
        None,
        additional_data={"current_train_data": Dataset.from_pandas(train)},
    )
    results = run.dict()["metrics"]
    out = {}
    for (name, metric), result in zip(metrics.items(), results, strict=True):
        if not result["config"]["type"].endswith(type(metric).__name__):
            raise RuntimeError(f"Evidently returned {result['config']['type']} where {name} was expected")
        out[f"{name}@{k}"] = _value_at(result["value"], k)
    return out, run


def compare_recsys(ours: dict[str, float], theirs: dict[str, float], tolerance: float) -> list[str]:
    """Names of the metrics in both dicts whose values differ beyond ``tolerance`` (absolute or relative)."""
    shared = sorted(set(ours) & set(theirs))
    return [name for name in shared if not math.isclose(ours[name], theirs[name], rel_tol=tolerance, abs_tol=tolerance)]


def _ranking_rows(topk: np.ndarray, positives: sp.csr_matrix, k: int) -> pd.DataFrame:
    """Evidently's recsys rows: every filled slot of the top ``k`` with its rank and 0/1 target, then
    every positive missing from the list at rank ``k + 1``."""
    if topk.shape[1] < k:
        raise ValueError(f"top-K lists have {topk.shape[1]} columns; need at least {k}")
    relevant = sp.csr_matrix(positives != 0, dtype=np.int8)
    users, slots = np.nonzero(topk[:, :k] >= 0)
    items = topk[users, slots]
    target = np.asarray(relevant[users, items]).ravel()
    listed = sp.csr_matrix((np.ones(len(users), dtype=np.int8), (users, items)), shape=relevant.shape)
    missed = (relevant - relevant.multiply(listed)).tocsr()
    missed.eliminate_zeros()
    miss_users, miss_items = missed.nonzero()
    return pd.DataFrame(
        {
            "user_id": np.r_[users, miss_users].astype(np.int64),
            "item_id": np.r_[items, miss_items].astype(np.int64),
            "rank": np.r_[slots + 1, np.full(len(miss_users), k + 1)].astype(np.int64),
            "target": np.r_[target, np.ones(len(miss_users))].astype(np.int64),
        }
    )


def _value_at(value: Any, k: int) -> float:
    """A single value, or the k-th entry of a per-k series ``{"rank": {...}, "value": {...}}`` read by position."""
    if not isinstance(value, dict):
        return float(value)
    order = sorted(value["rank"], key=lambda row: value["rank"][row])
    if len(order) < k:
        raise RuntimeError(f"Evidently's series stops at {len(order)} ranks; the lists are shorter than k={k}")
    return float(value["value"][order[k - 1]])
