"""The trained two-tower model behind the :class:`~bertrec.ranking.scoring.Scorer` interface.

:class:`TowerScorer` joins the towers (bertrec.model.towers) with the items' text features
(bertrec.model.features) and answers ``score(histories)`` like every baseline, so evaluation, early
stopping and the baselines table treat it the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bertrec.compute.engine import Engine
from bertrec.config import Params
from bertrec.data.split import Split
from bertrec.model.encoder import TextEncoder, pick_device
from bertrec.model.features import ItemTextFeatures
from bertrec.model.towers import TowerConfig, TwoTower
from bertrec.ranking.scoring import Histories, Scorer

USER_TEXT_TITLES = 20
USER_TEXT_MAX_LENGTH = 256


def user_texts(histories: Histories, titles: np.ndarray, n: int = USER_TEXT_TITLES) -> list[str]:
    """Each user's most recent ``n`` titles, newest first, joined into one text (for the ``text`` user tower)."""
    recent = histories.last(n)
    return ["; ".join(titles[recent[u][::-1]]) for u in range(len(recent))]


def right_align(histories: Histories, length: int) -> np.ndarray:
    """(batch, length) item indices, the newest item in the last column, -1 before the oldest."""
    recent = histories.last(length)
    out = np.full((len(recent), length), -1, dtype=np.int64)
    lengths = recent.lengths()
    rows = np.repeat(np.arange(len(recent)), lengths)
    cols = (
        length - np.repeat(lengths, lengths) + (np.arange(len(recent.items)) - np.repeat(recent.indptr[:-1], lengths))
    )
    out[rows, cols] = recent.items
    return out


class TowerScorer(Scorer):
    """A two-tower model and its item text features, scoring the whole catalogue."""

    name = "bertrec"

    def __init__(
        self, model: TwoTower, text_features: ItemTextFeatures | None, titles: np.ndarray, device: torch.device
    ) -> None:
        self.model = model.to(device)
        self.text_features = text_features.to(device) if text_features is not None else None
        self.titles = titles
        self.device = device
        self.n_items = model.config.n_items
        self._catalogue: tuple[tuple, torch.Tensor] | None = None  # (parameter versions, item vectors)
        # Re-ranking for coverage (bertrec.ranking.rerank): a per-item penalty subtracted from every score; None: off.
        self.penalty: np.ndarray | None = None
        self.new_item_penalty = 0.0  # the penalty of an item added to the catalogue later (bertrec.ranking.rerank)

    def fit(self, train) -> TowerScorer:  # trained by bertrec.model.train.train, not here
        return self

    def to(self, device: torch.device | str) -> TowerScorer:
        """This scorer moved to ``device`` (e.g. on a Ray GPU worker that received it from a CPU driver)."""
        device = torch.device(device)
        self.model.to(device)
        if self.text_features is not None:
            self.text_features.to(device)
            for encoder in (self.text_features.encoder, self.text_features.float_encoder):
                encoder.device = device
        self.device, self._catalogue = device, None
        return self

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item-tower vectors of ``items`` (default: the catalogue): (n, dim)."""
        if items is None:
            items = torch.arange(self.n_items, device=self.device)
        text = self.text_features(items) if self.model.items.use_text else None
        return self.model.items(text, items)

    @torch.inference_mode()
    def catalogue_vectors(self) -> torch.Tensor:
        """The whole catalogue's item vectors (n_items, dim), kept between calls until a weight changes.

        Evaluation scores the users chunk by chunk; without this, every chunk would run the item
        tower over the whole catalogue again. Any in-place update (an optimizer step, a loaded
        state) bumps a parameter's version and so invalidates the copy.
        """
        version = (self.model.training, *(p._version for p in self.model.parameters()))
        if self._catalogue is None or self._catalogue[0] != version:
            self._catalogue = (version, self.item_vectors())
        return self._catalogue[1]

    def history_vectors(
        self, inputs: torch.Tensor, vectors: torch.Tensor, candidates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(batch, L) item indices (-1 empty) -> (batch, L, dim), zeros where empty.

        ``vectors`` are the catalogue's, or those of ``candidates`` (sorted) when given.
        """
        index = inputs.clamp(min=0)
        if candidates is not None:
            index = torch.searchsorted(candidates, index)
        out = vectors[index]
        return out * (inputs >= 0).unsqueeze(-1)

    def user_text_features(self, histories: Histories) -> torch.Tensor:
        """Encoder features of the joined recent titles: (batch, text_dim)."""
        texts = user_texts(histories, self.titles)
        return torch.from_numpy(self.text_features.raw_features(texts)).to(self.device)

    @torch.inference_mode()
    def user_vectors_for(self, histories: Histories, vectors: torch.Tensor) -> torch.Tensor:
        """User vectors for evaluation and serving: (batch, dim)."""
        if self.model.config.user_encoder == "text":
            return self.model.users(self.user_text_features(histories))
        inputs = torch.from_numpy(right_align(histories, self.model.config.max_history)).to(self.device)
        return self.model.user_vectors(self.history_vectors(inputs, vectors), inputs < 0)[:, -1]

    @torch.inference_mode()
    def score(self, histories: Histories) -> np.ndarray:
        self.model.eval()
        vectors = self.catalogue_vectors()
        users = self.user_vectors_for(histories, vectors)
        scores = self.model.logits(users, vectors).float().cpu().numpy()
        if self.penalty is not None:
            scores -= self.penalty
        return scores

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.text_features is not None and self.text_features.tuned:
            state |= {f"encoder.{k}": v for k, v in self.text_features.encoder.model.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        encoder_state = {k[8:]: v for k, v in state.items() if k.startswith("encoder.")}
        if encoder_state:
            self.text_features.encoder.model.load_state_dict(encoder_state)


def build_towers(params: Params, split: Split, items: pd.DataFrame, engine: Engine | None = None) -> TowerScorer:
    """A fresh model for ``split`` configured by params (encoder loaded, features prepared, on ``engine``)."""
    mp, tp = params.model, params.train
    device = pick_device(tp.device)
    needs_text = mp.item_repr != "id" or mp.user_encoder == "text"
    features, text_dim = None, 1
    if needs_text:
        encoder = TextEncoder.load(mp.encoder, mp.max_length, str(device))
        texts, cache = items["text"].tolist(), params.paths.cache
        features = ItemTextFeatures(
            encoder,
            texts,
            tp.freeze_layers,
            mp.encode_batch_size,
            cache_dir=cache,
            precision=mp.encode_precision,
            engine=engine,
        )
        text_dim = encoder.model.config.hidden_size
    config = TowerConfig(
        n_items=split.n_items,
        text_dim=text_dim,
        dim=mp.dim,
        item_repr=mp.item_repr,
        user_encoder=mp.user_encoder,
        max_history=mp.max_history,
        layers=mp.layers,
        heads=mp.heads,
        dropout=mp.dropout,
        temperature=mp.temperature,
        score=mp.score,
        ff_mult=mp.ff_mult,
        id_dropout=mp.id_dropout,
    )
    model = TwoTower(config)
    known = np.zeros(split.n_items, dtype=bool)
    known[split.train["item_idx"].to_numpy()] = True
    model.items.known.copy_(torch.from_numpy(known))
    titles = (items["title"] if "title" in items else items["text"]).to_numpy(dtype=object)
    return TowerScorer(model, features, titles, device)
