"""Manual registry flows for the Prefect UI: promote a version through the gate (or by force), roll back."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.registry import promote_task, rollback_task


@flow(name="promote", log_prints=True)
def promote(version: str, force: bool = False, project_dir: str = ".") -> dict:
    """Run the gate for a registered version against the champion on the current data; promote if it passes.

    Args:
        version: the registered model version, e.g. "7".
        force: promote without the gate (the reason records that it was forced).
        project_dir: the project checkout (params.yaml, prepared data and splits).
    """
    project = Path(project_dir).resolve()
    os.chdir(project)  # params.yaml's paths are relative to the project
    result = promote_task(project, version, force)
    create_markdown_artifact(
        f"**version {version}**: {'promoted' if result['promote'] else 'not promoted'}\n\n{result['reason']}",
        key="promotion",
        description="The gate's decision",
    )
    get_run_logger().info(result["reason"])
    return result


@flow(name="rollback", log_prints=True)
def rollback(project_dir: str = ".") -> dict:
    """Move the `champion` alias back to the `previous` version."""
    project = Path(project_dir).resolve()
    os.chdir(project)
    before, after = rollback_task(project)
    create_markdown_artifact(f"champion moved from version {before} back to version {after}", key="rollback")
    return {"from": before, "to": after}
