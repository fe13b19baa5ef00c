"""The protocol check on real MovieLens-100K: the CLI's popularity figures equal PROTOCOL.md's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bertrec.cli import app
from bertrec.ranking.metrics import head_items
from bertrec.ranking.results import BASELINES_TOPK

from conftest import paths_under

# PROTOCOL.md: popularity on ml-100k `loo` test, computed exactly as the protocol says.
PROTOCOL_POPULAR = {
    "NDCG@10": 0.0449,
    "Hit@10": 0.0859,
    "MRR@10": 0.0326,
    "Coverage@10": 0.0541,
    "NDCG@20": 0.0550,
    "Hit@20": 0.1262,
}
PROTOCOL_HEAD_ITEMS = 533


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, recbole_wheel, tiny_encoder):
    """prepare, split and baselines through the CLI on ml-100k, fetched by the recbole-wheel route."""
    root = tmp_path_factory.mktemp("ml100k")
    (root / "cache" / "wheels").mkdir(parents=True)
    shutil.copy(recbole_wheel, root / "cache" / "wheels" / recbole_wheel.name)
    sets = [
        *paths_under(root),
        "data.routes=[recbole-wheel]",
        f"model.encoder={tiny_encoder}",
        "baselines.models=[popular, itemknn, text-zero-shot]",  # sasrec: bench/model_table.py
    ]
    args = [a for s in sets for a in ("--set", s)]
    runner = CliRunner()
    outputs = {}
    for step in ("prepare", "split", "baselines"):
        result = runner.invoke(app, [step, "--params", str(root / "absent.yaml"), *args])
        assert result.exit_code == 0, result.output
        outputs[step] = result.output
    return root, outputs


def test_popular_reproduces_the_protocol_figures(pipeline):
    root, _ = pipeline
    report = json.loads((root / "metrics" / "baselines.json").read_text())
    popular = report["splits"]["loo"]["popular"]["test"]
    assert {k: round(popular[k], 4) for k in PROTOCOL_POPULAR} == PROTOCOL_POPULAR


def test_head_holds_533_items(pipeline):
    root, _ = pipeline
    train = pd.read_parquet(root / "splits" / "loo" / "train.parquet")
    popularity = np.bincount(train["item_idx"], minlength=1682)
    assert head_items(popularity).sum() == PROTOCOL_HEAD_ITEMS


def test_manifest_records_the_route_and_counts(pipeline):
    root, outputs = pipeline
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    assert manifest["route"] == "recbole-wheel"
    assert (manifest["n_users"], manifest["n_items"], manifest["rows"]["kept"]) == (943, 1682, 100_000)
    assert "ml-100k via recbole-wheel" in outputs["prepare"]


def test_every_split_and_ranking_mode_is_evaluated(pipeline):
    # Then loo and ratio have valid/test, cold_items has both ranking modes, for all three baselines
    root, outputs = pipeline
    splits = json.loads((root / "metrics" / "baselines.json").read_text())["splits"]
    assert set(splits["loo"]["itemknn"]) == {"valid", "test"}
    assert set(splits["ratio"]["popular"]) == {"valid", "test"}
    assert set(splits["cold_items"]["text-zero-shot"]) == {"valid", "test_all", "test_new"}
    # Among new items only, every recommended item is new (popularity 0, all tail)
    assert splits["cold_items"]["text-zero-shot"]["test_new"]["ARP@10"] == 0.0
    # Only the text model can put a new item into a list ranked over the whole catalogue
    assert splits["cold_items"]["popular"]["test_all"]["Hit@10"] == 0.0
    assert "| popular | 0.0449 | 0.0859 | 0.0326 |" in outputs["baselines"]


def test_saved_topk_lists_reproduce_the_metrics(pipeline):
    # Any reported number must be computable from the saved top-K lists
    root, _ = pipeline
    lists = pd.read_parquet(root / "outputs" / BASELINES_TOPK / "loo" / "itemknn.test.parquet")
    test = pd.read_parquet(root / "splits" / "loo" / "test.parquet").set_index("user_idx")["item_idx"]
    hits = [test[u] in row[:10] for u, row in zip(lists["user_idx"], lists["item_idx"], strict=True)]
    report = json.loads((root / "metrics" / "baselines.json").read_text())
    assert np.mean(hits) == pytest.approx(report["splits"]["loo"]["itemknn"]["test"]["Hit@10"])
