"""Serving latency of `mlflow models serve` on loopback: this tree against an earlier revision, side by side.

For each revision the same bundle is saved as that revision's pyfunc model (its own code, its own
way of logging: a pickled object before models-from-code, the code file after) and served with
`mlflow models serve --env-manager local` on 127.0.0.1. After a warm-up, ``--requests`` sequential
POSTs of one history each (``k`` 10, histories of real users of the prepared data, the same list
for every server) are timed on the client. Servers alternate, before then after, for ``--rounds``
rounds. Writes ``bench/reports/serving_latency.json`` and ``.md``.

    python bench/serving_latency.py --before 8deadf1    # after `make run` (reads outputs/bundle, data/prepared)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import free_port, serving  # noqa: E402

# Saves the bundle as the pyfunc model of whatever bertrec is first on sys.path.
SAVE = """
import sys
from pathlib import Path
import mlflow.pyfunc
import bertrec
from bertrec.serve import pyfunc
assert Path(bertrec.__file__).parents[1] == Path.cwd(), f"bertrec from {bertrec.__file__}, not {Path.cwd()}"
code = getattr(pyfunc, "MODEL_CODE", None)  # models-from-code, or before it a pickled object
model = {"python_model": str(code) if code else pyfunc.BundleModel()}
mlflow.pyfunc.save_model(
    path=sys.argv[2],
    artifacts={pyfunc.BUNDLE_ARTIFACT: sys.argv[1]},
    signature=pyfunc.SIGNATURE,
    code_paths=[str(Path(bertrec.__file__).parent)],
    **model,
)
"""


def checkout(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (a git worktree) under ``into``; ``"working"`` is this tree."""
    if revision == "working":
        return ROOT
    folder = into / revision
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), revision], cwd=ROOT, check=True)
    return folder


def save_model(code: Path, bundle: Path, into: Path) -> Path:
    staged = into / "bundle"
    for part in ("model", "embeddings", "index"):
        shutil.copytree(bundle / part, staged / part)
    env = os.environ | {"PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", SAVE, str(staged), str(into / "model")], env=env, check=True, cwd=code)
    return into / "model"


def post(port: int, history: list[str]) -> float:
    body = json.dumps({"dataframe_records": [{"history": history}], "params": {"k": 10}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - start
    assert len(answer["predictions"][0]["item_ids"]) == 10, answer
    return elapsed


def time_server(code: Path, model: Path, histories: list[list[str]], warmup: int, log: Path) -> list[float]:
    port = free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = {"PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    with serving(command, f"http://127.0.0.1:{port}/ping", log, env):
        for history in histories[:warmup]:
            post(port, history)
        return [post(port, history) for history in histories]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", default="working", help="git revision (default: this working tree)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "outputs" / "bundle")
    parser.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--history", type=int, default=20, help="items per request history (the user's last)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    log = pd.read_parquet(args.prepared / "interactions.parquet").sort_values(["user_id", "timestamp"])
    users = log.groupby("user_id")["item_id"].agg(lambda s: [str(i) for i in s.tail(args.history)])
    picked = np.random.default_rng(args.seed).choice(len(users), args.requests, replace=len(users) < args.requests)
    histories = [users.iloc[i] for i in picked]

    revisions = {"before": args.before, "after": args.after}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    names = {
        label: (f"{head.strip()}{'+changes' if dirty.stdout else ''}" if rev == "working" else rev)
        for label, rev in revisions.items()
    }
    runs: dict[str, list[float]] = {label: [] for label in revisions}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bertrec-latency-") as tmp:
        work = Path(tmp)
        try:
            codes = {label: checkout(rev, work / "trees") for label, rev in revisions.items()}
            models = {label: save_model(codes[label], args.bundle, work / label) for label in revisions}
            for round_ in range(args.rounds):
                for label in revisions:
                    seconds = time_server(codes[label], models[label], histories, args.warmup, work / f"{label}.log")
                    runs[label] += seconds
                    rounds.append({"round": round_ + 1, "revision": label} | percentiles(seconds))
                    print(rounds[-1], flush=True)
        finally:
            for rev in revisions.values():
                if rev != "working":
                    subprocess.run(["git", "worktree", "remove", "--force", str(work / "trees" / rev)], cwd=ROOT)
    report = {
        "what": "POST /invocations, one history per request, k=10, sequential, loopback, `mlflow models serve -w 1`",
        "revisions": names,
        "requests_per_round": args.requests,
        "warmup": args.warmup,
        "rounds": rounds,
        "pooled": {label: percentiles(seconds) for label, seconds in runs.items()},
        "ratio_after_over_before": {
            key: percentiles(runs["after"])[key] / percentiles(runs["before"])[key]
            for key in ("p50_ms", "p95_ms", "p99_ms")
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["python", "bench/serving_latency.py", *sys.argv[1:]]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Serving latency, before and after (loopback, sequential)",
        "",
        f"`{report['command']}`: {report['what']}; {args.requests} requests per round after {args.warmup} "
        f"warm-up requests, {args.rounds} rounds alternating; {report['machine']['cpus']} CPUs.",
        "",
        "| revision | p50 ms | p95 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|",
    ]
    for label, stats in report["pooled"].items():
        cells = [
            f"{label} ({names[label]})",
            *(f"{stats[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    ratio = report["ratio_after_over_before"]
    lines += [
        "",
        f"after / before: p50 {ratio['p50_ms']:.2f}, p95 {ratio['p95_ms']:.2f}, p99 {ratio['p99_ms']:.2f}",
        "",
    ]
    (OUT / "serving_latency.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
