"""The training and embedding paths timed on one device (CPU or CUDA), with the accuracy each reaches.

For every variant: trains on ``loo`` (params.yaml plus the variant's overrides), records seconds per
epoch, epochs run and the test metrics; then embeds the whole catalogue through the trained item
tower (one warm-up pass, then the median of three timed passes). Writes
``bench/results/device_paths_<device>.json`` and ``.md``.

    python bench/device_paths.py --device cuda --seeds 2026 2027 2028   # every variant, three seeds
    python bench/device_paths.py --device cpu --variants frozen         # the CPU reference
    python bench/device_paths.py --device cuda --set model.encoder=/path/to/minilm

Run it after `make run` (it reads data/prepared and data/splits).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time

import torch
from model_table import COLUMNS, OUT, ROOT, fit

from bertrec.config import load_params
from bertrec.data.dataset import load_dataset
from bertrec.model.embed import embed_catalogue

# label -> overrides. `frozen` is the CPU default: encoder frozen, its features computed once.
VARIANTS = {
    "frozen": [],
    "top-2-layers": ["train.freeze_layers=4"],
    "all-layers": ["train.freeze_layers=0"],
}


def embed_seconds(scorer, items, batch_size: int, repeats: int = 3) -> float:
    """Median seconds of one catalogue pass through the item tower, after a warm-up pass."""
    embed_catalogue(scorer, items, batch_size)
    return statistics.median(embed_catalogue(scorer, items, batch_size)[1].seconds for _ in range(repeats))


def markdown(results: dict) -> str:
    head = ["variant", "seeds", "s/epoch", "epochs", "train s", "embed items/s", *COLUMNS[:4]]
    lines = [
        f"device: {results['machine']['device_name']} (means over seeds)\n",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for label, runs in results["runs"].items():
        mean = {
            key: statistics.mean(r[key] for r in runs)
            for key in ("seconds_per_epoch", "epochs", "train_seconds", "embed_items_per_second")
        }
        test = {c: statistics.mean(r["metrics"]["test"][c] for r in runs) for c in COLUMNS[:4]}
        cells = [
            label,
            str(len(runs)),
            f"{mean['seconds_per_epoch']:.2f}",
            f"{mean['epochs']:.0f}",
            f"{mean['train_seconds']:.0f}",
            f"{mean['embed_items_per_second']:.0f}",
            *(f"{test[c]:.4f}" for c in COLUMNS[:4]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default: train.seed")
    parser.add_argument("--set", dest="set_", action="append", default=[], help="override for every variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # one line per epoch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    params = load_params(ROOT / "params.yaml", args.set_)
    items = load_dataset(ROOT / params.paths.prepared).items
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    results: dict = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "device": args.device,
            "device_name": name,
        },
        "runs": {},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"device_paths_{args.device}"
    for label in args.variants:
        for seed in args.seeds or [params.train.seed]:
            print(f"{label} on {args.device}, seed {seed}", flush=True)
            began = time.perf_counter()
            record, scorer = fit("loo", [*args.set_, *VARIANTS[label], f"train.device={args.device}"], seed)
            seconds = embed_seconds(scorer, items, params.model.encode_batch_size)
            record |= {
                "embed_seconds": seconds,
                "embed_items_per_second": len(items) / seconds,
                "wall_seconds": time.perf_counter() - began,
            }
            results["runs"].setdefault(label, []).append(record)
            # Written after every run, so a bench cut short keeps what it measured.
            stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
            stem.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
