"""The catalogue update as a Prefect task: one call of bertrec.mlops.catalogue.update_catalogue.

Retried when the MLflow server did not answer; never on a BertrecError (bad items, no champion):
those fail the same way however often they are tried. A retry after the version was registered
registers nothing again: the same bundle is found by its fingerprint and gated.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from bertrec.config import DEFAULT_PARAMS, load_params
from tasks.registry import worth_retrying


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def catalogue_task(project: Path, items_path: Path, run_tags: dict[str, str]) -> dict:
    from bertrec.mlops.catalogue import update_catalogue

    update = update_catalogue(load_params(project / DEFAULT_PARAMS), items_path, run_tags)
    return {
        "version": update.version,
        "parent": update.parent,
        "added": update.added,
        "registered": update.registered,
        "promote": update.decision.promote,
        "reason": update.decision.reason,
        "champion": update.champion,
    }
