"""Warm-start retraining against training from scratch, on ml-100k one week later.

A champion is trained from scratch on the log up to T0 (``data.window``). A week later (T1), the
model is retrained on the log up to T1 twice: from scratch, and warm-started from the T0 champion
(``train.init=<its bundle>``, :mod:`bertrec.model.warm`). Each is `bertrec train` in its own
process with OMP_NUM_THREADS=1, one after the other on the same machine (the order alternates by
seed), with params.yaml's settings (copied into the workspace at the first run); both read the
same cached text features. Reported per seed and
on average: the train stage's wall time, its training seconds and epochs, and loo test metrics at T1
(NDCG@10, Hit@10, Coverage@10; as served, with the popularity re-ranking each run chose, and
without it). The champion itself, not retrained, is scored on T1's test too.

Everything runs under outputs/bench/warm_start/ (``--set paths.*``): the project's data, bundle
and metrics are left alone; only the text-features cache (``paths.cache``) is shared. Each run's
result is kept there, so an interrupted bench resumes; ``--report`` only rebuilds the report.

    python bench/warm_start.py                          # seeds 2026-2028 (about 30 minutes on 1 thread)
    python bench/warm_start.py --seeds 2026             # one seed (about 10 minutes)
    python bench/warm_start.py --report                 # bench/reports/warm_start.{json,md} from the saved runs

Needs data/raw (`bertrec fetch`, or `make run`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "outputs" / "bench" / "warm_start"
REPORTS = ROOT / "bench" / "reports"
BIN = Path(sys.executable).parent
T0, T1 = "1998-03-30T00:00:00", "1998-04-06T00:00:00"  # the week with the most ratings of ml-100k (8,700)
SEEDS = (2026, 2027, 2028)
SHOWN = ("NDCG@10", "Hit@10", "Coverage@10")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def window_sets(window: str) -> list[str]:
    """Overrides of one window's data: prepared and split under the workspace, read from the project's raw data."""
    folder = WORK / "windows" / window[:10]
    return [
        f"paths.raw={ROOT / 'data' / 'raw'}",
        f"paths.cache={ROOT / '.cache' / 'bertrec'}",
        f"paths.prepared={folder / 'prepared'}",
        f"paths.splits={folder / 'splits'}",
        f"data.window='{window}'",
    ]


def run_sets(name: str) -> list[str]:
    """Overrides of one training run's outputs: bundle, metrics and outputs in its own folder."""
    folder = WORK / "runs" / name
    return [f"paths.bundle={folder / 'bundle'}", f"paths.metrics={folder / 'metrics'}", f"paths.outputs={folder}"]


def params_file() -> Path:
    """The workspace's copy of params.yaml, taken at the first run: every run of the bench reads the same settings."""
    copy = WORK / "params.yaml"
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((ROOT / "params.yaml").read_text())
    return copy


def bertrec(step: str, sets: list[str]) -> float:
    """Run `bertrec STEP` with ``sets`` on one thread; returns its wall seconds. Fails loudly."""
    command = [str(BIN / "bertrec"), *step.split(), "--params", str(params_file())]
    command += [x for s in sets for x in ("--set", s)]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=os.environ | ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  {step} ({seconds:.0f}s): {done.stdout.strip()}", flush=True)
    return seconds


def prepare(window: str) -> None:
    if not (WORK / "windows" / window[:10] / "splits" / "loo" / "train.parquet").exists():
        bertrec("prepare", window_sets(window))
        bertrec("split --split loo", window_sets(window))


def test_metrics(bundle: Path, window: str) -> dict:
    """loo test metrics at ``window`` of a saved model: as served (its re-ranking) and without re-ranking.

    With each test user's NDCG@10 as served (users in id order, the same for every model of the window)
    and whether the user's test target arrived after T0.
    """
    import pandas as pd
    import torch

    from bertrec.config import load_params
    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split
    from bertrec.model.bundle import load_model
    from bertrec.ranking.evaluate import build_cases, evaluate, reference_of, train_set
    from bertrec.ranking.significance import per_user

    torch.set_num_threads(1)
    params = load_params(params_file(), window_sets(window))
    data = load_dataset(params.paths.prepared)
    split = read_split(params.paths.splits, "loo", data.n_users, data.n_items)
    scorer, items = load_model(bundle, "cpu")
    if items["item_id"].astype(str).tolist() != data.items["item_id"].astype(str).tolist():
        raise SystemExit(f"{bundle}: its catalogue is not that of {window}; score it through the served path")
    cases, reference = build_cases(split, "test"), reference_of(train_set(split, data.items))
    served = evaluate(scorer, cases, reference, params.eval.ks, params.eval.batch_size)
    scorer.penalty = None
    plain = evaluate(scorer, cases, reference, params.eval.ks, params.eval.batch_size).metrics
    when = split.test.set_index("user_idx")["timestamp"].loc[cases.users].to_numpy()
    return {
        "served": served.metrics,
        "no_rerank": plain,
        "user_ndcg": per_user(served.topk, cases.positives, 10)["NDCG@10"].round(6).tolist(),
        "user_new_target": (when > pd.Timestamp(T0, tz="UTC").timestamp()).tolist(),
    }


def train_run(name: str, window: str, extra: list[str], seed: int) -> dict:
    """One `bertrec train` (kept under runs/NAME.json; read back when there)."""
    saved = WORK / "runs" / f"{name}.json"
    if saved.exists():
        record = json.loads(saved.read_text())
        if "user_ndcg" not in record["test"]:  # a run saved before per-user figures: score its bundle again
            record["test"] = test_metrics(WORK / "runs" / name / "bundle", T1)
            saved.write_text(json.dumps(record, indent=2) + "\n")
        return record
    wall = bertrec("train", [*window_sets(window), *run_sets(name), f"train.seed={seed}", *extra])
    folder = WORK / "runs" / name
    metrics = json.loads((folder / "metrics" / "train.json").read_text())
    record = {
        "name": name,
        "window": window,
        "seed": seed,
        "overrides": extra,
        "wall_seconds": wall,
        "train_seconds": metrics["seconds"],
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "valid_ndcg_at_10": metrics["valid"]["NDCG@10"],
        "rerank_beta": metrics["rerank_beta"],
        "init": metrics["init"],
        "test": test_metrics(folder / "bundle", T1),
    }
    saved.write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_seed(seed: int) -> list[dict]:
    champion = train_run(f"champion-{seed}", T0, [], seed)
    arms = [
        ("scratch", []),
        ("warm", [f"train.init={WORK / 'runs' / f'champion-{seed}' / 'bundle'}"]),
    ]
    if seed % 2:  # alternate which arm runs first, so that a slow spell of the machine hits both
        arms.reverse()
    return [champion, *(train_run(f"{arm}-{seed}", T1, extra, seed) for arm, extra in arms)]


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def summarise(records: list[dict]) -> dict:
    """Per seed and on average: the warm arm's speed-up and its NDCG@10 against the scratch arm's."""
    by = {(r["name"].rsplit("-", 1)[0], r["seed"]): r for r in records}
    seeds = sorted(seed for arm, seed in by if arm == "warm" and ("scratch", seed) in by)
    rows = []
    for seed in seeds:
        scratch, warm = by[("scratch", seed)], by[("warm", seed)]
        rows.append(
            {
                "seed": seed,
                "speedup_wall": scratch["wall_seconds"] / warm["wall_seconds"],
                "speedup_train": scratch["train_seconds"] / warm["train_seconds"],
                "speedup_epochs": scratch["epochs_run"] / warm["epochs_run"],
                "ndcg_relative": warm["test"]["served"]["NDCG@10"] / scratch["test"]["served"]["NDCG@10"] - 1,
                "ndcg_relative_no_rerank": warm["test"]["no_rerank"]["NDCG@10"]
                / scratch["test"]["no_rerank"]["NDCG@10"]
                - 1,
            }
        )
    arms = {}
    for arm in ("champion", "scratch", "warm"):
        runs = [by[(arm, s)] for s in seeds]
        arms[arm] = {
            "wall_seconds": mean([r["wall_seconds"] for r in runs]),
            "train_seconds": mean([r["train_seconds"] for r in runs]),
            "epochs_run": mean([r["epochs_run"] for r in runs]),
            **{f"{k} served": mean([r["test"]["served"][k] for r in runs]) for k in SHOWN},
            **{f"{k} no_rerank": mean([r["test"]["no_rerank"][k] for r in runs]) for k in SHOWN},
        }
    speedup = arms["scratch"]["wall_seconds"] / arms["warm"]["wall_seconds"] if seeds else float("nan")
    paired = None
    if seeds:
        import numpy as np

        from bertrec.ranking.significance import paired_bootstrap

        users = {arm: np.mean([by[(arm, s)]["test"]["user_ndcg"] for s in seeds], axis=0) for arm in arms}
        fresh = np.asarray(by[("scratch", seeds[0])]["test"]["user_new_target"])
        paired = paired_bootstrap(users["warm"], users["scratch"]).to_dict()
        for arm in arms:  # NDCG@10 of the users whose test target arrived in the new week, and of the others
            arms[arm] |= {
                "NDCG@10 new-week users": users[arm][fresh].mean(),
                "NDCG@10 other users": users[arm][~fresh].mean(),
            }
        paired["users_with_new_week_target"] = int(fresh.sum())
    relative = arms["warm"]["NDCG@10 served"] / arms["scratch"]["NDCG@10 served"] - 1 if seeds else float("nan")
    return {
        "seeds": seeds,
        "per_seed": rows,
        "arms": arms,
        "speedup_wall": speedup,
        "ndcg_relative": relative,
        "bootstrap_warm_minus_scratch": paired,
        "target": {"speedup_at_least": 3.0, "ndcg_relative_at_least": -0.02},
        "met": bool(speedup >= 3.0 and relative >= -0.02),
    }


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"**Warm start vs from scratch**, ml-100k, champion on the log up to {T0[:10]}, retrained on the log up to "
        f"{T1[:10]} (one week, {report['new_rows']:,} new interactions); loo test at {T1[:10]}; "
        f"seeds {', '.join(map(str, s['seeds']))}; `bertrec train` on 1 thread (OMP_NUM_THREADS=1), params.yaml.",
        "",
        "| run | stage wall s | training s | epochs | NDCG@10 | Hit@10 | Coverage@10 | NDCG@10 (no re-ranking) "
        "| NDCG@10, users with a new-week target | NDCG@10, other users |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "champion": f"champion ({T0[:10]}, not retrained; test at {T1[:10]})",
        "scratch": "retrained from scratch",
        "warm": "warm start from the champion",
    }
    for arm, label in labels.items():
        a = s["arms"][arm]
        lines.append(
            f"| {label} | {a['wall_seconds']:.0f} | {a['train_seconds']:.0f} | {a['epochs_run']:.1f} | "
            f"{a['NDCG@10 served']:.4f} | {a['Hit@10 served']:.4f} | {a['Coverage@10 served']:.4f} | "
            f"{a['NDCG@10 no_rerank']:.4f} | {a['NDCG@10 new-week users']:.4f} | {a['NDCG@10 other users']:.4f} |"
        )
    b = s["bootstrap_warm_minus_scratch"]
    lines += [
        "",
        f"Warm start: **{s['speedup_wall']:.1f}x** faster (stage wall time), NDCG@10 **{s['ndcg_relative']:+.1%}** "
        f"against from scratch (target: >= 3x, within -2%: {'met' if s['met'] else 'not met'}). Paired bootstrap "
        f"over the {report['test_users']} test users (per-user NDCG@10 averaged over "
        f"the seeds), warm - scratch: {b['difference']:+.4f}, 95% interval [{b['low']:+.4f}, {b['high']:+.4f}] "
        f"({b['users_with_new_week_target']} users have their test target in the new week). Per seed:",
        "",
        "| seed | speed-up (wall) | speed-up (training) | epochs, scratch / warm | NDCG@10 warm vs scratch "
        "| without re-ranking |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['seed']} | {r['speedup_wall']:.1f}x | {r['speedup_train']:.1f}x | {r['speedup_epochs']:.1f}x | "
        f"{r['ndcg_relative']:+.1%} | "
        f"{r['ndcg_relative_no_rerank']:+.1%} |"
        for r in s["per_seed"]
    ]
    lines += ["", "Regenerate: `python bench/warm_start.py` (`--report` rebuilds this from the saved runs)."]
    return "\n".join(lines) + "\n"


def write_report() -> dict:
    import pandas as pd
    import torch

    records = [json.loads(p.read_text()) for p in sorted((WORK / "runs").glob("*.json"))]
    stamps = [pd.Timestamp(t, tz="UTC").timestamp() for t in (T0, T1)]
    log = pd.read_parquet(WORK / "windows" / T1[:10] / "prepared" / "interactions.parquet", columns=["timestamp"])
    report = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": 1,
        },
        "windows": {"T0": T0, "T1": T1},
        "new_rows": int(((log["timestamp"] > stamps[0]) & (log["timestamp"] <= stamps[1])).sum()),
        "test_users": len(records[0]["test"]["user_ndcg"]) if records else 0,
        "summary": summarise(records),
        # per-user figures (the bootstrap's input) stay in outputs/bench/warm_start/runs/<run>.json
        "runs": [r | {"test": {k: v for k, v in r["test"].items() if not k.startswith("user_")}} for r in records],
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
    (REPORTS / "warm_start.md").write_text(markdown(report))
    print(markdown(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (both arms)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the saved runs")
    args = parser.parse_args()
    if not args.report:
        for window in (T0, T1):
            prepare(window)
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            run_seed(seed)
    write_report()


if __name__ == "__main__":
    main()
