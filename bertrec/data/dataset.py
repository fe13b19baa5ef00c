"""The prepared data: the tables `prepare` writes and the typed view every later step reads.

Files (in ``paths.prepared``):

- ``interactions.parquet``: ``user_id``, ``item_id``, ``timestamp``, [``rating``], ``user_idx``,
  ``item_idx``; sorted by user, then stably by timestamp (ties keep the source file's order).
- ``items.parquet``: ``item_idx``, ``item_id``, ``text`` and the template's fields; the whole
  catalogue in id order (numeric when all ids are integers), so ``item_idx`` order is id order.
- ``manifest.json``: source, route, row counts, dropped rows by reason, content hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bertrec.errors import MissingInputError

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Dataset:
    """Prepared tables: the catalogue and the log, with dense indices."""

    interactions: pd.DataFrame
    items: pd.DataFrame

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_idx"].max()) + 1 if len(self.interactions) else 0



def load_dataset(folder: Path) -> Dataset:
    """Read the outputs of `prepare`."""
    folder = Path(folder)
    for name in (INTERACTIONS_FILE, ITEMS_FILE):
        if not (folder / name).exists():
            raise MissingInputError(f"{folder / name} not found; run `bertrec prepare` first")
    return Dataset(pd.read_parquet(folder / INTERACTIONS_FILE), pd.read_parquet(folder / ITEMS_FILE))
