"""The BERT two-tower recommender: an item tower that reads text, a user tower over the history.

Item tower: text features (mean-pooled encoder output) -> projection, plus, for ``hybrid``, a
learned ID embedding for items seen in training (new items have none); L2-normalised.
User tower, ``sequence``: a small causal Transformer over the item-tower vectors of the user's most
recent items, with position embeddings; the output at the last position is the user vector.
User tower, ``text``: the encoder reads the user's recent titles joined into one text.
Scores are cosine similarities divided by a temperature (``score: cosine``), or dot products of
unnormalised vectors (``score: dot``: a vector's norm can then carry popularity, as in SASRec).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

ITEM_REPRS = ("text", "id", "hybrid")
USER_ENCODERS = ("sequence", "text")
SCORES = ("cosine", "dot")


@dataclass(frozen=True)
class TowerConfig:
    """Shapes and choices of the two towers (saved with the weights); defaults live in params (ModelParams)."""

    n_items: int
    text_dim: int
    dim: int
    item_repr: str
    user_encoder: str
    max_history: int
    layers: int
    heads: int
    dropout: float
    temperature: float
    # Added after the first bundles: their defaults are what those bundles were trained with.
    score: str = "cosine"
    ff_mult: int = 2  # feed-forward width of the sequence tower, in multiples of dim
    ensemble: int = 1  # members (EnsembleTowers): dim is then the width of their concatenated vectors
    id_dropout: float = 0.0  # hybrid, training only: share of item vectors computed without their ID part

    @property
    def unit_norm(self) -> bool:
        """Whether item and user vectors are L2-normalised (cosine scores of one model)."""
        return self.score == "cosine" and self.ensemble == 1

    def to_dict(self) -> dict:
        return asdict(self)


class ItemTower(nn.Module):
    """Item vectors from text features and/or ID embeddings: (n, text_dim) -> (n, dim), unit norm for cosine."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.use_text = config.item_repr in ("text", "hybrid")
        self.use_id = config.item_repr in ("id", "hybrid")
        if self.use_text:
            self.project = nn.Sequential(
                nn.Linear(config.text_dim, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim)
            )
        if self.use_id:
            self.ids = nn.Embedding(config.n_items, config.dim)
            nn.init.normal_(self.ids.weight, std=0.02 if self.use_text or not config.unit_norm else 0.1)
        # Items seen in training; the ID part of the others is left out (cold start).
        self.register_buffer("known", torch.ones(config.n_items, dtype=torch.bool))

    def forward(self, text: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
        """``text``: (n, text_dim) features of ``items`` (n,), or None for ``id``; returns (n, dim)."""
        parts = []
        if self.use_text:
            parts.append(self.project(text))
        if self.use_id:
            ids = self.ids(items.clamp(max=self.config.n_items - 1))  # (n, dim)
            known = (items < self.config.n_items) & self.known[items.clamp(max=self.config.n_items - 1)]
            if self.training and self.use_text and self.config.id_dropout > 0:
                # as if new: the text part learns to place an item alone, on the scale of warm items' scores
                known = known & (torch.rand(known.shape, device=known.device) >= self.config.id_dropout)
            parts.append(ids * known.unsqueeze(-1))
        out = torch.stack(parts).sum(0)
        return F.normalize(out, dim=-1) if self.config.unit_norm else out


class SequenceUserTower(nn.Module):
    """A causal Transformer over item vectors: (batch, L, dim) + padding mask -> (batch, L, dim)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.heads, self.unit_norm = config.heads, config.unit_norm
        self.positions = nn.Embedding(config.max_history, config.dim)
        if not config.unit_norm:  # dot: free-norm ID embeddings start at std 0.02 (SASRec's init); so do positions
            nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            dim_feedforward=config.ff_mult * config.dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, items: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``items``: (batch, L, dim) right-aligned histories; ``padding``: (batch, L) true where empty.

        Returns the output at every position, (batch, L, dim), unit norm for cosine; position t sees items <= t.
        """
        length = items.shape[1]
        # Right-aligned: the newest item always has the last position embedding.
        pos = self.positions.weight[-length:]  # (L, dim)
        x = self.dropout(items * (items.shape[-1] ** 0.5) + pos)
        out = self.norm(self.encoder(x, mask=attention_mask(padding, self.heads)))
        return F.normalize(out, dim=-1) if self.unit_norm else out


def attention_mask(padding: torch.Tensor, heads: int) -> torch.Tensor:
    """Causal mask that also hides empty positions: (batch, L) -> (batch * heads, L, L), True = blocked.

    Every position may attend to itself, so no row is fully blocked (that would give NaN).
    """
    length = padding.shape[1]
    future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=padding.device), diagonal=1)
    self_only = torch.eye(length, dtype=torch.bool, device=padding.device)
    blocked = (future | padding.unsqueeze(1)) & ~self_only  # (batch, L, L)
    return blocked.repeat_interleave(heads, dim=0)


class TextUserTower(nn.Module):
    """User vectors from the encoder's features of the joined recent titles: (batch, text_dim) -> (batch, dim)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.unit_norm = config.unit_norm
        self.project = nn.Sequential(
            nn.Linear(config.text_dim, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim)
        )

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        out = self.project(text)
        return F.normalize(out, dim=-1) if self.unit_norm else out


class TwoTower(nn.Module):
    """Both towers and the temperature of the score."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        if config.item_repr not in ITEM_REPRS or config.user_encoder not in USER_ENCODERS or config.score not in SCORES:
            raise ValueError(
                f"item_repr must be one of {ITEM_REPRS}, user_encoder one of {USER_ENCODERS}, score one of {SCORES}"
            )
        self.config = config
        self.items = ItemTower(config)
        self.users: nn.Module = (
            SequenceUserTower(config) if config.user_encoder == "sequence" else TextUserTower(config)
        )

    def user_vectors(self, history_vectors: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Sequence tower at every position: (batch, L, dim)."""
        return self.users(history_vectors, padding)

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Cosine (or dot product) / temperature: (..., dim) x (n, dim) -> (..., n)."""
        return users @ items.T / self.config.temperature


class EnsembleTowers(nn.Module):
    """K two-tower models (trained with different seeds) whose scores are averaged.

    Item vectors are the members' concatenated, user vectors the members' concatenated and divided
    by K, so one inner product (divided by the temperature they share) is the members' mean score:
    the embeddings, the index and serving treat an ensemble like one model of width K x dim. The user
    towers read the history through the same concatenated vectors, each its own part.
    """

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        if config.ensemble < 2 or config.dim % config.ensemble:
            raise ValueError(f"an ensemble needs 2 or more members and a width they share; got {config}")
        self.config = config
        member = replace(config, dim=config.dim // config.ensemble, ensemble=1)
        self.members = nn.ModuleList(TwoTower(member) for _ in range(config.ensemble))
        self.items = _EnsembleItems(self)
        self.users = _EnsembleUsers(self)

    @classmethod
    def of(cls, members: list[TwoTower]) -> EnsembleTowers:
        """The ensemble of trained ``members`` (same configuration)."""
        config = replace(members[0].config, dim=members[0].config.dim * len(members), ensemble=len(members))
        ensemble = cls(config)
        for mine, trained in zip(ensemble.members, members, strict=True):
            mine.load_state_dict(trained.state_dict())
        return ensemble.to(next(members[0].parameters()).device)

    def user_vectors(self, history_vectors: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        parts = history_vectors.chunk(len(self.members), dim=-1)
        outs = [m.user_vectors(part, padding) for m, part in zip(self.members, parts, strict=True)]
        return torch.cat(outs, dim=-1) / len(self.members)

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return users @ items.T / self.config.temperature


class _EnsembleItems:
    """The members' item towers as one: concatenated vectors (not a module: the members own the weights)."""

    def __init__(self, owner: EnsembleTowers) -> None:
        self.owner = owner

    def _first(self) -> ItemTower:
        return self.owner.members[0].items

    use_text = property(lambda self: self._first().use_text)
    use_id = property(lambda self: self._first().use_id)
    known = property(lambda self: self._first().known)

    def __call__(self, text: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.items(text, items) for m in self.owner.members], dim=-1)


class _EnsembleUsers:
    """The members' ``text`` user towers as one: concatenated vectors divided by K."""

    def __init__(self, owner: EnsembleTowers) -> None:
        self.owner = owner

    def __call__(self, text: torch.Tensor) -> torch.Tensor:
        members = self.owner.members
        return torch.cat([m.users(text) for m in members], dim=-1) / len(members)


def make_towers(config: TowerConfig) -> TwoTower | EnsembleTowers:
    """The towers a saved configuration describes: one model, or an ensemble of ``config.ensemble``."""
    return EnsembleTowers(config) if config.ensemble > 1 else TwoTower(config)
