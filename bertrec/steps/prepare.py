"""The `prepare` stage: the configured source, validated and cleaned, as Parquet tables and a manifest.

Outputs are those of :mod:`bertrec.data.dataset`, in ``paths.prepared``, replaced atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertrec.config import Params
from bertrec.data.dataset import INTERACTIONS_FILE, ITEMS_FILE, MANIFEST_FILE
from bertrec.data.prepare import clean
from bertrec.data.sources import load_source
from bertrec.io import atomic_dir, sha256_file, write_json, write_parquet
from bertrec.progress import phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    folder: Path
    manifest: dict[str, Any]

    def summary(self) -> str:
        m = self.manifest
        return (
            f"{m['dataset']} via {m['route']}: {m['rows']['kept']} interactions, "
            f"{m['n_users']} users, {m['n_items']} items -> {self.folder}"
        )


def run(params: Params) -> Prepared:
    """Load the configured source, clean it and write the prepared tables and the manifest.

    The manifest holds no path of this machine (see :func:`portable_names`), so equal data prepare
    into byte-equal outputs wherever they are read from.

    Nothing is written unless every check passed; the previous outputs stay as they were.
    Raises DataError.
    """
    with phase("prepare: read and validate the source"):
        source = load_source(params)
    with phase(f"prepare: clean and index {len(source.loaded.interactions)} rows"):
        cleaned = clean(source.loaded, params.data)
    data = cleaned.dataset
    manifest: dict[str, Any] = {
        "dataset": source.name,
        "source": params.data.source,
        "format": source.loaded.format,
        "route": source.route,
        "detail": source.detail,
        "inputs": {name: sha256_file(p) for name, p in portable_names(source.loaded.files).items()},
        "rows": {"raw": cleaned.raw_rows, "after_window": cleaned.after_window, "kept": len(data.interactions)},
        "window": params.data.window.isoformat() if params.data.window else None,
        "dropped": cleaned.dropped,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_items_without_interactions": int(data.n_items - data.interactions["item_idx"].nunique()),
        "text_template": params.data.text_template,
        "outputs": {},
    }
    with phase("prepare: write the tables"), atomic_dir(params.paths.prepared) as tmp:
        write_parquet(data.interactions, tmp / INTERACTIONS_FILE)
        write_parquet(data.items, tmp / ITEMS_FILE)
        manifest["outputs"] = {name: sha256_file(tmp / name) for name in (INTERACTIONS_FILE, ITEMS_FILE)}
        write_json(tmp / MANIFEST_FILE, manifest)
    log.info(
        "prepared %s: %d interactions, %d users, %d items; dropped %s",
        source.name,
        len(data.interactions),
        data.n_users,
        data.n_items,
        cleaned.dropped or "nothing",
    )
    return Prepared(params.paths.prepared, manifest)


def portable_names(files: list[Path]) -> dict[str, Path]:
    """The input files by their path below their common folder, e.g. ``{"log.csv": ..., "items/items.csv": ...}``.

    The manifest names inputs so, not by where the checkout lives: the same data prepared in another
    folder (a clone, the replay's workspace) is the same DVC output, and DVC's run-cache can reuse it.
    """
    resolved = [Path(f).resolve() for f in files]
    if not resolved:
        return {}
    common = Path(os.path.commonpath(resolved))
    if len(resolved) == 1 or common in resolved:
        common = common.parent
    return {str(f.relative_to(common)): f for f in resolved}
