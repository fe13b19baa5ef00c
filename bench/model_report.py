"""The model table's report: bench/model_table.py's kept runs as JSON, Markdown and the README's section.

``write_report`` reads every kept run under outputs/bench/model_table/ (adding the deterministic
baselines of a split the first time it is reported), summarises them per model, split and target
(each seed's figures, means and standard deviations), bootstraps bertrec against both SASRecs, and
summarises the tuning study; it writes bench/reports/model_table.{json,md} and replaces the README's
section between the two ``<!-- model_table.md -->`` marks. ``python bench/model_table.py --report``
runs it alone.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
RUNS_DIR = ROOT / "outputs" / "bench" / "model_table"
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
TARGETS = {"loo": ("test",), "cold_items": ("test_all", "test_new")}
# each against both SASRecs
COMPARED = (
    "bertrec default",
    "bertrec default, id dropout 0.3",
    "bertrec ensemble of 3 defaults",
    "bertrec ensemble of 3, id dropout 0.3",
    "bertrec ensemble of 5, id dropout 0.3",
    "bertrec tuned (popularity penalty)",
    "ablation: default, item_repr=id",
)
# the gate's SASRec (baselines.sasrec as in params.yaml) and the one with random windows (RecBole's figure)
AGAINST = ("sasrec", "sasrec, random windows")
# rows in this order, by label prefix
ORDER = ("bertrec default", "bertrec ensemble", "bertrec tuned", "sasrec", "ablation", "")


def setup(split_name: str, overrides: list[str], seed_key: str | None = None, seed: int | None = None):
    """One run's params (params.yaml, ``overrides``, the split, ``seed_key`` = ``seed`` when given), the prepared
    data and the split."""
    from bertrec.config import load_params
    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split

    seeded = [f"{seed_key}={seed}"] if seed_key else []
    params = load_params(ROOT / "params.yaml", [*overrides, f"train.split={split_name}", *seeded])
    data = load_dataset(ROOT / params.paths.prepared)
    return params, data, read_split(ROOT / params.paths.splits, split_name, data.n_users, data.n_items)


def baselines(split_name: str) -> list[dict]:
    """popular, itemknn and text-zero-shot (deterministic: one run each) on ``split_name``."""
    from bertrec.ranking.baselines import make_baselines
    from bertrec.ranking.evaluate import evaluate_split

    params, data, split = setup(split_name, ["baselines.models=[popular, itemknn, text-zero-shot]"])
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
