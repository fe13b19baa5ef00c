"""The README's model table: bertrec beside SASRec and the baselines, per seed, with the ablations.

Each run trains one model on one split with one seed (params.yaml plus the run's overrides) and
evaluates it on the split's test targets: every seed's NDCG@10, Hit@10, Coverage@10 and TailHit@10
(with the rest of the metrics) and their means and standard deviations. bertrec is reported with
its re-ranking (rerank.penalty, beta chosen on validation by the train stage's code), with the
popularity penalty instead, and without re-ranking, from the same trained model (kept under
outputs/bench/model_table/bundles/, so a new variant is scored without retraining). SASRec is the
`sasrec` baseline (baselines.sasrec). On loo, a paired bootstrap over users compares bertrec with
SASRec (per-user NDCG@10 averaged over the seeds both ran), and the study that found the tuned
settings is summarised from its database (tune.storage; --study names it).

Every run's result is kept under outputs/bench/model_table/, so the table is built in pieces and
resumed; ``--report`` only rebuilds the JSON, the Markdown and the README section from them
(bench/model_report.py). A kept bundle is reused whatever params.yaml says now: delete it (or its
run's JSON and bundle) after changing the model's or training's params.

    python bench/model_table.py    # every run: hours (one thread: a model 3-7 min; an ensemble reuses its members)
    python bench/model_table.py --only sasrec --only bertrec   # some runs (labels start with these)
    python bench/model_table.py --only "bertrec default" --seed 2026   # one seed (run lanes side by side)
    python bench/model_table.py --report   # bench/reports/model_table.{json,md} and the README

Run it after `make run` (it reads data/prepared and data/splits).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from model_report import ROOT, RUNS_DIR, SEEDS, setup, write_report

# each bertrec run's trained model, by split, seed and the overrides that change training (not rerank.*):
# later runs of the same model, a new re-ranking among them, reload it
BUNDLES = RUNS_DIR / "bundles"
# The best single model of study ml100k-loo (trial 6; trial 2 is the same with model.ensemble=3): the
# README's tuned profile. params.yaml keeps the CPU defaults. The report summarises that study.
STUDY = "ml100k-loo"
TUNED = [
    "model.score=dot",
    "model.ff_mult=4",
    "model.dropout=0.5",
    "train.lr=0.001",
    "train.batch_size=32",
]
# Every run before train.window_phase: random became the default cut its training windows at fixed places.
FIXED = "train.window_phase=fixed"
# (label, split, overrides, seeds); labels starting "sasrec" train the baseline, every other label the two-tower model.
RUNS = [
    ("sasrec", "loo", [], SEEDS),
    ("sasrec, random windows", "loo", ["baselines.sasrec.window_phase=random"], SEEDS),
    ("bertrec tuned", "loo", [*TUNED, FIXED], SEEDS),
    ("bertrec default", "loo", [], SEEDS),
    ("bertrec default, fixed windows", "loo", [FIXED], SEEDS),
    ("bertrec default, fixed windows, exposure depth 20", "loo", [FIXED, "rerank.exposure_depth=20"], SEEDS),
    ("bertrec default, fixed windows, exposure depth 100", "loo", [FIXED, "rerank.exposure_depth=100"], SEEDS),
    ("bertrec default, id dropout 0.3", "loo", ["model.id_dropout=0.3"], SEEDS),
    ("bertrec default, id dropout 0.5", "loo", ["model.id_dropout=0.5"], SEEDS[:2]),
    ("bertrec default, id dropout 0.15", "loo", ["model.id_dropout=0.15"], SEEDS[:2]),
    ("bertrec ensemble of 3 defaults", "loo", ["model.ensemble=3"], SEEDS),
    ("bertrec ensemble of 3, id dropout 0.3", "loo", ["model.id_dropout=0.3", "model.ensemble=3"], SEEDS),
    ("bertrec ensemble of 5, id dropout 0.3", "loo", ["model.id_dropout=0.3", "model.ensemble=5"], SEEDS),
    ("bertrec ensemble of 3 defaults, fixed windows", "loo", ["model.ensemble=3", FIXED], SEEDS),
    ("ablation: default, item_repr=id", "loo", ["model.item_repr=id"], SEEDS),
    ("ablation: default, item_repr=id, ensemble of 3", "loo", ["model.item_repr=id", "model.ensemble=3"], SEEDS),
    ("ablation: default, item_repr=text", "loo", ["model.item_repr=text"], SEEDS),
    ("ablation: tuned, item_repr=id", "loo", [*TUNED, "model.item_repr=id", FIXED], SEEDS[:1]),
    ("ablation: tuned, item_repr=text", "loo", [*TUNED, "model.item_repr=text", FIXED], SEEDS[:1]),
    ("bertrec tuned", "cold_items", [*TUNED, FIXED], SEEDS[:1]),
    ("bertrec default", "cold_items", [], SEEDS[:2]),
    ("bertrec default, id dropout 0.3", "cold_items", ["model.id_dropout=0.3"], SEEDS[:2]),
    ("bertrec ensemble of 3, id dropout 0.3", "cold_items", ["model.id_dropout=0.3", "model.ensemble=3"], SEEDS[:2]),
    ("bertrec default, fixed windows", "cold_items", [FIXED], SEEDS[:1]),
]
# bench/device_paths.py trains through fit() and writes its reports beside the older ones.
OUT = ROOT / "bench" / "results"
COLUMNS = ("NDCG@10", "Hit@10", "MRR@10", "Coverage@10", "ARP@10", "TailShare@10", "TailHit@10", "Gini@10")


def slug(*parts) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def fit(split_name: str, overrides: list[str], seed: int):
    """Train one model on params.yaml plus ``overrides`` (no re-ranking); its record (timings, metrics) and scorer."""
    from bertrec.model.ensemble import train_model
    from bertrec.ranking.evaluate import evaluate_split

    params, data, split = setup(split_name, overrides, "train.seed", seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = train_model(params, split, data.items, Path(work))
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


def kept_model(params, split, items, trained_by: list[str]):
    """The model ``params`` train (``trained_by``: the run's overrides that change training), its best epoch and
    training seconds; reloaded from BUNDLES when kept there, else trained and kept.

    An ensemble's K members are the single models of seeds train.seed .. + K-1 (what
    ``bertrec.model.ensemble.train_model`` trains), so each is reused from, or kept as, its own single-model
    bundle: an ensemble row costs only the members no other run trained. Its best epoch is the first
    member's, its seconds the members' sum.
    """
    from bertrec.model.bundle import load_model, save_model
    from bertrec.model.ensemble import ensemble_of, member_params, train_model

    seed = params.train.seed
    kept = BUNDLES / slug(params.train.split, seed, *trained_by)
    if (kept / "model").exists():
        scorer, _ = load_model(kept)
        training = json.loads((kept / "model" / "training.json").read_text())
        return scorer, training["best_epoch"], training["seconds"]
    k = params.model.ensemble
    if k > 1:
        single = [o for o in trained_by if not o.startswith("model.ensemble=")]
        members = [kept_model(member_params(params, m), split, items, single) for m in range(k)]
        scorer, best_epoch, seconds = ensemble_of([m[0] for m in members]), members[0][1], sum(m[2] for m in members)
    else:
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            result = train_model(params, split, items, Path(work))
        scorer, best_epoch, seconds = result.scorer, result.best_epoch, time.perf_counter() - began
    save_model(scorer, items, kept, {"best_epoch": best_epoch, "seconds": seconds})
    return scorer, best_epoch, seconds


def run_one(label: str, split_name: str, overrides: list[str], seed: int) -> list[dict]:
    """Train (or reload) and evaluate one (label, split, seed); its records (bertrec: each re-ranking and none)."""
    from bertrec.model.sasrec import SASRec
    from bertrec.ranking.evaluate import build_cases, evaluate, reference_of, targets, train_set
    from bertrec.ranking.rerank import choose_beta
    from bertrec.ranking.significance import per_user

    sasrec = label.startswith("sasrec")
    seed_key = "baselines.sasrec.seed" if sasrec else "train.seed"
    params, data, split = setup(split_name, overrides, seed_key, seed)
    train_data = train_set(split, data.items)
    reference = reference_of(train_data)
    began = time.perf_counter()
    if sasrec:
        scorer = SASRec(params).fit_split(split, data.items)
        best_epoch, variants = scorer.best_epoch, [(label, scorer, None, None, None)]
    else:
        trained_by = [o for o in overrides if not o.startswith("rerank.")]  # re-ranking needs no retraining
        scorer, best_epoch, seconds = kept_model(params, split, data.items, trained_by)
        began = time.perf_counter() - seconds
        valid = build_cases(split, "valid").sample(params.train.valid_users, params.train.seed)
        variants = [] if trained_by != overrides else [(f"{label} (no re-ranking)", scorer, None, 0.0, None)]
        if params.rerank.penalty != "popularity" and variants:  # the other penalty beside it, from the same model
            other = params.rerank.model_copy(update={"penalty": "popularity"})
            beta = choose_beta(scorer, valid, reference, other, params.eval.batch_size).beta
            variants.insert(0, (f"{label} (popularity penalty)", scorer, scorer.penalty, beta, "popularity"))
        beta = choose_beta(scorer, valid, reference, params.rerank, params.eval.batch_size).beta
        variants.insert(0, (label, scorer, scorer.penalty, beta, params.rerank.penalty))
    seconds = time.perf_counter() - began
    records = []
    for name, model, penalty, beta, kind in variants:
        if hasattr(model, "penalty"):
            model.penalty = penalty
        metrics, users = {}, {}
        for target in targets(split):
            if target == "valid":
                continue
            cases = build_cases(split, target)
            evaluation = evaluate(model, cases, reference, params.eval.ks, params.eval.batch_size)
            metrics[target] = evaluation.metrics
            users[target] = per_user(evaluation.topk, cases.positives, 10)["NDCG@10"].tolist()
        records.append(
            {
                "label": name,
                "split": split_name,
                "overrides": overrides,
                "seed": seed,
                "rerank_beta": beta,
                "rerank_penalty": kind,
                "train_seconds": round(seconds, 1),
                "best_epoch": best_epoch,
                "metrics": metrics,
                "user_ndcg": users,
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="runs whose label starts with this (repeatable)")
    parser.add_argument("--split", action="append", default=[], help="runs on this split only (repeatable)")
    parser.add_argument("--seed", action="append", type=int, default=[], help="runs with this seed only (repeatable)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the kept runs")
    parser.add_argument("--study", default=STUDY, help=f"the study to summarise (default: {STUDY}, the tuned one's)")
    args = parser.parse_args()
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for label, split_name, overrides, seeds in RUNS:
            if args.only and not any(label.startswith(o) for o in args.only):
                continue
            if args.split and split_name not in args.split:
                continue
            for seed in seeds:
                if args.seed and seed not in args.seed:
                    continue
                path = RUNS_DIR / f"{slug(label, split_name, seed)}.json"
                if path.exists():
                    continue
                print(f"{label} · {split_name} · seed {seed}", flush=True)
                path.write_text(json.dumps(run_one(label, split_name, overrides, seed)))
    write_report(args.study)


if __name__ == "__main__":
    main()
