"""Frozen text features on disk, the int8 reader, embeddings streamed into a float16 file, progress in the log."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from bertrec.model import features as features_module
from bertrec.model.embed import embed_catalogue, encode_items
from bertrec.model.encoder import Int8Linear, TextEncoder
from bertrec.model.features import CACHE_FOLDER, ItemTextFeatures, catalogue_features, row_cosines
from bertrec.model.scorer import TowerScorer
from bertrec.model.towers import TowerConfig, TwoTower
from bertrec.model.vectors import read_embeddings, stream_embeddings, write_embeddings

WORDS = ["action", "comedy", "drama", "horror", "romance", "war", "space", "robot", "love", "ghost"]
TEXTS = [f"{WORDS[i % 10]} {WORDS[(i // 10 + 3) % 10]} movie" for i in range(30)] + [
    "the space robot movie of 1995 and the ghost city night"
]


@pytest.fixture(scope="module")
def encoder(tiny_encoder) -> TextEncoder:
    return TextEncoder.load(str(tiny_encoder), device="cpu")


def count_forwards(encoder: TextEncoder) -> list[int]:
    calls: list[int] = []
    encoder.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def cached_files(root) -> list:
    return sorted((root / CACHE_FOLDER).glob("*.npy"))


def test_frozen_features_are_cached_as_float16_memmap_and_reused(tiny_encoder, tmp_path):
    # Given a frozen encoder whose forward passes are counted
    encoder = TextEncoder.load(str(tiny_encoder), device="cpu")
    calls = count_forwards(encoder)
    # When the catalogue's features are built twice with the same cache folder
    first = ItemTextFeatures(encoder, TEXTS, "all", batch_size=8, cache_dir=tmp_path)
    encoded = len(calls)
    second = ItemTextFeatures(encoder, TEXTS, "all", batch_size=8, cache_dir=tmp_path)
    # Then the first encoded the texts, the second only read the one file, float16 and memory-mapped
    assert encoded == 4  # ceil(31 / 8) batches
    assert len(calls) == encoded
    (path,) = cached_files(tmp_path)
    assert isinstance(second.table, np.memmap) and second.table.dtype == np.float16
    assert second.table.shape == (len(TEXTS), 32)
    assert np.array_equal(np.load(path), first.table)
    # And the features are those of the encoder, within float16 rounding
    exact = encoder.features(TEXTS, 8)
    assert np.allclose(second.table.astype(np.float32), exact, rtol=2e-3, atol=2e-3)
    assert row_cosines(second.table, exact).min() > 0.9999
    items = torch.tensor([3, 0, 30])
    assert second(items).dtype == torch.float32
    assert torch.equal(second(items), torch.from_numpy(second.table[[3, 0, 30]].astype(np.float32)))


def test_cache_is_keyed_by_content(tiny_encoder, tmp_path):
    # Given a cache built for the catalogue
    encoder = TextEncoder.load(str(tiny_encoder), device="cpu")
    ItemTextFeatures(encoder, TEXTS, "all", 8, cache_dir=tmp_path)
    calls = count_forwards(encoder)
    shorter = TextEncoder.load(str(tiny_encoder), max_length=4, device="cpu")
    shorter.model.register_forward_hook(lambda *_: calls.append(1))
    # When one text changes, or the same texts are read with another max_length
    ItemTextFeatures(encoder, [*TEXTS[:-1], "a love story"], "all", 8, cache_dir=tmp_path)
    ItemTextFeatures(shorter, TEXTS, "all", 8, cache_dir=tmp_path)
    # Then each is encoded afresh into its own file, and the unchanged catalogue still reads from its own
    assert len(calls) == 8
    assert len(cached_files(tmp_path)) == 3
    ItemTextFeatures(encoder, TEXTS, "all", 8, cache_dir=tmp_path)
    assert len(calls) == 8


def test_a_failed_encoding_leaves_no_cache_file(encoder, tmp_path, monkeypatch):
    # Given an encoder that fails on its third batch
    real, seen = encoder.forward, []

    def failing(batch):
        seen.append(1)
        if len(seen) == 3:
            raise RuntimeError("killed")
        return real(batch)

    monkeypatch.setattr(encoder, "forward", failing)
    with pytest.raises(RuntimeError, match="killed"):
        catalogue_features(encoder, TEXTS, 8, tmp_path, "k" * 32)
    # Then nothing is left in the cache folder, neither a file that a later run would trust nor a temporary
    assert list((tmp_path / CACHE_FOLDER).iterdir()) == []


def test_int8_linear_is_close_to_float_and_int8_vectors_to_fp32(encoder):
    # A single layer: int8 weights and 8-bit activations keep the output within about 1%
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(10, 7, 64)
    with torch.no_grad():
        ref, got = linear(x), Int8Linear(linear)(x)
    assert got.shape == ref.shape
    assert float((got - ref).norm() / ref.norm()) < 0.02
    # The whole encoder: every linear layer but the narrowing ones (feed-forward outputs) is int8,
    # the source is left as it was, and the vectors keep their direction
    int8 = encoder.to_int8()
    linears = [m for m in encoder.model.modules() if isinstance(m, torch.nn.Linear)]
    narrowing = [m for m in linears if m.in_features > m.out_features]
    assert len(narrowing) == 2 and len(linears) > 2 * len(narrowing)
    assert sum(isinstance(m, Int8Linear) for m in int8.model.modules()) == len(linears) - len(narrowing)
    assert [m.in_features for m in int8.model.modules() if isinstance(m, torch.nn.Linear)] == [64, 64]
    fp32, quant = encoder.features(TEXTS, 8), int8.features(TEXTS, 8)
    assert not np.array_equal(fp32, quant)
    assert row_cosines(fp32, quant).min() > 0.999


def test_int8_applies_to_a_frozen_encoder_only(tiny_encoder, monkeypatch):
    frozen = ItemTextFeatures(TextEncoder.load(str(tiny_encoder), device="cpu"), TEXTS, "all", 8, precision="int8")
    assert frozen.precision == "int8" and frozen.encoder is not frozen.float_encoder
    assert frozen.float_encoder.model.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
    tuned = ItemTextFeatures(TextEncoder.load(str(tiny_encoder), device="cpu"), TEXTS, 1, 8, precision="int8")
    assert tuned.precision == "fp32" and tuned.encoder is tuned.float_encoder
    # When int8 drifts from fp32 on the probe texts (here: a bar no encoder can pass), fp32 is used
    monkeypatch.setattr(features_module, "INT8_MIN_COSINE", 1.01)
    fallback = ItemTextFeatures(TextEncoder.load(str(tiny_encoder), device="cpu"), TEXTS, "all", 8, precision="int8")
    assert fallback.precision == "fp32" and fallback.encoder is fallback.float_encoder
    with pytest.raises(ValueError, match="fp16"):
        ItemTextFeatures(TextEncoder.load(str(tiny_encoder), device="cpu"), TEXTS, "all", 8, precision="fp16")


def tiny_scorer(encoder: TextEncoder) -> TowerScorer:
    torch.manual_seed(0)
    config = TowerConfig(
        n_items=len(TEXTS),
        text_dim=32,
        dim=16,
        item_repr="hybrid",
        user_encoder="sequence",
        max_history=4,
        layers=1,
        heads=2,
        dropout=0.0,
        temperature=0.1,
    )
    features = ItemTextFeatures(encoder, TEXTS, "all", 8)
    titles = np.array(TEXTS, dtype=object)
    return TowerScorer(TwoTower(config), features, titles, torch.device("cpu"))


def catalogue() -> pd.DataFrame:
    return pd.DataFrame(
        {"item_idx": np.arange(len(TEXTS)), "item_id": [f"i{i}" for i in range(len(TEXTS))], "text": TEXTS}
    )


def test_streamed_embeddings_equal_the_in_memory_ones(encoder, tmp_path):
    # Given a small two-tower model over the tiny encoder
    scorer, items = tiny_scorer(encoder), catalogue()
    in_memory, stats = embed_catalogue(scorer, items, batch_size=8)
    write_embeddings(in_memory, items, tmp_path / "memory", stats)
    # When the same catalogue is streamed batch by batch into the float16 file
    folder, streamed_stats = stream_embeddings(
        items, tmp_path / "stream", 16, lambda out: embed_catalogue(scorer, items, 8, out=out)[1]
    )
    # Then the file holds the same bytes as the in-memory path writes, and reads back the same
    assert streamed_stats.n_items == len(TEXTS) and streamed_stats.dim == 16
    saved = np.load(folder / "vectors.npy")
    assert saved.dtype == np.float16
    assert np.array_equal(saved, np.load(tmp_path / "memory" / "embeddings" / "vectors.npy"))
    assert np.array_equal(saved, in_memory.astype(np.float16))
    assert np.array_equal(read_embeddings(tmp_path / "stream")[0], read_embeddings(tmp_path / "memory")[0])


def test_embedding_a_frozen_catalogue_reuses_its_features(encoder, monkeypatch):
    # Given a model whose frozen encoder's features of the catalogue it holds
    scorer, items = tiny_scorer(encoder), catalogue()
    read_afresh = encode_items(scorer, items["text"].tolist(), items["item_idx"].to_numpy(), 8, progress=False)
    # When the catalogue is embedded, with the encoder unable to run
    monkeypatch.setattr(TextEncoder, "forward", lambda *a: pytest.fail("the encoder ran"))
    vectors, stats = embed_catalogue(scorer, items, batch_size=8)
    # Then the vectors are the item tower over those features: the text path's, up to float16 rounding
    assert stats.n_items == len(TEXTS)
    assert np.abs(vectors - read_afresh).max() < 2e-3
    assert np.min(np.sum(vectors * read_afresh, axis=1)) > 0.999


def test_a_failed_stream_keeps_the_previous_embeddings(encoder, tmp_path):
    scorer, items = tiny_scorer(encoder), catalogue()
    stream_embeddings(items, tmp_path, 16, lambda out: embed_catalogue(scorer, items, 8, out=out)[1])
    before = np.load(tmp_path / "embeddings" / "vectors.npy")

    def crash(out: np.ndarray):
        out[:] = 0
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        stream_embeddings(items, tmp_path, 16, crash)
    assert np.array_equal(np.load(tmp_path / "embeddings" / "vectors.npy"), before)
    assert [p.name for p in tmp_path.iterdir()] == ["embeddings"]


def test_encoding_and_embedding_log_progress(encoder, caplog):
    scorer, items = tiny_scorer(encoder), catalogue()
    with caplog.at_level(logging.INFO, logger="bertrec.progress"):
        encoder.features(TEXTS, 8, progress=True, every=0)
        encode_items(scorer, TEXTS, items["item_idx"].to_numpy(), 8, every=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "bertrec.progress"]
    assert all("/s, ETA " in line for line in lines)
    assert [line.split(" texts")[0] for line in lines if line.startswith("encode")] == [
        "encode: 8/31",
        "encode: 16/31",
        "encode: 24/31",
    ]
    assert [line.split(" items")[0] for line in lines if line.startswith("embed")] == [
        "embed: 8/31",
        "embed: 16/31",
        "embed: 24/31",
    ]
