"""Text features of items for the item tower: cached when the encoder is frozen, computed when tuned.

With ``train.freeze_layers: all`` the encoder never changes, so each item's mean-pooled vector is
computed once and the towers train on top of it (the fast path on CPU). With a number, the
encoder's embeddings and its lowest ``freeze_layers`` layers stay fixed and the rest is fine-tuned:
features are then recomputed through the encoder at every step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bertrec.model.encoder import TextEncoder


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-family encoder (``encoder.layer``)."""
    blocks = getattr(getattr(model, "encoder", None), "layer", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no encoder.layer blocks; cannot freeze layers by number")
    return blocks


def freeze(model: nn.Module, freeze_layers: int | str) -> int:
    """Freeze the embeddings and the lowest ``freeze_layers`` blocks ("all": everything); return trainable count."""
    if freeze_layers == "all":
        model.requires_grad_(False)
        return 0
    blocks = encoder_layers(model)
    model.requires_grad_(True)
    if int(freeze_layers) > 0:
        model.get_input_embeddings().requires_grad_(False)
        if hasattr(model, "embeddings"):
            model.embeddings.requires_grad_(False)
        for block in blocks[: int(freeze_layers)]:
            block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ItemTextFeatures(nn.Module):
    """(n_items, text_dim) features, from a cache (frozen encoder) or through the encoder (tuned)."""

    def __init__(
        self,
        encoder: TextEncoder,
        texts: list[str],
        freeze_layers: int | str,
        batch_size: int,
        cache: np.ndarray | None = None,
    ) -> None:
        """``cache``: features already computed for ``texts`` (a saved bundle), used when frozen."""
        super().__init__()
        self.encoder = encoder
        self.transformer = encoder.model  # registered, so the optimizer and .to() see its weights
        self.tuned = freeze(encoder.model, freeze_layers) > 0
        self.batch_size = batch_size
        if self.tuned:
            tokens = encoder.tokenizer(
                texts, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
            )
            self.register_buffer("input_ids", tokens["input_ids"], persistent=False)
            self.register_buffer("attention_mask", tokens["attention_mask"], persistent=False)
            self.cache = None
        else:
            self.cache = torch.from_numpy(cache if cache is not None else self.raw_features(texts))

    def raw_features(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, un-normalised encoder vectors of ``texts``: (n, text_dim)."""
        return self.encoder.features(texts, self.batch_size)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Features of ``items`` (n,): (n, text_dim)."""
        if self.cache is not None:
            if self.cache.device != items.device:
                self.cache = self.cache.to(items.device)
            return self.cache[items]
        ids = self.input_ids[items]
        mask = self.attention_mask[items]
        width = int(mask.sum(1).max())  # drop columns that are padding for every row
        return self.encoder.forward({"input_ids": ids[:, :width], "attention_mask": mask[:, :width]})
