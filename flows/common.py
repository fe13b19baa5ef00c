"""What every flow of the project does first: enter the checkout, write the run's overrides, tag its runs."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, runtime

from bertrec.config import DEFAULT_PARAMS, apply_overrides
from flows.overrides import ParamsOverrides, override_sets


def enter_project(project_dir: str, overrides: ParamsOverrides | None) -> tuple[Path, list[str]]:
    """chdir into the checkout (params.yaml's paths are relative to it) and write ``overrides`` into
    its params.yaml (comments kept); returns the checkout and the overrides as ``key=value``."""
    project = Path(project_dir).resolve()
    os.chdir(project)
    sets = override_sets(overrides)
    if sets:
        apply_overrides(project / DEFAULT_PARAMS, sets)
        get_run_logger().info("params.yaml overrides: %s", ", ".join(sets))
    return project, sets


def run_tags(overrides: list[str]) -> dict[str, str]:
    """What a step adds to its MLflow run: the Prefect flow run, its deployment and the overrides."""
    return {
        "prefect.flow_run_id": str(runtime.flow_run.id),
        "prefect.flow_run_name": str(runtime.flow_run.name),
        "prefect.deployment": str(runtime.deployment.name or "none"),
        "prefect.overrides": "; ".join(overrides) or "none",
    }
