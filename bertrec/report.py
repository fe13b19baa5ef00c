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


def registration_summary(record: dict, ran: list[str], overrides: list[str]) -> str:
    """Markdown of a register step's record (metrics/register.json): challenger vs champion and baselines, decision."""
    keys = list(record["challenger_scores"])
    champion = record.get("champion_scores") or {}
    lines = [f"# {record['model']} version {record['version']}: "
             + ("promoted to champion" if record["promote"] else "not promoted"), "",
             f"**Decision.** {record['reason']}", "",
             "| metric | challenger | champion (re-evaluated) | delta |", "|---|---|---|---|"]  # fmt: skip
    for key in keys:
        new, old = record["challenger_scores"][key], champion.get(key)
        delta = f"{new - old:+.4f}" if old is not None else ""
        lines.append(f"| {key} | {new:.4f} | {'' if old is None else f'{old:.4f}'} | {delta} |")
    if record.get("baselines"):
        lines += ["", f"Baselines on {record['primary']}: "
                  + ", ".join(f"{name} {value:.4f}" for name, value in record["baselines"].items() if value is not None)]  # fmt: skip
    run = f"[{record['run_id']}]({record['run_url']})" if record.get("run_url") else f"`{record['run_id']}` ({record['tracking_uri']})"
    lines += ["", f"MLflow run: {run}", f"Stages run: {', '.join(ran) or 'none (all up to date)'}",
              f"Overrides: {', '.join(overrides) or 'none'}"]  # fmt: skip
    return "\n".join(lines) + "\n"
