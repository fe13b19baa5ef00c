"""The `index` stage: the FAISS index of the item vectors, tuned to and measured by recall@10 against exact search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertrec.compute.engine import announce, engine_for
from bertrec.config import Params
from bertrec.model.index import IndexInfo, write_index
from bertrec.model.layout import INDEX
from bertrec.model.vectors import read_embeddings, read_queries


@dataclass(frozen=True)
class Indexed:
    folder: Path
    info: IndexInfo

    def summary(self) -> str:
        i = self.info
        search = ", ".join(f"{k}={v}" for k, v in i.search.items()) or "exhaustive"
        return (
            f"{i.factory} ({search}) over {i.n_items} items, recall@10 vs exact {i.recall_at_10:.4f} "
            f"on {i.sample} queries ({i.queries}) -> {self.folder}"
        )


def run(p: Params) -> Indexed:
    """Write the bundle's ``index/`` with ``index.factory``; recall on the embed stage's user vectors if any."""
    vectors, _ = read_embeddings(p.paths.bundle)
    queries = read_queries(p.paths.bundle)
    folder = p.paths.bundle / INDEX
    engine = engine_for(p.compute)
    announce("index", engine, f"adding {len(vectors)} vectors")
    info = write_index(vectors, folder, p.index.factory, p.index.recall_sample, queries, engine)
    return Indexed(folder, info)
