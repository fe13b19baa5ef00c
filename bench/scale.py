"""Every stage at catalogue scale: wall time and peak memory against the size of the log.

A synthetic log (`bertrec synth`, MovieLens ``ratings.csv`` format, so the ml-25m reader is the one
timed) goes through the pipeline's stage commands, the ones `dvc repro` runs, one process each,
in a scratch project (``--work``). Each stage's wall time and peak RSS (``wait4``: the stage's
process and the children it waited for) are recorded.

Sizes (rows / items / users): ``100k`` 100k / 2k / 1k, ``1m`` 1M / 20k / 10k, ``10m`` 10M / 200k /
100k (tier A). ``--tier b`` times the index stage alone at 1M items (bench/index_scale.py).

    python bench/scale.py --size 100k 1m 10m        # growth and tier A; then the report
    python bench/scale.py --tier b                   # 1M items in the index
    python bench/scale.py --report                   # only rewrite scale.md from scale.json

Rows merge into ``bench/reports/scale.json`` (a list of ``{"rows", "items", "users", "stage",
"seconds", "peak_rss_mb", "device"}`` plus extras); ``scale.md`` is the table with the fitted
exponent ``b`` of ``seconds ∝ rows^b`` per stage.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports"
BIN = Path(sys.executable).parent
SIZES = {
    "100k": (100_000, 2_000, 1_000),
    "1m": (1_000_000, 20_000, 10_000),
    "10m": (10_000_000, 200_000, 100_000),
}
STAGES = ("fetch", "prepare", "split", "baselines", "train", "embed", "index", "evaluate", "register")
# One configuration for every size, so that times are comparable: the loo split evaluated (the
# protocol's three splits triple the baselines), one training epoch, the encoder in int8.
SETTINGS = (
    "data.source=movielens",
    "eval.splits=[loo]",
    "train.epochs=1",
    "model.encode_precision=int8",
)
TARGET_B = 1.15
BOUNDED = ("fetch", "prepare", "split", "embed", "index")


def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


def timed(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run ``cmd``; return (seconds, peak RSS in MB of it and its waited-for children). Raises on failure."""
    began = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(cmd)}\n")
        sink.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({os.waitstatus_to_exitcode(status)}); see {log}")
    return seconds, usage.ru_maxrss / 1024  # Linux: kilobytes


def run_size(name: str, work: Path, stages: tuple[str, ...], extra: list[str], keep: bool = False) -> list[dict]:
    rows, items, users = SIZES[name]
    project = work / name
    if project.exists() and not keep:
        shutil.rmtree(project)
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    log = project / "scale.log"
    raw = work / f"raw-{name}"
    if not (raw / "ratings.csv").exists():
        cmd = [str(BIN / "bertrec"), "synth", "--out", str(raw), "--rows", str(rows), "--items", str(items)]
        timed([*cmd, "--users", str(users), "--format", "movielens"], project, log)
    sets = [f"data.path={raw}", f"mlflow.tracking_uri=sqlite:///{project / 'mlflow.db'}", *SETTINGS, *extra]
    out = []
    for stage in stages:
        cmd = [str(BIN / "bertrec"), stage] + [a for s in sets for a in ("--set", s)]
        seconds, rss = timed(cmd, project, log)
        out.append(
            {"rows": rows, "items": items, "users": users, "stage": stage, "seconds": round(seconds, 2),
             "peak_rss_mb": round(rss, 1), "device": device()}
        )  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
        merge(out[-1:])
    metrics = project / "metrics" / "evaluate.json"
    if metrics.exists():
        results = json.loads(metrics.read_text())["results"]
        quality = {m: {k: results[m]["test"][k] for k in ("NDCG@10", "Hit@10", "Coverage@10")} for m in results}
        merge([{"rows": rows, "items": items, "users": users, "stage": "quality (loo test)", "metrics": quality}])
    return out


def merge(new: list[dict]) -> None:
    """Replace rows of the same size and stage in scale.json with ``new``; rewrite the report."""
    path = OUT / "scale.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["rows"], r["items"], r["stage"]) for r in new}
    rows = [r for r in old if (r["rows"], r["items"], r["stage"]) not in keys] + new
    rows.sort(key=lambda r: (r["rows"] or 0, r["items"], r["stage"]))
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    report(rows)


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(rows)."""
    if len({r for r, _ in points}) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def report(rows: list[dict]) -> None:
    timed_rows = [r for r in rows if r.get("rows") and "seconds" in r]
    sizes = sorted({(r["rows"], r["items"], r["users"]) for r in timed_rows})
    lines = [
        "# Scale: seconds and peak RSS per stage",
        "",
        f"`python bench/scale.py --size 100k 1m 10m` on {platform.machine()}, {os.cpu_count()} cores; "
        f"settings: {', '.join(SETTINGS)}. Cells: seconds / peak RSS MB. `b`: fitted exponent of "
        f"seconds ∝ rows^b (target ≤ {TARGET_B} for {', '.join(BOUNDED)}).",
        "",
        "| stage | " + " | ".join(f"{r:,} rows, {i:,} items, {u:,} users" for r, i, u in sizes) + " | b |",
        "|---|" + "---|" * (len(sizes) + 1),
    ]
    for stage in STAGES:
        cells, points = [], []
        for size in sizes:
            hit = [r for r in timed_rows if (r["rows"], r["items"], r["users"]) == size and r["stage"] == stage]
            cells.append(f"{hit[0]['seconds']:.1f} s / {hit[0]['peak_rss_mb']:,.0f}" if hit else "")
            points += [(size[0], hit[0]["seconds"])] if hit else []
        if any(cells):
            b = exponent(points)
            lines.append(f"| {stage} | " + " | ".join(cells) + f" | {'' if b is None else f'{b:.2f}'} |")
    cells = []
    for size in sizes:
        done = [r for r in timed_rows if (r["rows"], r["items"], r["users"]) == size and r["stage"] in STAGES]
        total = f"**{sum(r['seconds'] for r in done) / 60:.1f} min**"
        cells.append(total if len(done) == len(STAGES) else f"{total} ({len(done)} of {len(STAGES)} stages)")
    lines.append("| **all stages** | " + " | ".join(cells) + " | |")
    tier_b = [r for r in rows if r.get("stage") == "index (tier B)"]
    if tier_b:
        lines += ["", "Tier B, the index at 1M items (`python bench/scale.py --tier b`):", ""]
        lines += [
            "| factory | build s | recall@10 (user queries) | QPS | exact QPS | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in tier_b:
            lines.append(
                f"| {r.get('factory')} | {r['seconds']:.1f} | {r.get('recall_at_10', float('nan')):.4f} | "
                f"{r.get('qps', 0):,.0f} | {r.get('exact_qps', 0):,.0f} | {r['peak_rss_mb']:,.0f} |"
            )
    quality = [r for r in rows if r.get("stage") == "quality (loo test)"]
    if quality:
        lines += ["", "Quality on the synthetic logs (loo test, the same runs):", ""]
        lines += ["| size | model | NDCG@10 | Hit@10 | Coverage@10 |", "|---|---|---|---|---|"]
        for r in quality:
            for model, m in r["metrics"].items():
                lines.append(
                    f"| {r['rows']:,} rows | {model} | {m['NDCG@10']:.4f} | {m['Hit@10']:.4f} "
                    f"| {m['Coverage@10']:.4f} |"
                )
    (OUT / "scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", nargs="*", choices=list(SIZES), default=[])
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES))
    parser.add_argument("--tier", choices=["b"], help="b: the index at 1M items")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertrec-scale"), help="Scratch folder.")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="More params for every stage.")
    parser.add_argument("--report", action="store_true", help="Only rewrite scale.md from scale.json.")
    parser.add_argument(
        "--keep", action="store_true", help="Reuse the size's scratch project (its outputs and text-feature cache)."
    )
    args = parser.parse_args()
    if args.report:
        report(json.loads((OUT / "scale.json").read_text()))
        return
    for name in args.size:
        run_size(name, args.work, tuple(args.stages), args.extra, args.keep)
    if args.tier == "b":
        sys.path.insert(0, str(ROOT / "bench"))
        from index_scale import tier_b

        merge([r | {"stage": "index (tier B)"} for r in tier_b(1_000_000)])


if __name__ == "__main__":
    main()
