"""Metric tables for the terminal and the README (Markdown)."""

from __future__ import annotations

from bertrec.metrics import metric_key

TABLE_METRICS = ("NDCG", "Hit", "MRR", "Coverage", "ARP", "TailShare", "TailHit", "Gini")

Results = dict[str, dict[str, dict[str, float]]]  # model -> target -> metric -> value


def _fmt(name: str, value: float) -> str:
    return f"{value:.1f}" if name == "ARP" else f"{value:.4f}"


def markdown_table(results: Results, target: str, k: int = 10, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """One row per model for ``target``: ``| model | NDCG@10 | ... |``."""
    header = ["model", *(metric_key(m, k) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_target in results.items():
        if target not in by_target:
            continue
        values = by_target[target]
        cells = [model, *(_fmt(m, values[metric_key(m, k)]) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
