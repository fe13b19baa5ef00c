"""SASRec as a baseline: bertrec's own ID-only sequence model, trained with SASRec's recipe.

The model a user can get from RecBole in one command (Kang & McAuley 2018; RecBole's defaults:
64-dimensional item embeddings shared by input and output, 2 layers and 2 heads, feed-forward
4 x 64, dropout 0.5, the last 50 items, dot-product scores, a softmax over the catalogue, Adam at
1e-3, early stopping on validation). It is trained by :func:`bertrec.model.train.train` with the
towers set to ``item_repr: id``, ``score: dot`` and the ``baselines.sasrec`` settings, so it shares
every detail of data handling and ranking with bertrec: the difference to bertrec is only the recipe
and the text tower. The `baselines` stage trains it on each split, so the gate's "beats the
strongest baseline" means beating SASRec on the user's own data.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bertrec.config import ModelParams, Params, TrainParams
from bertrec.data.split import Split
from bertrec.ranking.scoring import Histories, Scorer, TrainSet

log = logging.getLogger(__name__)


def sasrec_params(params: Params) -> Params:
    """``params`` with the model and training sections set to SASRec's recipe (``baselines.sasrec``).

    Only the recipe, ``train.device`` and ``train.valid_users`` come from params: bertrec's own model
    and training settings never change the baseline it is measured against.
    """
    sp = params.baselines.sasrec
    model = ModelParams(
        item_repr="id",
        user_encoder="sequence",
        score="dot",
        temperature=1.0,
        dim=sp.dim,
        layers=sp.layers,
        heads=sp.heads,
        ff_mult=sp.ff_mult,
        dropout=sp.dropout,
        max_history=sp.max_history,
    )
    train = TrainParams(
        device=params.train.device,
        valid_users=params.train.valid_users,
        lr=sp.lr,
        batch_size=sp.batch_size,
        epochs=sp.epochs,
        patience=sp.patience,
        seed=sp.seed,
        window_phase=sp.window_phase,
        loss="auto",
        logit_adjust=0.0,
        weight_decay=0.0,
        warmup_steps=0,
    )
    return params.model_copy(update={"model": model, "train": train})


class SASRec(Scorer):
    """The SASRec baseline: trained on a split's training part, early-stopped on its validation part."""

    name = "sasrec"

    def __init__(self, params: Params) -> None:
        self.params = sasrec_params(params)
        self.scorer = None
        self.best_epoch = 0

    def fit(self, train: TrainSet) -> SASRec:
        raise TypeError("SASRec early-stops on validation: fit it with fit_split(split, items)")

    def fit_split(self, split: Split, items: pd.DataFrame) -> SASRec:
        from bertrec.model.train import train  # torch: only for this baseline

        with tempfile.TemporaryDirectory(prefix="bertrec-sasrec-") as work:
            result = train(self.params, split, items, Path(work))
        self.scorer, self.best_epoch = result.scorer, result.best_epoch
        log.info(
            "sasrec on %s: best epoch %d, valid NDCG@10 %.4f",
            split.name,
            result.best_epoch,
            result.best_valid.get("NDCG@10", float("nan")),
        )
        return self

    def score(self, histories: Histories) -> np.ndarray:
        if self.scorer is None:
            raise RuntimeError("SASRec is not fitted")
        return self.scorer.score(histories)
