"""The `embed` stage: every catalogue item encoded from its text through the trained item tower."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrec.compute.engine import announce, engine_for
from bertrec.config import Params
from bertrec.data.split import read_split
from bertrec.model.bundle import load_model, read_training
from bertrec.model.embed import embed_catalogue, encode_users, sample_histories
from bertrec.model.scorer import TowerScorer
from bertrec.model.vectors import EmbedStats, read_embeddings, stream_embeddings, write_queries


@dataclass(frozen=True)
class Embedded:
    folder: Path
    stats: EmbedStats

    def summary(self) -> str:
        s = self.stats
        return f"{s.n_items} items x {s.dim} in {s.seconds:.1f}s ({s.items_per_second:.0f} items/s) -> {self.folder}"


def run(p: Params) -> Embedded:
    """Write the bundle's ``embeddings/``: float16 unit vectors, the id map, and the user vectors of ``queries.npy``."""
    scorer, items = load_model(p.paths.bundle, p.train.device)
    engine = engine_for(p.compute)
    announce("embed", engine, f"the item tower over {len(items)} items")

    def fill(out: np.ndarray) -> EmbedStats:  # batch by batch into the float16 file, never all of it in float32
        return embed_catalogue(scorer, items, p.model.encode_batch_size, out=out, engine=engine)[1]

    folder, stats = stream_embeddings(items, p.paths.bundle, scorer.model.config.dim, fill)
    write_queries(user_queries(p, scorer), p.paths.bundle)
    return Embedded(folder, stats)


def user_queries(p: Params, scorer: TowerScorer) -> np.ndarray:
    """User vectors of ``index.recall_sample`` users of the model's training split, over the stored item vectors."""
    split = read_split(p.paths.splits, read_training(p.paths.bundle)["split"], 0, scorer.n_items)  # n_users unused
    stored, _ = read_embeddings(p.paths.bundle)
    return encode_users(scorer, sample_histories(split.train, p.index.recall_sample, p.train.seed), stored)
