"""Every Markdown table bertrec prints: metrics, registrations, drift verdicts, replays."""

from __future__ import annotations

from typing import Any

from bertrec.ranking.metrics import metric_key

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
    lines = [
        f"# {record['model']} version {record['version']}: "
        + ("promoted to champion" if record["promote"] else "not promoted"),
        "",
        f"**Decision.** {record['reason']}",
        "",
        "| metric | challenger | champion (re-evaluated) | delta |",
        "|---|---|---|---|",
    ]
    for key in keys:
        new, old = record["challenger_scores"][key], champion.get(key)
        delta = f"{new - old:+.4f}" if old is not None else ""
        lines.append(f"| {key} | {new:.4f} | {'' if old is None else f'{old:.4f}'} | {delta} |")
    if record.get("baselines"):
        lines += [
            "",
            f"Baselines on {record['primary']}: "
            + ", ".join(f"{name} {value:.4f}" for name, value in record["baselines"].items() if value is not None),
        ]
    run = (
        f"[{record['run_id']}]({record['run_url']})"
        if record.get("run_url")
        else f"`{record['run_id']}` ({record['tracking_uri']})"
    )
    lines += [
        "",
        f"MLflow run: {run}",
        f"Stages run: {', '.join(ran) or 'none (all up to date)'}",
        f"Overrides: {', '.join(overrides) or 'none'}",
    ]
    return "\n".join(lines) + "\n"


def verdict_table(payload: dict[str, Any]) -> str:
    """A drift verdict (``verdict.json``) as markdown (the CLI and the Prefect artifact)."""
    lines = [f"**drift: {'yes' if payload['drift'] else 'no'}** ({payload['status']})"]
    if payload.get("reason"):
        lines.append(f"\n{payload['reason']}")
    if "windows" in payload:
        w = payload["windows"]
        lines.append(
            f"\nreference {w['reference']['start']} .. {w['reference']['end']} ({w['reference']['rows']} rows), "
            f"current .. {w['current']['end']} ({w['current']['rows']} rows), "
            f"champion v{payload['champion']['version']}"
        )
    if payload["checks"]:
        lines += ["", "| check | drift | score | threshold | note |", "|---|---|---|---|---|"]
        for name, check in payload["checks"].items():
            score = "" if check["score"] is None else f"{check['score']:.4g}"
            note = check["details"].get("skipped") or _drifted_columns(check["details"])
            lines.append(
                f"| {name} | {'yes' if check['drift'] else 'no'} | {score} | {check['threshold']:.4g} | {note} |"
            )
    quality = payload.get("quality")
    if quality and "ours" in quality:
        k = quality["k"]
        ours, theirs = quality["ours"], quality["evidently"]
        agree = "agree" if not quality["disagreements"] else f"DISAGREE on {', '.join(quality['disagreements'])}"
        lines.append(
            f"\nchampion on the current window ({quality['users']} sampled users): NDCG@{k} {ours[f'NDCG@{k}']:.4f} "
            f"(Evidently {theirs[f'NDCG@{k}']:.4f}), Hit@{k} {ours[f'Hit@{k}']:.4f} "
            f"(Evidently {theirs[f'Hit@{k}']:.4f}): {agree}"
        )
    decay = payload.get("decay")
    if decay:
        lines.append(f"\nquality ({decay['users']} returning users, next item): {decay['reason']}")
    if payload.get("legacy"):
        old = "yes" if payload["legacy"]["drift"] else "no"
        lines.append(f"\nuncalibrated rule (per-row features, Evidently's thresholds): drift {old}")
    if payload.get("retrain"):
        decision = payload["retrain"]
        lines.append(f"\n**retrain: {'yes' if decision['retrain'] else 'no'}**: {decision['reason']}")
    return "\n".join(lines) + "\n"


def _drifted_columns(details: dict[str, Any]) -> str:
    columns = details.get("columns", {})
    drifted = [name for name, c in columns.items() if c.get("drifted")]
    return f"drifted: {', '.join(drifted)}" if drifted else ""


def replay_table(rows: list, checks: tuple[str, ...]) -> str:
    """The replay as a markdown table, a row per step (``bertrec.mlops.replay.Step``), a column per drift check."""

    def mark(value: bool | None) -> str:
        return "–" if value is None else "yes" if value else "no"

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    head = [
        "step",
        "window (data as of)",
        "rows",
        "new rows",
        *(f"drift: {c}" for c in checks),
        "drift",
        "decay",
        "old rule",
        "planted",
        "champion NDCG@10 on next items",
        "retrained",
        "champion",
        "champion loo NDCG@10",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        retrained = (
            f"yes ({r.retrained}): v{r.version}{' promoted' if r.promoted else ' not promoted'}"
            if r.retrained
            else "no"
        )
        cells = [
            str(r.step),
            r.window[:10],
            str(r.rows),
            "" if r.new_rows is None else str(r.new_rows),
            *(mark(r.drift.get(c)) for c in checks),
            mark(r.drift_any),
            mark(r.decay),
            mark(r.legacy_drift),
            "yes" if r.planted else "",
            number(r.champion_ndcg_new),
            retrained,
            f"v{r.champion}" if r.champion else "none",
            number(r.champion_ndcg),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def versions_table(rows: list, keys: list[str], tag_name) -> str:
    """Registry versions (``bertrec.mlops.registry.VersionRow``) with their aliases, ``keys``' tags and gate."""
    lines = ["| version | aliases | " + " | ".join(keys) + " | gate |", "|---" * (len(keys) + 3) + "|"]
    for row in rows:
        values = [row.tags.get(tag_name(k), "") for k in keys]
        gate = {"true": "promoted", "false": "not promoted"}.get(row.tags.get("gate.promote", ""), "")
        lines.append(f"| {row.version} | {', '.join(row.aliases)} | " + " | ".join(values) + f" | {gate} |")
    return "\n".join(lines)
