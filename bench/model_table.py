"""The README's model table: bertrec beside the baselines on every split, with the ablations.

Trains the two-tower model once per (split, variant, seed) with params.yaml plus the variant's
overrides, evaluates it on the test targets of its split beside the three baselines, and writes
``bench/results/model_table.json`` and ``bench/results/model_table.md``.

    python bench/model_table.py                # the full table (about 30 minutes on 2 CPU cores)
    python bench/model_table.py --quick        # one seed, loo only

Run it after `make run` (it reads data/prepared and data/splits).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertrec.config import load_params
from bertrec.data.dataset import load_dataset
from bertrec.data.split import read_split
from bertrec.model.scorer import TowerScorer
from bertrec.model.train import train
from bertrec.ranking.baselines import make_baselines
from bertrec.ranking.evaluate import evaluate_split

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
COLUMNS = ("NDCG@10", "Hit@10", "MRR@10", "Coverage@10", "ARP@10", "TailShare@10", "TailHit@10", "Gini@10")
# PROTOCOL.md's RecBole references (loo test).
RECBOLE = {
    "BPR": {"NDCG@10": 0.0673, "Hit@10": 0.1241, "MRR@10": 0.0502, "Coverage@10": 0.321, "ARP@10": 275.9},
    "SASRec (10 epochs)": {
        "NDCG@10": 0.1110,
        "Hit@10": 0.2206,
        "MRR@10": 0.0780,
        "Coverage@10": 0.474,
        "ARP@10": 171.2,
    },
    "GRU4Rec": {"NDCG@10": 0.1061, "Hit@10": 0.2110, "MRR@10": 0.0747, "Coverage@10": 0.503, "ARP@10": 183.0},
}
# (split, label, overrides, seeds)
RUNS = [
    ("loo", "bertrec hybrid + sequence", [], (2026, 2027, 2028)),
    ("ratio", "bertrec hybrid + sequence", [], (2026,)),
    ("cold_items", "bertrec hybrid + sequence", [], (2026,)),
    ("loo", "ablation: item_repr=text", ["model.item_repr=text"], (2026,)),
    ("cold_items", "ablation: item_repr=text", ["model.item_repr=text"], (2026,)),
    ("loo", "ablation: item_repr=id", ["model.item_repr=id"], (2026,)),
    ("cold_items", "ablation: item_repr=id", ["model.item_repr=id"], (2026,)),
    ("loo", "ablation: user_encoder=text", ["model.user_encoder=text"], (2026,)),
]


def fit(split_name: str, overrides: list[str], seed: int) -> tuple[dict, TowerScorer]:
    """Train one model on params.yaml plus ``overrides``; its record (timings, test metrics) and scorer."""
    params = load_params(ROOT / "params.yaml", [*overrides, f"train.split={split_name}", f"train.seed={seed}"])
    data = load_dataset(ROOT / params.paths.prepared)
    split = read_split(ROOT / params.paths.splits, split_name, data.n_users, data.n_items)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = train(params, split, data.items, Path(work))
    seconds = time.perf_counter() - began
    metrics = evaluate_split([result.scorer], split, data.items, params.eval.ks, params.eval.batch_size)["bertrec"]
    record = {
        "split": split_name,
        "overrides": overrides,
        "seed": seed,
        "train_seconds": seconds,
        "epochs": len(result.epochs),
        "best_epoch": result.best_epoch,
        "metrics": metrics,
        "seconds_per_epoch": statistics.mean(e.seconds for e in result.epochs),
    }
    return record, result.scorer


def run_one(split_name: str, overrides: list[str], seed: int) -> dict:
    return fit(split_name, overrides, seed)[0]


def mean_metrics(runs: list[dict], target: str) -> dict[str, float]:
    return {k: statistics.mean(r["metrics"][target][k] for r in runs) for k in runs[0]["metrics"][target]}


def row(label: str, values: dict[str, float]) -> str:
    cells = [f"{values[c]:.1f}" if c.startswith("ARP") else f"{values[c]:.4f}" if c in values else "" for c in COLUMNS]
    return "| " + " | ".join([label, *cells]) + " |"


def markdown(results: dict) -> str:
    lines = []
    for split_name, targets in (("loo", ["test"]), ("ratio", ["test"]), ("cold_items", ["test_all", "test_new"])):
        for target in targets:
            lines += [
                f"\n**{split_name} · {target}**\n",
                "| model | " + " | ".join(COLUMNS) + " |",
                "|---" * (len(COLUMNS) + 1) + "|",
            ]
            for label, runs in results["runs"].items():
                mine = [r for r in runs if r["split"] == split_name]
                if mine:
                    seeds = f" ({len(mine)} seeds)" if len(mine) > 1 else ""
                    lines.append(row(label + seeds, mean_metrics(mine, target)))
            for name, by_target in results["baselines"].get(split_name, {}).items():
                lines.append(row(name, by_target[target]))
            if split_name == "loo":
                lines += [row(f"RecBole {name} (PROTOCOL.md)", values) for name, values in RECBOLE.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed of the default model on loo only")
    args = parser.parse_args()
    runs = RUNS[:1] if args.quick else RUNS
    params = load_params(ROOT / "params.yaml")
    data = load_dataset(ROOT / params.paths.prepared)
    results: dict = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "runs": {},
        "baselines": {},
    }
    for split_name in sorted({s for s, *_ in runs}):
        split = read_split(ROOT / params.paths.splits, split_name, data.n_users, data.n_items)
        results["baselines"][split_name] = evaluate_split(
            make_baselines(params), split, data.items, params.eval.ks, params.eval.batch_size
        )
    for split_name, label, overrides, seeds in runs:
        for seed in seeds[:1] if args.quick else seeds:
            print(f"{label} · {split_name} · seed {seed}", flush=True)
            results["runs"].setdefault(label, []).append(run_one(split_name, overrides, seed))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "model_table.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (OUT / "model_table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
