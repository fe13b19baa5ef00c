"""Every catalogue item's vector, from its text, through the trained item tower.

Texts are encoded in length-sorted batches under ``torch.inference_mode()``; vectors are unit norm.
Items/second is measured. :mod:`bertrec.model.vectors` stores them.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bertrec.model.scorer import TowerScorer
from bertrec.model.vectors import EmbedStats


@torch.inference_mode()
def encode_items(
    scorer: TowerScorer, texts: list[str], items: np.ndarray, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """Item-tower vectors (n, dim), float32, unit norm, for ``items`` with ``texts`` (text read afresh).

    Items beyond the trained catalogue (new items) get their text part only.
    """
    scorer.model.eval()
    out = np.empty((len(texts), scorer.model.config.dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    uses_text = scorer.model.items.use_text
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embed", unit="batch", disable=not progress or len(starts) < 2):
        idx = order[start : start + batch_size]
        text = None
        if uses_text:
            text = scorer.text_features.encoder.forward(scorer.text_features.encoder.tokenize([texts[i] for i in idx]))
        ids = torch.as_tensor(items[idx], device=scorer.device)
        out[idx] = scorer.model.items(text, ids).float().cpu().numpy()
    return out


def embed_catalogue(scorer: TowerScorer, items: pd.DataFrame, batch_size: int = 256) -> tuple[np.ndarray, EmbedStats]:
    """Vectors of the whole catalogue, with the measured throughput."""
    began = time.perf_counter()
    vectors = encode_items(scorer, items["text"].tolist(), items["item_idx"].to_numpy(), batch_size)
    seconds = time.perf_counter() - began
    stats = EmbedStats(len(items), vectors.shape[1], seconds, len(items) / max(seconds, 1e-9), str(scorer.device))
    return vectors, stats
