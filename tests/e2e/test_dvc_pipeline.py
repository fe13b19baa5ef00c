"""`dvc repro` in a fresh git repository on tiny data: everything, then nothing, then only what a param touches."""

from __future__ import annotations

import json
import re

import pytest

from bertrec.config import apply_overrides
from builders import dvc, dvc_project

pytestmark = pytest.mark.integration


def stages_run(output: str) -> list[str]:
    """The training stages that ran, in order; the drift check (always run, ordered by DVC alone) is checked apart."""
    ran = re.findall(r"Running stage '([\w-]+)'", output)
    assert ran.count("drift") == 1, ran
    return [stage for stage in ran if stage != "drift"]


def test_repro_runs_all_then_nothing_then_what_a_param_touches(tmp_path, tiny_encoder, mlflow_uri):
    # Given a fresh repository with the project's dvc.yaml and tiny params
    root = dvc_project(tmp_path / "project", tiny_encoder, mlflow_uri, "mlflow.registered_model=dvc-e2e")
    # When `dvc repro` runs, every stage runs, in dvc.yaml's order, and the register stage records its decision
    first = dvc(root, "repro")
    assert stages_run(first) == ["fetch", "prepare", "split", "baselines", "train", "embed", "index", "evaluate", "register"]
    record = json.loads((root / "metrics" / "register.json").read_text())
    assert record["registered"] and record["version"] == "1"
    assert (root / "data" / "raw" / "local" / "log" / "log.csv").exists()  # the raw snapshot DVC versions
    assert "lr: 0.005" in (root / "dvc.lock").read_text()  # the params each stage ran with
    # the drift check ran too: against no champion, or one trained on every row there is (nothing new)
    verdict = json.loads((root / "outputs" / "drift" / "verdict.json").read_text())
    assert verdict["status"] in ("no-champion", "too-few-rows") and verdict["drift"] is False
    # When it runs again with nothing changed, only the fetch check runs and every other stage is skipped
    second = dvc(root, "repro")
    assert stages_run(second) == ["fetch"]
    assert all(f"Stage '{s}' didn't change, skipping" in second for s in ("prepare", "train", "register"))
    # When train.lr changes in params.yaml, train and what follows it rerun, and nothing before it
    apply_overrides(root / "params.yaml", ["train.lr=0.004"])
    third = dvc(root, "repro")
    assert stages_run(third) == ["fetch", "train", "embed", "index", "evaluate", "register"]
