"""`dvc repro` in a git repository on tiny data: everything, then nothing (`dvc status` clean), then only what a
param touches."""

from __future__ import annotations

import json
import re

import pytest

from bertrec.config import apply_overrides

from builders import dvc

pytestmark = pytest.mark.integration


def stages_run(output: str) -> list[str]:
    """The stages that ran, in order."""
    return re.findall(r"Running stage '([\w-]+)'", output)


def test_repro_runs_all_then_nothing_then_what_a_param_touches(built_project, project_copy):
    # Given a fresh repository with the project's dvc.yaml and tiny params, its first `dvc repro`
    # (the session's built project) ran every stage, in dvc.yaml's order
    assert stages_run(built_project.output) == [
        "fetch",
        "prepare",
        "split",
        "baselines",
        "train",
        "embed",
        "index",
        "evaluate",
        "drift",
        "register",
    ]
    # and every stage, each a fresh `bertrec` process, printed its own lines and none of faiss's (only with -v)
    assert "recall@10 vs exact" in built_project.output and "faiss.loader" not in built_project.output
    root = project_copy()
    record = json.loads((root / "metrics" / "register.json").read_text())
    assert record["registered"] and record["version"] == "1"
    assert (root / "data" / "raw" / "local" / "same" / "same.csv").exists()  # the raw snapshot DVC versions
    assert "lr: 0.005" in (root / "dvc.lock").read_text()  # the params each stage ran with
    # the drift check ran before register, on a first run against no champion: a verdict that says so, and trains
    verdict = json.loads((root / "outputs" / "drift" / "verdict.json").read_text())
    assert (verdict["status"], verdict["drift"]) == ("no-champion", False)
    assert verdict["retrain"] == {"retrain": True, "policy": "drift", "reason": "no champion yet: train one"}
    # When it runs again with nothing changed, nothing runs, and `dvc status` says so
    second = dvc(root, "repro")
    assert stages_run(second) == []
    assert all(f"Stage '{s}' didn't change, skipping" in second for s in ("fetch", "prepare", "train", "register"))
    assert "Data and pipelines are up to date" in dvc(root, "status")
    # When the index factory changes in params.yaml, the index and what follows it rerun, and nothing before it
    # (a training param reruns train and what follows: the Prefect flow test checks that through DVC too)
    apply_overrides(root / "params.yaml", ["index.factory=HNSW16"])
    third = dvc(root, "repro")
    assert stages_run(third) == ["index", "register"]
    assert json.loads((root / "outputs" / "bundle" / "index" / "index.json").read_text())["factory"] == "HNSW16"
