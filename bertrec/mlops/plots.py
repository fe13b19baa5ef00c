"""PNG plots logged with each pipeline run: NDCG@K against K, recommended vs catalogue popularity, training curve."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

POPULARITY_BINS = 10


def ndcg_against_k(results: Mapping[str, Mapping[str, float]], ks: tuple[int, ...], path: Path, title: str) -> Path:
    """One line per model: NDCG@K for each K. ``results``: ``{model: {metric: value}}``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, metrics in results.items():
        ax.plot(ks, [metrics[f"NDCG@{k}"] for k in ks], marker="o", label=model)
    ax.set(xlabel="K", ylabel="NDCG@K", title=title, xticks=list(ks))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def popularity_shares(topk: np.ndarray, popularity: np.ndarray, bins: int = POPULARITY_BINS) -> np.ndarray:
    """Share of all recommendations falling in each popularity decile of the catalogue (most popular first).

    ``topk``: (users, K) item indices (-1 empty); ``popularity``: (n_items,) training interactions.
    """
    picked = topk[topk >= 0]
    return np.bincount(popularity_deciles(popularity, bins)[picked], minlength=bins) / max(len(picked), 1)


def popularity_deciles(popularity: np.ndarray, bins: int = POPULARITY_BINS) -> np.ndarray:
    """(n_items,) bin of each item, 0 = the most popular ``1/bins`` of the catalogue (ties by index)."""
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    out = np.empty(len(popularity), dtype=np.int64)
    out[order] = np.arange(len(popularity)) * bins // len(popularity)
    return out


def popularity_against_catalogue(
    topk: Mapping[str, np.ndarray], popularity: np.ndarray, path: Path, title: str
) -> Path:
    """Where each model's recommendations fall among catalogue popularity deciles, beside training interactions."""
    bins = POPULARITY_BINS
    weights = popularity.astype(np.float64)
    interactions = np.bincount(popularity_deciles(popularity, bins), weights, minlength=bins) / max(weights.sum(), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(1, bins + 1)
    ax.plot(x, interactions, color="black", linestyle="--", marker="s", label="training interactions")
    for model, lists in topk.items():
        ax.plot(x, popularity_shares(lists, popularity, bins), marker="o", label=model)
    ax.set(
        xlabel="catalogue popularity decile (1 = most popular 10% of items)",
        ylabel="share of recommendations",
        title=title,
        xticks=list(x),
        yscale="log",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def training_curve(epochs: list[Mapping], path: Path, metric: str = "NDCG@10") -> Path:
    """Training loss and validation ``metric`` per epoch (from training.json)."""
    fig, loss_ax = plt.subplots(figsize=(6, 4))
    x = [e["epoch"] for e in epochs]
    loss_ax.plot(x, [e["loss"] for e in epochs], color="tab:blue", label="training loss")
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    valid_ax = loss_ax.twinx()
    valid_ax.plot(x, [e["valid"].get(metric, np.nan) for e in epochs], color="tab:orange", label=f"valid {metric}")
    valid_ax.set(ylabel=f"valid {metric}")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
