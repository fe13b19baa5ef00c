"""The `split` stage: the train/valid/test splits of PROTOCOL.md (loo, ratio, cold_items) as Parquet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertrec.config import SPLITS, Params
from bertrec.data.dataset import load_dataset
from bertrec.data.split import check_split_names, make_split, write_split
from bertrec.progress import phase


@dataclass(frozen=True)
class Written:
    name: str
    folder: Path
    counts: dict[str, Any]  # rows and users per part

    def summary(self) -> str:
        return f"{self.name}: {json.dumps(self.counts)} -> {self.folder}"


@dataclass(frozen=True)
class Splits:
    written: tuple[Written, ...]

    def summary(self) -> str:
        return "\n".join(w.summary() for w in self.written)


def run(p: Params, names: list[str] | None = None) -> Splits:
    """Write the splits ``names`` (default: all) under ``paths.splits``. Raises ConfigError for an unknown name."""
    names = check_split_names(list(names or SPLITS))
    data = load_dataset(p.paths.prepared)
    written = []
    for name in names:
        with phase(f"split {name}"):
            made = make_split(data, name, p.split)
            written.append(Written(name, write_split(made, p.paths.splits), made.summary()))
    return Splits(tuple(written))
