"""The `embed` stage: every catalogue item encoded from its text through the trained item tower."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertrec.config import Params
from bertrec.model.bundle import load_model
from bertrec.model.embed import embed_catalogue
from bertrec.model.vectors import EmbedStats, write_embeddings


@dataclass(frozen=True)
class Embedded:
    folder: Path
    stats: EmbedStats

    def summary(self) -> str:
        s = self.stats
        return f"{s.n_items} items x {s.dim} in {s.seconds:.1f}s ({s.items_per_second:.0f} items/s) -> {self.folder}"


def run(p: Params) -> Embedded:
    """Write the bundle's ``embeddings/``: float16 unit vectors and the id map."""
    scorer, items = load_model(p.paths.bundle, p.train.device)
    vectors, stats = embed_catalogue(scorer, items, p.model.encode_batch_size)
    return Embedded(write_embeddings(vectors, items, p.paths.bundle, stats), stats)
