"""The `fetch` stage: put the raw data under ``paths.raw``, the snapshot DVC versions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertrec.config import Params
from bertrec.data.sources import fetch_raw


@dataclass(frozen=True)
class Fetched:
    folder: Path
    route: str  # how the data was obtained (a download, the RecBole wheel, a local copy)
    detail: str

    def summary(self) -> str:
        return f"{self.route}: {self.detail} -> {self.folder}"


def run(p: Params) -> Fetched:
    """Fetch MovieLens-100K or copy a local log into ``paths.raw``. Raises DataError."""
    return Fetched(*fetch_raw(p))
