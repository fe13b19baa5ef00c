"""The text encoder: mean pooling, order kept through length-sorted batches, the packaged default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bertrec.config import DEFAULT_ENCODER
from bertrec.model.encoder import TextEncoder, mean_pool, resolve_encoder


def test_mean_pool_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(states, mask), torch.tensor([[2.0, 3.0]]))


def test_encode_keeps_input_order_across_batches(tiny_encoder):
    # Given texts of very different lengths, encoded in batches of 2 (sorted by length inside)
    encoder = TextEncoder.load(str(tiny_encoder))
    texts = ["the space robot movie of 1995 and the ghost city night", "war", "love story", "a"]
    batched = encoder.encode(texts, batch_size=2, progress=False)
    # Then each row equals the text encoded alone
    alone = np.vstack([encoder.encode([t], batch_size=1, progress=False) for t in texts])
    assert batched.shape == (4, 32)
    assert np.allclose(batched, alone, atol=1e-5)


def test_default_encoder_resolves_to_the_packaged_minilm():
    folder = Path(resolve_encoder(DEFAULT_ENCODER))
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert resolve_encoder("bert-base-uncased") == "bert-base-uncased"


def test_packaged_minilm_gives_meaningful_vectors():
    # The real pretrained weights load offline in float32 and place related texts closer
    encoder = TextEncoder.load(DEFAULT_ENCODER)
    assert next(encoder.model.parameters()).dtype == torch.float32
    v = encoder.encode(
        [
            "Toy Story (1995). Genres: Animation, Children's, Comedy.",
            "Aladdin (1992). Genres: Animation, Children's, Comedy, Musical.",
            "Platoon (1986). Genres: Drama, War.",
        ],
        progress=False,
    )
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
