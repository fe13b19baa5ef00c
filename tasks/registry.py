"""Tasks around the registry calls of bertrec.mlops.registry (retried: they talk to the MLflow server)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from bertrec.config import DEFAULT_PARAMS, load_params


@task(retries=2, retry_delay_seconds=10)
def promote_task(project: Path, version: str, force: bool) -> dict:
    from bertrec.mlops.gate import promote_version

    gate = promote_version(load_params(project / DEFAULT_PARAMS), version, force)
    return {
        "version": version,
        "promote": gate.decision.promote,
        "reason": gate.decision.reason,
        "champion": gate.champion,
    }


@task(retries=2, retry_delay_seconds=10)
def rollback_task(project: Path) -> tuple[str, str]:
    from bertrec.mlops.registry import rollback

    return rollback(load_params(project / DEFAULT_PARAMS))
