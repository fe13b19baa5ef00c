"""Tasks around the registry calls of bertrec.mlops.registry.

Retried, because they talk to the MLflow server; never on a BertrecError (nothing to roll back to,
a version that is already champion): those fail the same way however often they are tried.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from bertrec.config import DEFAULT_PARAMS, load_params
from bertrec.errors import BertrecError


def worth_retrying(_task, _task_run, state) -> bool:
    """Prefect's retry condition: retry what may pass next time (a server that did not answer), not a refusal."""
    return not isinstance(state.data, BertrecError)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def promote_task(project: Path, version: str, force: bool) -> dict:
    from bertrec.mlops.gate import promote_version

    gate = promote_version(load_params(project / DEFAULT_PARAMS), version, force)
    return {
        "version": version,
        "promote": gate.decision.promote,
        "reason": gate.decision.reason,
        "champion": gate.champion,
    }


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def rollback_task(project: Path) -> tuple[str, str]:
    from bertrec.mlops.registry import rollback

    return rollback(load_params(project / DEFAULT_PARAMS))
