"""The README's model table: bertrec beside SASRec and the baselines, per seed, with the ablations.

Each run trains one model on one split with one seed (params.yaml plus the run's overrides) and
evaluates it on the split's test targets: every seed's NDCG@10, Hit@10, Coverage@10 and TailHit@10
(with the rest of the metrics) and their means and standard deviations. bertrec is reported with
its re-ranking (rerank.penalty, beta chosen on validation by the train stage's code), with the
popularity penalty instead, and without re-ranking, from the same trained model (kept under
outputs/bench/model_table/bundles/, so a new variant is scored without retraining). SASRec is the
`sasrec` baseline (baselines.sasrec). On loo, a paired bootstrap over users compares bertrec with
SASRec (per-user NDCG@10 averaged over the seeds both ran), and the study that found the tuned
settings is summarised from its database (tune.study).

Every run's result is kept under outputs/bench/model_table/, so the table is built in pieces and
resumed; ``--report`` only rebuilds the JSON, the Markdown and the README section from them. A kept
bundle is reused whatever params.yaml says now: delete it (or its run's JSON and bundle) after
changing the model's or training's params.

    python bench/model_table.py    # every run: hours (one thread: a default 3-6 min, an ensemble 11-13)
    python bench/model_table.py --only sasrec --only bertrec   # some runs (labels start with these)
    python bench/model_table.py --only "bertrec default" --seed 2026   # one seed (run lanes side by side)
    python bench/model_table.py --report --study ml100k-loo   # bench/reports/model_table.{json,md} and the README

Run it after `make run` (it reads data/prepared and data/splits).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
RUNS_DIR = ROOT / "outputs" / "bench" / "model_table"
# each bertrec run's trained model, by split, seed and the overrides that change training (not rerank.*):
# later runs of the same model, a new re-ranking among them, reload it
BUNDLES = RUNS_DIR / "bundles"
README = ROOT / "README.md"
MARK = "<!-- model_table.md -->"
SHOWN = ("NDCG@10", "Hit@10", "Coverage@10", "TailHit@10", "MRR@10", "ARP@10")
SEEDS = (2026, 2027, 2028, 2029, 2030)
# PROTOCOL.md's RecBole references (loo test).
RECBOLE = {
    "RecBole SASRec (PROTOCOL.md)": {"NDCG@10": 0.1110, "Hit@10": 0.2206, "MRR@10": 0.0780, "Coverage@10": 0.474},
    "RecBole GRU4Rec (PROTOCOL.md)": {"NDCG@10": 0.1061, "Hit@10": 0.2110, "MRR@10": 0.0747, "Coverage@10": 0.503},
    "RecBole BPR (PROTOCOL.md)": {"NDCG@10": 0.0673, "Hit@10": 0.1241, "MRR@10": 0.0502, "Coverage@10": 0.321},
}
# The best single model of study ml100k-loo (trial 6; trial 2 is the same with model.ensemble=3): the
# README's tuned profile. params.yaml keeps the CPU defaults.
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
    ("bertrec ensemble of 3 defaults", "loo", ["model.ensemble=3"], SEEDS),
    ("bertrec ensemble of 3 defaults, fixed windows", "loo", ["model.ensemble=3", FIXED], SEEDS),
    ("ablation: default, item_repr=id", "loo", ["model.item_repr=id"], SEEDS),
    ("ablation: default, item_repr=id, ensemble of 3", "loo", ["model.item_repr=id", "model.ensemble=3"], SEEDS[:2]),
    ("ablation: default, item_repr=text", "loo", ["model.item_repr=text"], SEEDS[:3]),
    ("ablation: tuned, item_repr=id", "loo", [*TUNED, "model.item_repr=id", FIXED], SEEDS[:1]),
    ("ablation: tuned, item_repr=text", "loo", [*TUNED, "model.item_repr=text", FIXED], SEEDS[:1]),
    ("bertrec tuned", "cold_items", [*TUNED, FIXED], SEEDS[:1]),
    ("bertrec default", "cold_items", [], SEEDS[:1]),
    ("bertrec default, fixed windows", "cold_items", [FIXED], SEEDS[:1]),
]
TARGETS = {"loo": ("test",), "cold_items": ("test_all", "test_new")}
# each against both SASRecs
COMPARED = (
    "bertrec default",
    "bertrec ensemble of 3 defaults",
    "bertrec tuned (popularity penalty)",
    "ablation: default, item_repr=id",
)
# the gate's SASRec (baselines.sasrec as in params.yaml) and the one with random windows (RecBole's figure)
AGAINST = ("sasrec", "sasrec, random windows")
# rows in this order, by label prefix
ORDER = ("bertrec default", "bertrec ensemble", "bertrec tuned", "sasrec", "ablation", "")
# bench/device_paths.py trains through fit() and writes its reports beside the older ones.
OUT = ROOT / "bench" / "results"
COLUMNS = ("NDCG@10", "Hit@10", "MRR@10", "Coverage@10", "ARP@10", "TailShare@10", "TailHit@10", "Gini@10")


def slug(*parts) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def fit(split_name: str, overrides: list[str], seed: int):
    """Train one model on params.yaml plus ``overrides`` (no re-ranking); its record (timings, metrics) and scorer."""
    from bertrec.config import load_params
    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split
    from bertrec.model.ensemble import train_model
    from bertrec.ranking.evaluate import evaluate_split

    params = load_params(ROOT / "params.yaml", [*overrides, f"train.split={split_name}", f"train.seed={seed}"])
    data = load_dataset(ROOT / params.paths.prepared)
    split = read_split(ROOT / params.paths.splits, split_name, data.n_users, data.n_items)
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


def run_one(label: str, split_name: str, overrides: list[str], seed: int) -> list[dict]:
    """Train (or reload) and evaluate one (label, split, seed); its records (bertrec: each re-ranking and none)."""
    from bertrec.config import load_params
    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split
    from bertrec.model.bundle import load_model, save_model
    from bertrec.model.ensemble import train_model
    from bertrec.model.sasrec import SASRec
    from bertrec.ranking.evaluate import build_cases, evaluate, reference_of, targets, train_set
    from bertrec.ranking.rerank import choose_beta
    from bertrec.ranking.significance import per_user

    sasrec = label.startswith("sasrec")
    seed_key = "baselines.sasrec.seed" if sasrec else "train.seed"
    params = load_params(ROOT / "params.yaml", [*overrides, f"train.split={split_name}", f"{seed_key}={seed}"])
    data = load_dataset(ROOT / params.paths.prepared)
    split = read_split(ROOT / params.paths.splits, split_name, data.n_users, data.n_items)
    train_data = train_set(split, data.items)
    reference = reference_of(train_data)
    began = time.perf_counter()
    if sasrec:
        scorer = SASRec(params).fit_split(split, data.items)
        best_epoch, variants = scorer.best_epoch, [(label, scorer, None, None, None)]
    else:
        trained_by = [o for o in overrides if not o.startswith("rerank.")]  # re-ranking needs no retraining
        kept = BUNDLES / slug(split_name, seed, *trained_by)
        if (kept / "model").exists():
            scorer, _ = load_model(kept)
            training = json.loads((kept / "model" / "training.json").read_text())
            best_epoch, began = training["best_epoch"], time.perf_counter() - training["seconds"]
        else:
            with tempfile.TemporaryDirectory() as work:
                result = train_model(params, split, data.items, Path(work))
            scorer, best_epoch = result.scorer, result.best_epoch
            save_model(scorer, data.items, kept, {"best_epoch": best_epoch, "seconds": time.perf_counter() - began})
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


def baselines(split_name: str) -> list[dict]:
    """popular, itemknn and text-zero-shot (deterministic: one run each) on ``split_name``."""
    from bertrec.config import load_params
    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split
    from bertrec.ranking.baselines import make_baselines
    from bertrec.ranking.evaluate import evaluate_split

    params = load_params(ROOT / "params.yaml", ["baselines.models=[popular, itemknn, text-zero-shot]"])
    data = load_dataset(ROOT / params.paths.prepared)
    split = read_split(ROOT / params.paths.splits, split_name, data.n_users, data.n_items)
    results = evaluate_split(make_baselines(params), split, data.items, params.eval.ks, params.eval.batch_size)
    return [
        {"label": name, "split": split_name, "seed": None, "metrics": {t: m for t, m in by.items() if t != "valid"}}
        for name, by in results.items()
    ]


def collect() -> list[dict]:
    records = []
    for path in sorted(RUNS_DIR.glob("*.json")):
        records += json.loads(path.read_text())
    for record in records:  # runs from before rerank.penalty were re-ranked by popularity: their label says so
        if record.get("rerank_beta") and "rerank_penalty" not in record:
            record["label"], record["rerank_penalty"] = f"{record['label']} (popularity penalty)", "popularity"
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Per (label, split, target): each seed's shown metrics, their means and standard deviations."""
    rows: dict[tuple, dict] = {}
    for record in records:
        for target, metrics in record["metrics"].items():
            key = (record["label"], record["split"], target)
            row = rows.setdefault(key, {"model": key[0], "split": key[1], "target": key[2], "seeds": []})
            row["seeds"].append(
                {"seed": record["seed"], "rerank_beta": record.get("rerank_beta")}
                | {m: metrics[m] for m in SHOWN if m in metrics}
            )
    for row in rows.values():
        for metric in SHOWN:
            values = [s[metric] for s in row["seeds"] if metric in s]
            row[f"mean {metric}"] = statistics.mean(values)
            row[f"std {metric}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return list(rows.values())


def bootstrap(records: list[dict], a: str, b: str) -> dict | None:
    """Paired bootstrap over loo test users of ``a`` against ``b`` (per-user NDCG@10 averaged over common seeds)."""
    from bertrec.ranking.significance import paired_bootstrap

    def users(label: str) -> dict[int, np.ndarray]:
        return {
            r["seed"]: np.asarray(r["user_ndcg"]["test"])
            for r in records
            if r["label"] == label and r["split"] == "loo" and "user_ndcg" in r
        }

    mine, theirs = users(a), users(b)
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    result = paired_bootstrap(
        np.mean([mine[s] for s in seeds], axis=0), np.mean([theirs[s] for s in seeds], axis=0), seed=0
    )
    return {"a": a, "b": b, "metric": "loo/test/NDCG@10", "seeds": seeds} | result.to_dict()


def study_summary(name: str | None) -> dict | None:
    """The study ``name`` (default: tune.study) from tune.storage: trials by state, the best trial."""
    from bertrec.config import load_params
    from bertrec.mlops.tune import PARENT_RUN_ATTR, open_storage, storage_url

    params = load_params(ROOT / "params.yaml", [f"tune.study={name}"] if name else [])
    try:
        import optuna

        storage = open_storage(storage_url(params))
        study = optuna.load_study(study_name=params.tune.study, storage=storage)
    except Exception as exc:  # no study yet: the table says so
        print(f"no study summary: {exc}", file=sys.stderr)
        return None
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    best = study.best_trial if states.get("COMPLETE") else None
    return {
        "study": params.tune.study,
        "parent_run": f"tune-{params.tune.study}",
        "parent_run_id": study.user_attrs.get(PARENT_RUN_ATTR),
        "trials": states,
        "best_value": best.value if best else None,
        "best_params": best.params if best else {},
        "best_trial": best.number if best else None,
        "best_rerank_beta": best.user_attrs.get("rerank_beta") if best else None,
        "best_valid_coverage_at_10": best.user_attrs.get("valid_coverage_at_10") if best else None,
    }


def cell(row: dict, metric: str) -> str:
    mean, std = row[f"mean {metric}"], row[f"std {metric}"]
    text = f"{mean:.1f}" if metric.startswith("ARP") else f"{mean:.4f}"
    return text + (f" ± {std:.4f}" if len(row["seeds"]) > 1 and not metric.startswith("ARP") else "")


def markdown(report: dict) -> str:
    lines = []
    for split_name, targets in TARGETS.items():
        for target in targets:
            rows = sorted(
                (r for r in report["rows"] if r["split"] == split_name and r["target"] == target),
                key=lambda r: next(i for i, p in enumerate(ORDER) if r["model"].startswith(p)),
            )
            if not rows:
                continue
            lines += [
                f"\n**{split_name} · {target}** (mean ± standard deviation over seeds)\n",
                "| model | seeds | " + " | ".join(SHOWN) + " |",
                "|---|---" + "|---" * len(SHOWN) + "|",
            ]
            for row in rows:
                seeds = str(len(row["seeds"])) if row["seeds"][0]["seed"] is not None else "-"
                lines.append("| " + " | ".join([row["model"], seeds, *[cell(row, m) for m in SHOWN]]) + " |")
            if split_name == "loo":
                for name, values in RECBOLE.items():
                    cells = [f"{values[m]:.4f}" if m in values else "" for m in SHOWN]
                    lines.append("| " + " | ".join([name, "-", *cells]) + " |")
    for test in report.get("bootstrap") or []:
        lines.append(
            f"\nPaired bootstrap over the {len(test['seeds'])} common seeds' "
            f"loo test users ({test['resamples']} resamples): {test['a']} - {test['b']} NDCG@10 = "
            f"{test['difference']:+.4f} ({test['relative']:+.1%}), {test['level']:.0%} interval "
            f"[{test['low']:+.4f}, {test['high']:+.4f}]."
        )
    study = report.get("study")
    if study:
        trials = ", ".join(f"{n} {s.lower()}" for s, n in sorted(study["trials"].items()))
        best = ", ".join(
            f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`" for k, v in study["best_params"].items()
        )
        lines.append(
            f"\nStudy `{study['study']}` (MLflow parent run `{study['parent_run']}`): {trials}; best trial "
            f"{study['best_trial']}, validation NDCG@10 after re-ranking {study['best_value']:.4f} "
            f"(beta {study['best_rerank_beta']}, validation Coverage@10 "
            f"{study['best_valid_coverage_at_10']:.3f}): {best}."
        )
    return "\n".join(lines).lstrip("\n") + "\n"


def write_report(study: str | None = None) -> dict:
    records = collect()
    for split_name in TARGETS:
        if any(r["split"] == split_name for r in records) and not (RUNS_DIR / f"baselines-{split_name}.json").exists():
            (RUNS_DIR / f"baselines-{split_name}.json").write_text(json.dumps(baselines(split_name)))
    records = collect()
    import torch

    report = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "seeds": list(SEEDS),
        "rows": summarise(records),
        "bootstrap": [test for b in AGAINST for a in COMPARED if (test := bootstrap(records, a, b)) is not None],
        "study": study_summary(study),
    }
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "model_table.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (REPORTS / "model_table.md").write_text(table)
    text = README.read_text()
    if text.count(MARK) == 2:
        head, _, tail = text.split(MARK)
        README.write_text(f"{head}{MARK}\n{table}{MARK}{tail}")
    print(table)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="runs whose label starts with this (repeatable)")
    parser.add_argument("--split", action="append", default=[], help="runs on this split only (repeatable)")
    parser.add_argument("--seed", action="append", type=int, default=[], help="runs with this seed only (repeatable)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the kept runs")
    parser.add_argument("--study", default=None, help="the study to summarise (default: tune.study)")
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
