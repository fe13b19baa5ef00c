"""Where the sampled softmax overtakes the full one: seconds per training step against catalogue size.

The default towers (params.yaml: hybrid items, sequence users, dim 64, 50 positions, batch 128) on
random histories of Zipf-popular items, with frozen (cached) text features of the encoder's width.
For each catalogue size, the same ``--steps`` batches are trained with ``train.loss: full`` and
``sampled`` (1024 negatives, logQ), alternating; the median step time of each is kept, with the
memory the full logits
need. ``train.loss: auto`` (bertrec/model/train.py: FULL_SOFTMAX_MAX_ITEMS) uses the crossover.

    python bench/softmax_crossover.py     # writes bench/reports/softmax_crossover.json and .md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bertrec.config import load_params
from bertrec.model.encoder import TextEncoder
from bertrec.model.features import ItemTextFeatures
from bertrec.model.losses import full_softmax_loss
from bertrec.model.scorer import TowerScorer
from bertrec.model.towers import TowerConfig, TwoTower
from bertrec.model.train import FULL_SOFTMAX_MAX_ITEMS, _sampled_batch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports"
SLOWER = 2.0  # the full softmax (exact gradients) is kept while a step costs at most this many times a sampled one
TEXT_DIM = 384  # all-MiniLM-L6-v2's width


def step_seconds(encoder: TextEncoder, n_items: int, steps: int, seed: int = 0) -> dict:
    p = load_params(ROOT / "params.yaml")
    mp, tp = p.model, p.train
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = TowerConfig(
        n_items, TEXT_DIM, mp.dim, mp.item_repr, "sequence", mp.max_history, mp.layers, mp.heads, mp.dropout,
        mp.temperature,
    )  # fmt: skip
    features = ItemTextFeatures(
        encoder, [], "all", mp.encode_batch_size, cache=rng.standard_normal((n_items, TEXT_DIM), dtype=np.float32)
    )
    scorer = TowerScorer(TwoTower(config), features, np.array([]), torch.device("cpu"))
    optimizer = torch.optim.AdamW(scorer.model.parameters(), lr=tp.lr)
    share = 1.0 / np.arange(1, n_items + 1)  # Zipf popularity, as in real logs and `bertrec synth`
    share /= share.sum()
    popularity = torch.tensor(share, dtype=torch.float32)
    log_pop = torch.log(popularity / popularity.sum())
    known = torch.arange(n_items)
    times: dict[str, list[float]] = {"full": [], "sampled": []}
    for step in range(steps + 1):  # step 0 warms up
        window = torch.from_numpy(rng.choice(n_items, (tp.batch_size, mp.max_history + 1), p=share))
        inputs, targets = window[:, :-1], window[:, 1:]
        for kind in ("full", "sampled") if step % 2 else ("sampled", "full"):
            began = time.perf_counter()
            if kind == "full":
                vectors = scorer.item_vectors()
                users = scorer.model.user_vectors(scorer.history_vectors(inputs, vectors), inputs < 0)
                loss = full_softmax_loss(users, vectors, targets, config.temperature)
            else:
                generator = torch.Generator().manual_seed(step)
                loss = _sampled_batch(scorer, inputs, targets, log_pop, known, tp.negatives, tp.logq, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:
                times[kind].append(time.perf_counter() - began)
    positions = tp.batch_size * mp.max_history
    return {
        "items": n_items,
        "full_s": float(np.median(times["full"])),
        "sampled_s": float(np.median(times["sampled"])),
        "full_logits_mb": positions * n_items * 4 / 2**20,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1_000, 5_000, 10_000, 20_000, 50_000, 100_000])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    encoder = TextEncoder.load(load_params(ROOT / "params.yaml").model.encoder)
    rows = []
    for n in args.items:
        rows.append(step_seconds(encoder, n, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    crossover = max((r["items"] for r in rows if r["full_s"] <= SLOWER * r["sampled_s"]), default=None)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "full_softmax_max_items": FULL_SOFTMAX_MAX_ITEMS,
        "largest_size_where_full_costs_at_most_2x": crossover,
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "softmax_crossover.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Full against sampled softmax: seconds per training step",
        "",
        f"`python bench/softmax_crossover.py` on {report['machine']}; median of {args.steps} steps, "
        "default towers, batch 128 x 50 positions.",
        "",
        "| items | full s/step | sampled s/step | full / sampled | full logits MB |",
        "|---|---|---|---|---|",
        *(
            f"| {r['items']} | {r['full_s']:.3f} | {r['sampled_s']:.3f} | {r['full_s'] / r['sampled_s']:.2f} "
            f"| {r['full_logits_mb']:.0f} |"
            for r in rows
        ),
        "",
        f"Largest catalogue where a full step costs at most {SLOWER}x a sampled one: {crossover}. "
        f"`train.loss: auto` uses the full softmax up to {FULL_SOFTMAX_MAX_ITEMS} items.",
    ]
    (OUT / "softmax_crossover.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
