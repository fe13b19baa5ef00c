"""Ensembles of the two-tower model: K members trained with seeds ``train.seed`` .. + K-1, scores averaged.

:func:`train_model` is what the train stage, `bertrec tune` and the benches call: :func:`train`
when ``model.ensemble`` is 1, else each member in turn and their
:class:`~bertrec.model.towers.EnsembleTowers`, whose one inner product is the members' mean score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bertrec.config import Params
from bertrec.data.split import Split
from bertrec.errors import ConfigError
from bertrec.model.scorer import TowerScorer
from bertrec.model.towers import EnsembleTowers
from bertrec.model.train import PRIMARY, EpochLog, TrainResult, train
from bertrec.ranking.evaluate import build_cases, rank_cases, reference_of, train_set
from bertrec.ranking.metrics import compute_metrics

log = logging.getLogger(__name__)

Fit = Callable[[Params, Path, Callable[[EpochLog], None] | None, TowerScorer | None], TrainResult]
Initial = Callable[[Params, int], TowerScorer | None]  # (a member's params, its number) -> its starting model


def member_params(params: Params, member: int) -> Params:
    """Member ``member``'s params of an ensemble: one model (``model.ensemble`` 1) with seed ``train.seed`` + member.

    Members share the item text features, so an ensemble needs a frozen encoder (ConfigError otherwise).
    """
    if params.train.freeze_layers != "all" and params.model.item_repr != "id":
        raise ConfigError("model.ensemble > 1 needs a frozen encoder (train.freeze_layers: all): members share it")
    return params.model_copy(
        update={
            "model": params.model.model_copy(update={"ensemble": 1}),
            "train": params.train.model_copy(update={"seed": params.train.seed + member}),
        }
    )


def ensemble_of(members: list[TowerScorer]) -> TowerScorer:
    """The scorer of trained ``members`` (same configuration and items) averaged, in eval mode."""
    first = members[0]
    scorer = TowerScorer(EnsembleTowers.of([m.model for m in members]), first.text_features, first.titles, first.device)
    scorer.model.eval()
    return scorer


def train_model(
    params: Params,
    split: Split,
    items: pd.DataFrame,
    work_dir: Path,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    fit: Fit | None = None,
    initial: Initial | None = None,
) -> TrainResult:
    """:func:`train` once, or with ``model.ensemble`` K > 1, K members (seeds ``train.seed`` + k) averaged.

    ``fit(params, work_dir, on_epoch_end, scorer)`` trains one model (default: :func:`train` here; the
    train stage passes Ray Train's). ``initial(params, k)`` builds member k's initial model (a warm start,
    :mod:`bertrec.model.warm`); without it each member starts fresh. Members train one after the
    other, each early-stopping on its own; ``on_epoch_end`` sees the first member's epochs. The
    ensemble's validation metrics are its own.
    """
    fit = fit or (lambda member, folder, hook, scorer: train(member, split, items, folder, hook, scorer=scorer))
    initial = initial or (lambda member, k: None)
    k = params.model.ensemble
    if k == 1:
        return fit(params, work_dir, on_epoch_end, initial(params, 0))
    results = []
    for member in range(k):
        settings = member_params(params, member)
        log.info("ensemble member %d of %d (seed %d)", member + 1, k, settings.train.seed)
        hook = on_epoch_end if member == 0 else None
        results.append(fit(settings, Path(work_dir) / f"member-{member}", hook, initial(settings, member)))
    scorer = ensemble_of([r.scorer for r in results])
    cases = build_cases(split, "valid").sample(params.train.valid_users, params.train.seed)
    topk = rank_cases(scorer, cases, 20, params.eval.batch_size)
    valid = compute_metrics(topk, cases.positives, reference_of(train_set(split, items)), (10, 20), cases.candidates)
    log.info(
        "ensemble of %d: valid NDCG@10 %.4f (members %s)", k, valid[PRIMARY], [r.best_valid[PRIMARY] for r in results]
    )
    members = [
        {"seed": params.train.seed + m, "best_epoch": r.best_epoch, "best_valid": r.best_valid}
        for m, r in enumerate(results)
    ]
    return TrainResult(scorer, results[0].epochs, results[0].best_epoch, valid, members)
