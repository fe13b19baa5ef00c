"""The continuous-training replay on ml-100k and on a copy with a planted shift -> bench/reports/replay.json.

Two runs of `bertrec replay` (bertrec.mlops.replay), ten weekly steps from 1998-01-01, with the
project's params (``retrain.policy`` and the calibrated drift checks as configured):

- **ml-100k**: the log as it is;
- **planted**: the same log in which, from ``--plant-step``'s new rows on, every other interaction is
  moved to a random Horror film (a genre's share and the popularity curve change at a known time).
  Written as a CSV log (``data.source: table``) under the workspace.

Each row: ``step``, ``drift`` (calibrated, any check), ``decay`` (the quality signal), ``retrained``,
``promoted``, ``champion_ndcg_new`` (the champion's NDCG@10 on returning users' next items),
``planted``, and ``old_rule`` (the uncalibrated interaction check that fired before calibration, for
the old policy: retrain on every alarm). The summary counts alarms in steps without decay, for both
rules. The two replays run side by side (one thread each). Writes bench/reports/replay.json and
replay.md, and the README section between its markers (``--report`` rewrites them from the JSON, with
bench/reports/warm_start.json and bench/reports/version_size.json when they exist).

    python bench/replay.py                 # both logs, ten steps (about an hour on 2 CPU cores)
    python bench/replay.py --report        # tables and README from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
WORK = ROOT / "outputs" / "bench" / "replay"
BIN = Path(sys.executable).parent
START = "1998-01-01T00:00:00"
WEEK = 7 * 86_400
GENRE = "Horror"
MARKERS = ("<!-- replay:start -->", "<!-- replay:end -->")
# Both replays: every baseline but SASRec (its training would double each retrain's time here).
SETS = ["baselines.models=[popular,itemknn]"]


def planted_log(prepared: Path, out: Path, at: float, seed: int = 0) -> tuple[Path, Path]:
    """A CSV copy of the prepared log where, after ``at``, every other row goes to a random Horror film."""
    rows = pd.read_parquet(prepared / "interactions.parquet")
    items = pd.read_parquet(prepared / "items.parquet")
    horror = items.loc[items["genres"].str.split("|").map(lambda g: GENRE in g), "item_id"].to_numpy()
    rng = np.random.default_rng(seed)
    after = np.flatnonzero(rows["timestamp"].to_numpy() > at)
    moved = after[::2]
    rows.loc[rows.index[moved], "item_id"] = rng.choice(horror, len(moved))
    rows = rows.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"])
    out.mkdir(parents=True, exist_ok=True)
    log, table = out / "planted.csv", out / "planted_items.csv"
    rows[["user_id", "item_id", "timestamp", "rating"]].to_csv(log, index=False)
    items[["item_id", "title", "year", "genres"]].to_csv(table, index=False)
    return log, table


def run(name: str, sets: list[str], steps: int, planted_at: str | None) -> subprocess.Popen:
    """Start `bench/replay.py --one` for one log in its own process (one thread)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--one", name, "--steps", str(steps), *[a for s in sets for a in ("--set", s)]]
    if planted_at:
        command += ["--planted-at", planted_at]
    log = open(WORK / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def one(name: str, sets: list[str], steps: int, planted_at: str | None) -> None:
    from bertrec.mlops.replay import replay

    workdir = WORK / name
    if workdir.exists():
        shutil.rmtree(workdir)
    began = time.monotonic()
    planted = datetime.fromisoformat(planted_at).replace(tzinfo=None) if planted_at else None
    rows = replay(
        ROOT,
        workdir,
        ROOT / "params.yaml",
        [*SETS, *sets],
        datetime.fromisoformat(START),
        timedelta(days=7),
        steps,
        None,
        on_step=lambda r: print(json.dumps(r.__dict__), flush=True),
        planted_at=planted,
    )
    (WORK / f"{name}.json").write_text(
        json.dumps({"rows": [r.__dict__ for r in rows], "seconds": time.monotonic() - began}, indent=2) + "\n"
    )


def summarise(rows: list[dict]) -> dict:
    """Alarms where nothing was planted and the champion's quality did not decay (false alarms, for the
    calibrated checks and the old rule), and what the planted shift led to."""
    checked = [r for r in rows if r["step"] > 0]
    calm = [r for r in checked if not r["decay"] and not r["planted"]]
    planted = [r for r in checked if r["planted"]]
    first = planted[0] if planted else None
    promoted = next((r["step"] for r in planted if r["retrained"] and r["promoted"]), None)
    return {
        "steps": len(rows),
        "calm_steps": len(calm),
        "alarms_without_decay": sum(bool(r["drift_any"]) for r in calm),
        "old_rule_alarms_without_decay": sum(bool(r["legacy_drift"]) for r in calm),
        "alarms": sum(bool(r["drift_any"]) for r in checked),
        "old_rule_alarms": sum(bool(r["legacy_drift"]) for r in checked),
        "decays": sum(bool(r["decay"]) for r in checked),
        "retrains": sum(bool(r["retrained"]) for r in checked),
        "old_rule_retrains": sum(bool(r["legacy_drift"]) for r in checked),
        "promoted": sum(bool(r["promoted"]) for r in checked),
        "planted_step": first["step"] if first else None,
        "planted_flagged": bool(first["drift_any"]) if first else None,
        "planted_retrained": bool(first["retrained"]) if first else None,
        "planted_promoted": bool(first["promoted"]) if first else None,
        "planted_alarms": sum(bool(r["drift_any"]) for r in planted),
        "first_promoted_retrain_after_plant": promoted,
    }


def row_of(r: dict) -> dict:
    return {
        "step": r["step"],
        "window": r["window"],
        "new_rows": r["new_rows"],
        "drift": r["drift_any"],
        "checks": r["drift"],
        "decay": r["decay"],
        "retrained": bool(r["retrained"]),
        "reason": r["retrained"],
        "decision": r["decision"],
        "promoted": r["promoted"],
        "champion": r["champion"],
        "champion_ndcg_new": r["champion_ndcg_new"],
        "champion_loo_ndcg": r["champion_ndcg"],
        "planted": r["planted"],
        "old_rule": r["legacy_drift"],
        "seconds": r["seconds"],
    }


def table(rows: list[dict]) -> list[str]:
    def mark(v) -> str:
        return "–" if v is None else "yes" if v else "no"

    lines = [
        "| step | data as of | new rows | drift (calibrated) | decay | old rule | retrained | promoted "
        "| champion NDCG@10 on next items | planted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ndcg = "" if r["champion_ndcg_new"] is None else f"{r['champion_ndcg_new']:.4f}"
        lines.append(
            f"| {r['step']} | {r['window'][:10]} | {r['new_rows'] or ''} | {mark(r['drift'] if r['step'] else None)} "
            f"| {mark(r['decay'])} | {mark(r['old_rule'])} | {r['reason'] or 'no'} | {mark(r['promoted'])} "
            f"| {ndcg} | {'yes' if r['planted'] else ''} |"
        )
    return lines


def report() -> str:
    data = json.loads((REPORTS / "replay.json").read_text())
    out = [
        f"Measured by `python bench/replay.py` on {data['machine']}: ten weekly steps from {START[:10]}, "
        f"retrain policy `{data['policy']}`, false-alarm rate {data['false_alarm_rate']} per check run, "
        f"{' '.join(data['sets'])}.",
        "",
    ]
    for name, title in (("ml-100k", "ml-100k as it is"), ("planted", "ml-100k with a planted shift")):
        s = data["logs"][name]["summary"]
        line = (
            f"**{title}**: {s['alarms_without_decay']} calibrated alarms in the {s['calm_steps']} steps with "
            f"nothing planted and no decay (the old rule: {s['old_rule_alarms_without_decay']}); {s['retrains']} "
            f"retrains ({s['promoted']} promoted) against {s['old_rule_retrains']} under the old policy "
            f"(retrain on every alarm of the old rule); decay said {s['decays']} times."
        )
        if s["planted_step"] is not None:
            line += (
                f" The shift, planted in step {s['planted_step']}'s new rows: flagged there "
                f"{mark_bool(s['planted_flagged'])}, retrained {mark_bool(s['planted_retrained'])}, promoted "
                f"{mark_bool(s['planted_promoted'])}; {s['planted_alarms']} alarms in the planted steps; the first "
                f"promoted retrain came at step {s['first_promoted_retrain_after_plant']}."
            )
        out += [line, "", *table(data["logs"][name]["rows"]), ""]
    out += extras()
    return "\n".join(out)


def extras() -> list[str]:
    """One line each for the warm start and the version size, from their reports when they exist."""
    lines = []
    warm = REPORTS / "warm_start.json"
    if warm.exists():
        s = json.loads(warm.read_text())["summary"]
        boot = s["bootstrap_warm_minus_scratch"]
        arms = s["arms"]
        lines.append(
            f"**Warm start against from scratch** (`python bench/warm_start.py`, bench/reports/warm_start.md; "
            f"{len(s['seeds'])} seeds, one thread): {arms['warm']['wall_seconds']:.0f} s against "
            f"{arms['scratch']['wall_seconds']:.0f} s ({s['speedup_wall']:.1f}x), loo test NDCG@10 "
            f"{arms['warm']['NDCG@10 served']:.4f} against {arms['scratch']['NDCG@10 served']:.4f} "
            f"({s['ndcg_relative']:+.1%}; paired bootstrap of the difference "
            f"[{boot['low']:+.4f}, {boot['high']:+.4f}])."
        )
    size = REPORTS / "version_size.json"
    if size.exists():
        versions = json.loads(size.read_text())["versions"]
        before, after = versions[0], versions[1]
        encoder = before["parts"].get("bundle/model/encoder/", 0)
        lines += [
            "",
            f"**A registered version** (`python bench/version_size.py`, bench/reports/version_size.md): "
            f"{before['total_bytes'] / 1e6:.2f} MB with its encoder inside (before), "
            f"{after['total_bytes'] / 1e6:.2f} MB with the shared encoder (after; the "
            f"{encoder / 1e6:.1f} MB encoder stored once for all versions).",
        ]
    return lines


def mark_bool(value) -> str:
    return "–" if value is None else "yes" if value else "no"


def write_report() -> None:
    data = json.loads((REPORTS / "replay.json").read_text())
    for log in data["logs"].values():  # the summaries follow the rows (and this file's definitions)
        log["summary"] = summarise([_raw(r) for r in log["rows"]])
    (REPORTS / "replay.json").write_text(json.dumps(data, indent=2) + "\n")
    text = report()
    (REPORTS / "replay.md").write_text(text + "\n")
    readme = ROOT / "README.md"
    body = readme.read_text()
    start, end = MARKERS
    if start in body and end in body:
        head, rest = body.split(start, 1)
        readme.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="rewrite the tables and README from the JSON")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--plant-step", type=int, default=5, help="the first step whose new rows hold the shift")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a params override for both")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--planted-at", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        write_report()
        return
    if args.one:
        one(args.one, args.sets, args.steps, args.planted_at)
        return
    from bertrec.config import load_params

    WORK.mkdir(parents=True, exist_ok=True)
    p = load_params(ROOT / "params.yaml", [*SETS, *args.sets])
    at = datetime.fromisoformat(START).replace(tzinfo=UTC) + timedelta(days=7 * (args.plant_step - 1))
    log, items = planted_log(ROOT / p.paths.prepared, WORK / "planted-log", at.timestamp())
    planted_sets = [
        "data.source=table",
        f"data.path={log}",
        f"data.items_path={items}",
        "data.name=ml-100k-planted",
        "data.max_drop_fraction=0.2",
    ]
    began = time.monotonic()
    runs = {
        "ml-100k": run("ml-100k", args.sets, args.steps, None),
        "planted": run("planted", [*args.sets, *planted_sets], args.steps, at.replace(tzinfo=None).isoformat()),
    }
    failed = [name for name, proc in runs.items() if proc.wait() != 0]
    if failed:
        raise SystemExit(f"replay {failed} failed: see {WORK}/<name>.log")
    logs = {}
    for name in runs:
        rows = [row_of(r) for r in json.loads((WORK / f"{name}.json").read_text())["rows"]]
        logs[name] = {"rows": rows, "summary": summarise([_raw(r) for r in rows])}
    result = {
        "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU",
        "command": "python bench/replay.py",
        "policy": p.retrain.policy,
        "false_alarm_rate": p.drift.false_alarm_rate,
        "sets": [*SETS, *args.sets],
        "plant": {"step": args.plant_step, "from": at.isoformat(), "genre": GENRE, "share_moved": 0.5},
        "seconds": time.monotonic() - began,
        "logs": logs,
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report()


def _raw(row: dict) -> dict:
    """A report row in the field names of :func:`summarise`."""
    return row | {"drift_any": row["drift"], "legacy_drift": row["old_rule"], "retrained": row["reason"]}


if __name__ == "__main__":
    main()
