"""The `index` stage: the FAISS index of the item vectors, with its recall@10 against exact search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertrec.config import Params
from bertrec.model.index import IndexInfo, write_index
from bertrec.model.layout import INDEX
from bertrec.model.vectors import read_embeddings


@dataclass(frozen=True)
class Indexed:
    folder: Path
    info: IndexInfo

    def summary(self) -> str:
        i = self.info
        return f"{i.factory} over {i.n_items} items, recall@10 vs exact {i.recall_at_10:.4f} -> {self.folder}"


def run(p: Params) -> Indexed:
    """Write the bundle's ``index/`` with ``index.factory``."""
    vectors, _ = read_embeddings(p.paths.bundle)
    folder = p.paths.bundle / INDEX
    return Indexed(folder, write_index(vectors, folder, p.index.factory, p.index.recall_sample))
