"""Text features of items for the item tower: cached when the encoder is frozen, computed when tuned.

With ``train.freeze_layers: all`` the encoder never changes, so each item's mean-pooled vector is
computed once and the towers train on top of it (the fast path on CPU). Those features are float16
and kept on disk under ``paths.cache``/text_features, one ``.npy`` per content hash of (encoder
weights and tokenizer, ``max_length``, precision, texts), memory-mapped when read: a second run on
the same catalogue reads them instead of encoding it again. With a number, the encoder's
embeddings and its lowest ``freeze_layers`` layers stay fixed and the rest is fine-tuned: features
are then recomputed through the encoder at every step, in float32.

``model.encode_precision: int8`` encodes with an int8 copy of a frozen encoder on CPU
(:meth:`~bertrec.model.encoder.TextEncoder.to_int8`); never when fine-tuning.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertrec.compute.engine import Engine
from bertrec.io import atomic_file
from bertrec.model.encoder import TextEncoder

log = logging.getLogger(__name__)

CACHE_FOLDER = "text_features"  # under paths.cache
FEATURE_DTYPE = np.float16
PRECISIONS = ("fp32", "int8")
# int8 is used only when its vectors of the first PROBE_TEXTS catalogue texts keep this mean cosine to fp32's
# (CPUs without VNNI may saturate 8-bit products; measured figures: bench/reports/encode_speed.md)
PROBE_TEXTS = 64
INT8_MIN_COSINE = 0.99


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


def frozen_encoder(encoder: TextEncoder, precision: str, probe: list[str]) -> tuple[TextEncoder, str]:
    """The encoder that reads texts for a frozen model, and its precision ("fp32" or "int8").

    ``int8`` gives an int8 copy on CPU when its vectors of ``probe`` texts keep a mean cosine of
    ``INT8_MIN_COSINE`` to fp32's; otherwise (another device, or a CPU where int8 loses quality) the
    fp32 encoder, with a log line saying why.

    Raises:
        ValueError: ``precision`` is not one of ``PRECISIONS``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"encode precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return encoder, "fp32"
    if encoder.device.type != "cpu":
        log.info("encode_precision int8 runs on CPU only; encoding in fp32 on %s", encoder.device)
        return encoder, "fp32"
    int8 = encoder.to_int8()
    if probe:
        cosine = float(np.mean(row_cosines(encoder.features(probe), int8.features(probe))))
        if cosine < INT8_MIN_COSINE:
            log.warning(
                "int8 encoding keeps a mean cosine of %.4f to fp32 on %d texts, below %.2f; encoding in fp32",
                cosine,
                len(probe),
                INT8_MIN_COSINE,
            )
            return encoder, "fp32"
        log.info("encoding in int8 (mean cosine to fp32 %.4f on %d texts)", cosine, len(probe))
    return int8, "int8"


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` (n, d) with the same row of ``b``: (n,)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("ij,ij->i", a, b) / norms


def features_key(fingerprint: str, precision: str, texts: list[str]) -> str:
    """The cache key of a catalogue's features: a hash of the encoder's fingerprint, the precision and the texts."""
    digest = hashlib.sha256(f"{fingerprint}\x00{precision}\x00{len(texts)}\x00".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def catalogue_features(
    encoder: TextEncoder,
    texts: list[str],
    batch_size: int,
    cache_dir: Path | None = None,
    key: str | None = None,
    engine: Engine | None = None,
) -> np.ndarray:
    """Features of the catalogue's ``texts``, float16 (n, hidden), with progress in the log.

    With ``cache_dir`` and ``key``: read from ``cache_dir/text_features/KEY.npy`` (memory-mapped, read
    only) when there, else encoded straight into that file, which appears atomically when complete.
    Without: encoded in memory. With a Ray ``engine``, Ray Data actors encode (bertrec.compute.encode).
    """
    shape = (len(texts), encoder.model.config.hidden_size)
    if cache_dir is None or key is None:
        return _encode(encoder, texts, batch_size, np.empty(shape, dtype=FEATURE_DTYPE), engine)
    path = Path(cache_dir) / CACHE_FOLDER / f"{key}.npy"
    if path.exists():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape and cached.dtype == FEATURE_DTYPE:
            log.info("text features of %d items read from %s", len(texts), path)
            return cached
        log.warning("%s holds %s %s, expected %s float16; encoding again", path, cached.shape, cached.dtype, shape)
    log.info("encoding %d item texts into %s", len(texts), path)
    with atomic_file(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=FEATURE_DTYPE, shape=shape)
        _encode(encoder, texts, batch_size, out, engine)
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def _encode(encoder: TextEncoder, texts: list[str], batch_size: int, out: np.ndarray, engine: Engine | None):
    if engine is not None and engine.name == "ray":
        from bertrec.compute.encode import encode_on_ray

        return encode_on_ray(encoder, texts, batch_size, out, engine)
    return encoder.features(texts, batch_size, progress=True, out=out)


class ItemTextFeatures(nn.Module):
    """(n_items, text_dim) features, from a float16 table (frozen encoder) or through the encoder (tuned)."""

    def __init__(
        self,
        encoder: TextEncoder,
        texts: list[str],
        freeze_layers: int | str,
        batch_size: int,
        cache: np.ndarray | None = None,
        cache_dir: Path | None = None,
        precision: str = "fp32",
        engine: Engine | None = None,
    ) -> None:
        """``cache``: features already computed for ``texts`` (a saved bundle), used when frozen.

        ``engine``: where a frozen encoder's features are computed when they are not in the cache.

        ``cache_dir``: where frozen features are kept between runs (``paths.cache``); None keeps them
        in memory. ``precision``: ``model.encode_precision``, applied only when the encoder is frozen.
        """
        super().__init__()
        self.float_encoder = encoder  # the float32 weights: what a bundle saves
        self.transformer = encoder.model  # registered, so the optimizer and .to() see its weights
        self.tuned = freeze(encoder.model, freeze_layers) > 0
        self.batch_size = batch_size
        self.table: np.ndarray | None = None  # (n_items, text_dim) when frozen; float16, often a memmap
        self._on_device: torch.Tensor | None = None  # the table on an accelerator
        if self.tuned:
            if precision != "fp32":
                log.info("model.encode_precision=%s applies to a frozen encoder; fine-tuning reads in fp32", precision)
            self.encoder, self.precision = encoder, "fp32"
            tokens = encoder.tokenizer(
                texts, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
            )
            self.register_buffer("input_ids", tokens["input_ids"], persistent=False)
            self.register_buffer("attention_mask", tokens["attention_mask"], persistent=False)
            return
        self.encoder, self.precision = frozen_encoder(encoder, precision, texts[:PROBE_TEXTS])
        if cache is not None:
            self.table = cache
        else:
            key = features_key(encoder.fingerprint(), self.precision, texts) if cache_dir is not None else None
            self.table = catalogue_features(self.encoder, texts, batch_size, cache_dir, key, engine)

    def raw_features(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, un-normalised encoder vectors of ``texts``: float32 (n, text_dim)."""
        return self.encoder.features(texts, self.batch_size)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Features of ``items`` (n,): float32 (n, text_dim)."""
        if self.table is not None:
            if items.device.type == "cpu":
                return torch.from_numpy(np.asarray(self.table[items.numpy()], dtype=np.float32))
            if self._on_device is None or self._on_device.device != items.device:
                self._on_device = torch.from_numpy(np.array(self.table)).to(items.device)
            return self._on_device[items].float()
        ids = self.input_ids[items]
        mask = self.attention_mask[items]
        width = int(mask.sum(1).max())  # drop columns that are padding for every row
        return self.encoder.forward({"input_ids": ids[:, :width], "attention_mask": mask[:, :width]})
