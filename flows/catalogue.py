"""The catalogue update as a Prefect flow: new items live without retraining.

``catalogue_update`` adds the items of a file (CSV/Parquet: ``item_id`` and ``text``, or the
fields of ``data.text_template``) to the champion as a new version, placed from their text with
the champion's weights unchanged, and promotes it when the cold-item guardrail holds
(:mod:`bertrec.mlops.catalogue`). A server started with `bertrec serve` picks the new champion up
at its next look at the alias. The decision is published as the markdown artifact
``catalogue-update``.

Deployed as ``catalogue-update/manual`` (prefect.yaml). Run locally:
``python -m flows.catalogue ITEMS_FILE``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import enter_project, run_tags
from flows.overrides import ParamsOverrides
from tasks.catalogue import catalogue_task


@flow(name="catalogue-update", log_prints=True)
def catalogue_update(items_path: str, overrides: ParamsOverrides | None = None, project_dir: str = ".") -> dict:
    """Add the items of ``items_path`` to the champion as a new version; promote it if the guardrail holds.

    Args:
        items_path: the new-items file, absolute or relative to the project checkout.
        overrides: values that replace those of params.yaml (and stay in it), e.g. ``catalogue.max_drop``.
        project_dir: the project checkout (params.yaml, prepared data and splits).
    """
    project, sets = enter_project(project_dir, overrides)
    result = catalogue_task(project, project / items_path, run_tags(sets))
    verdict = "promoted to champion" if result["champion"] == result["version"] else "stays challenger"
    create_markdown_artifact(
        f"**version {result['version']}**: version {result['parent']} with {result['added']} new item(s), "
        f"{verdict}\n\n{result['reason']}",
        key="catalogue-update",
        description="The catalogue update and its guardrail decision",
    )
    get_run_logger().info(result["reason"])
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(catalogue_update(str(Path(sys.argv[1]).resolve())))
