"""Integration fixtures shared by the registry and serving tests: four bundles of different quality, two registered."""

from __future__ import annotations

import shutil

import pytest

from bertrec.steps.register import run as register

from builders import project_args, run_steps
from versions import params_of


@pytest.fixture(scope="session")
def quality_bundles(tmp_path_factory, tiny_encoder, mlflow_uri):
    """Prepared data, splits and baselines, and four trained, evaluated bundles of different quality.

    Each bundle has its own outputs and metrics folders (with a copy of the baselines' figures).
    """
    root = tmp_path_factory.mktemp("registry")
    base = project_args(root, tiny_encoder, f"mlflow.tracking_uri={mlflow_uri}", "baselines.models=[popular]")
    run_steps(base, ("prepare", "split", "baselines"))
    bundles = {}
    for label, sets in {
        "weak": ["train.epochs=1"],
        "medium": ["train.epochs=3"],
        "strong": ["train.epochs=10"],
        "strong-seed7": ["train.epochs=10", "train.seed=7"],
    }.items():
        outputs, metrics = root / f"outputs-{label}", root / f"metrics-{label}"
        metrics.mkdir()
        shutil.copy(root / "metrics" / "baselines.json", metrics)
        paths = [f"paths.outputs={outputs}", f"paths.bundle={outputs / 'bundle'}", f"paths.metrics={metrics}"]
        args = [*base, *[x for s in [*paths, *sets] for x in ("--set", s)]]
        run_steps(args, ("train", "embed", "index", "evaluate"))
        bundles[label] = args
    return root, bundles, mlflow_uri


@pytest.fixture(scope="session")
def medium_version(quality_bundles) -> tuple[str, str]:
    """The medium bundle registered once, through the gate: ``(model, version)`` of the version to copy."""
    _, bundles, _ = quality_bundles
    return "medium-source", register(params_of(bundles["medium"], "medium-source")).version


@pytest.fixture(scope="session")
def strong_version(quality_bundles) -> tuple[str, str]:
    """The strong bundle registered once, through the gate: ``(model, version)`` of the version to copy."""
    _, bundles, _ = quality_bundles
    return "strong-source", register(params_of(bundles["strong"], "strong-source")).version
