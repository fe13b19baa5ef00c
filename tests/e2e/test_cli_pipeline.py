"""The whole CLI on a small synthetic log: prepare -> split -> train -> embed -> index -> evaluate -> recommend."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from bertrec.cli import app
from bertrec.errors import ServingError

from builders import project_args, run_steps


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("cli")
    args = project_args(root, tiny_encoder)
    return root, args, run_steps(args)


def test_bundle_has_its_three_parts(project):
    root, _, outputs = project
    bundle = root / "bundle"
    assert (bundle / "model" / "weights.safetensors").exists() and (bundle / "model" / "encoder").is_dir()
    assert json.loads((bundle / "embeddings" / "embeddings.json").read_text())["items_per_second"] > 0
    assert json.loads((bundle / "index" / "index.json").read_text())["recall_at_10"] == 1.0
    assert not (bundle / "checkpoints").exists()
    assert "items/s" in outputs["embed"] and "recall@10 vs exact 1.0000" in outputs["index"]


def test_evaluate_puts_the_model_beside_the_baselines(project):
    root, _, outputs = project
    report = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert report["split"] == "loo"
    results = report["results"]
    assert set(results) == {"bertrec", "popular", "itemknn"}
    assert results["bertrec"]["test"]["NDCG@10"] > results["popular"]["test"]["NDCG@10"]
    assert "| bertrec |" in outputs["evaluate"]
    # the baselines' figures are those `bertrec baselines` saved for the same data and config
    saved = json.loads((root / "metrics" / "baselines.json").read_text())["splits"]["loo"]
    assert results["itemknn"] == saved["itemknn"]


def test_recommend_for_a_user_and_a_history(project):
    _, args, _ = project
    runner = CliRunner()
    by_user = runner.invoke(app, ["recommend", *args, "--user", "3", "--k", "5"])
    assert by_user.exit_code == 0, by_user.output
    ranked = [line for line in by_user.output.splitlines() if re.match(r"^\s*\d+\. ", line)]
    assert len(ranked) == 5 and all("because:" in line for line in ranked)
    unknown = runner.invoke(app, ["recommend", *args, "--history", "1,zzz"])
    assert unknown.exit_code == ServingError.exit_code and "item id 'zzz' is not in the catalogue" in unknown.output
    stranger = runner.invoke(app, ["recommend", *args, "--user", "nobody"])
    assert stranger.exit_code == ServingError.exit_code and "user 'nobody' is not in" in stranger.output


def test_a_step_prints_faiss_chatter_only_when_verbose(project):
    # Given a fresh process (faiss announces at import which of its builds it loads), with -v
    import subprocess
    import sys
    from pathlib import Path

    _, args, _ = project
    loud = subprocess.run(
        [str(Path(sys.executable).parent / "bertrec"), "-v", "index", *args], capture_output=True, text=True
    )
    # Then faiss's lines show; without -v the stages' own processes never print them (test_dvc_pipeline)
    assert loud.returncode == 0 and "recall@10 vs exact" in loud.stdout and "faiss.loader" in loud.stderr
