"""False-alarm rate of each drift check (bertrec.mlops.drift.checks) on pairs of windows drawn from one distribution.

Synthetic and seeded, at about the sizes of ml-100k: 943 users, 1,682 items in 18 genres with a
long-tailed popularity, windows of 3,000 interactions (about ten days of ml-100k); a catalogue of
1,500 item vectors (dim 64) against 150 new ones; top-10 lists and first scores for the 500 users
of ``drift.sample_users``. Every pair is drawn from the same distribution, so every drift reported is
a false alarm. Thresholds are those of params.yaml. Writes ``bench/results/drift_false_alarms.json``
and ``bench/results/drift_false_alarms.md``.

    python bench/drift_false_alarms.py             # ten pairs (about five minutes on 2 CPU cores)
    python bench/drift_false_alarms.py --pairs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bertrec.config import DriftParams, load_params
from bertrec.mlops.drift.checks import (
    DriftCheck,
    check_embeddings,
    check_interactions,
    check_predictions,
    prediction_features,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
N_USERS, N_ITEMS, N_GENRES = 943, 1682, 18
WINDOW_ROWS, CATALOGUE, NEW, DIM, K = 3000, 1500, 150, 64, 10
START = 1_700_006_400  # a midnight, UTC


def world(seed: int = 7) -> dict:
    """The fixed distribution every window is drawn from."""
    rng = np.random.default_rng(seed)
    item_p = rng.permutation(1.0 / (np.arange(N_ITEMS) + 10.0) ** 1.1)
    user_p = rng.lognormal(0.0, 1.0, N_USERS)
    genre = rng.integers(0, N_GENRES, N_ITEMS)
    items = pd.DataFrame({"item_id": np.arange(N_ITEMS), "genres": [f"g{g}|g{(g + 1) % N_GENRES}" for g in genre]})
    return {
        "item_p": item_p / item_p.sum(),
        "user_p": user_p / user_p.sum(),
        "items": items,
        "centres": rng.normal(size=(30, DIM)),
        "popularity": np.round(20_000 * item_p / item_p.sum()).astype(int),
    }


def window(w: dict, rng: np.random.Generator) -> pd.DataFrame:
    hours = (
        np.where(rng.random(WINDOW_ROWS) < 0.7, rng.normal(20, 2.5, WINDOW_ROWS), rng.uniform(0, 24, WINDOW_ROWS)) % 24
    )
    return pd.DataFrame(
        {
            "user_id": rng.choice(N_USERS, WINDOW_ROWS, p=w["user_p"]),
            "item_id": rng.choice(N_ITEMS, WINDOW_ROWS, p=w["item_p"]),
            "timestamp": START + rng.integers(0, 10, WINDOW_ROWS) * 86_400 + (hours * 3600).astype(np.int64),
            "rating": rng.choice(5, WINDOW_ROWS, p=[0.06, 0.11, 0.27, 0.34, 0.22]) + 1,
        }
    )


def vectors(w: dict, rng: np.random.Generator, n: int) -> np.ndarray:
    x = w["centres"][rng.integers(0, len(w["centres"]), n)] + 0.7 * rng.normal(size=(n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def predictions(w: dict, rng: np.random.Generator, users: int) -> pd.DataFrame:
    p = w["item_p"]
    topk = np.stack([rng.choice(N_ITEMS, K, replace=False, p=p) for _ in range(users)])
    return prediction_features(topk, rng.normal(5.0, 1.0, users), w["popularity"])


def one_pair(w: dict, seed: int, params: DriftParams) -> dict[str, DriftCheck]:
    rng = np.random.default_rng(seed)
    checks = [
        check_interactions(window(w, rng), window(w, rng), w["items"], params),
        check_embeddings(vectors(w, rng, CATALOGUE), vectors(w, rng, NEW), params),
        check_predictions(predictions(w, rng, params.sample_users), predictions(w, rng, params.sample_users), params),
    ]
    return {check.name: check for check in checks}


def summarise(pairs: list[dict[str, DriftCheck]]) -> dict:
    out = {}
    for name in pairs[0]:
        checks = [pair[name] for pair in pairs]
        entry = {
            "rule": checks[0].details["rule"],
            "threshold": checks[0].threshold,
            "false_alarms": sum(c.drift for c in checks),
            "rate": sum(c.drift for c in checks) / len(checks),
            "scores": [c.score for c in checks],
        }
        if "columns" in checks[0].details:
            entry["columns"] = {
                column: {
                    "test": info["test"],
                    "threshold": info["threshold"],
                    "false_alarms": sum(c.details["columns"][column]["drifted"] for c in checks),
                    "scores": [c.details["columns"][column]["score"] for c in checks],
                }
                for column, info in checks[0].details["columns"].items()
            }
        out[name] = entry
    return out


def markdown(results: dict) -> str:
    n = results["pairs"]
    lines = [
        f"False alarms over {n} same-distribution pairs (thresholds of params.yaml)\n",
        "| check | rule | threshold | false alarms | rate | scores (min .. max) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results["checks"].items():
        scores = entry["scores"]
        lines.append(
            f"| {name} | {entry['rule']} | {entry['threshold']:.3g} | {entry['false_alarms']}/{n} | "
            f"{entry['rate']:.0%} | {min(scores):.4f} .. {max(scores):.4f} |"
        )
    lines += [
        "\nPer column (a column drifting is not by itself a drift of its check)\n",
        "| check | column | test | threshold | drifted | scores (min .. max) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results["checks"].items():
        for column, info in entry.get("columns", {}).items():
            lines.append(
                f"| {name} | {column} | {info['test']} | {info['threshold']:.3g} | {info['false_alarms']}/{n} | "
                f"{min(info['scores']):.4f} .. {max(info['scores']):.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="same-distribution pairs to draw")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml").drift
    w = world()
    began = time.perf_counter()
    pairs = []
    with threadpool_limits(1):  # Evidently's t-SNE picture is ten times slower with OpenMP threads on a busy box
        for seed in range(args.pairs):
            print(f"pair {seed + 1}/{args.pairs}", flush=True)
            pairs.append(one_pair(w, 1000 + seed, params))
    import evidently

    results = {
        "pairs": args.pairs,
        "seconds": time.perf_counter() - began,
        "sizes": {
            "users": N_USERS,
            "items": N_ITEMS,
            "window_rows": WINDOW_ROWS,
            "catalogue": CATALOGUE,
            "new_items": NEW,
            "dim": DIM,
            "sample_users": params.sample_users,
            "k": K,
        },
        "params": params.model_dump(mode="json"),
        "machine": {
            "python": sys.version.split()[0],
            "evidently": evidently.__version__,
            "platform": platform.platform(),
        },
        "checks": summarise(pairs),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "drift_false_alarms.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (OUT / "drift_false_alarms.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
