"""The `baselines` stage: every baseline evaluated on the chosen splits, into ``metrics/baselines.json``.

Figures of splits not evaluated in this run are kept while they are of the same data and baseline
configuration (:func:`bertrec.ranking.results.baselines_report`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertrec.compute.engine import announce, engine_for
from bertrec.config import Params
from bertrec.data.dataset import MANIFEST_FILE, load_dataset
from bertrec.data.split import check_split_names, read_split
from bertrec.io import write_json
from bertrec.ranking.baselines import make_baselines
from bertrec.ranking.evaluate import evaluate_split, targets
from bertrec.ranking.results import BASELINES_FILE, BASELINES_TOPK, baselines_report
from bertrec.render import Results, markdown_table


@dataclass(frozen=True)
class Evaluated:
    path: Path  # the report written
    title: str  # the dataset's name
    by_split: dict[str, Results]
    targets: dict[str, tuple[str, ...]]  # per split, the targets to show (validation left out)
    k: int

    def summary(self) -> str:
        parts = []
        for split, results in self.by_split.items():
            for target in self.targets[split]:
                parts.append(f"\n{self.title} · {split} · {target}\n\n{markdown_table(results, target, self.k)}")
        return "\n".join([*parts, f"\n-> {self.path}"])


def run(p: Params, names: list[str] | None = None) -> Evaluated:
    """Evaluate every baseline of ``baselines.models`` on ``names`` (default: ``eval.splits``).

    SASRec, which trains, runs only on ``baselines.sasrec.splits``.
    """
    names = check_split_names(list(names or p.eval.splits))
    data = load_dataset(p.paths.prepared)
    dataset = json.loads((p.paths.prepared / MANIFEST_FILE).read_text())["dataset"]
    report = baselines_report(p, dataset)
    engine = engine_for(p.compute)
    announce("baselines", engine, "text encoding and ranking")
    scorers = make_baselines(p, engine)
    shown: dict[str, tuple[str, ...]] = {}
    for name in names:
        split = read_split(p.paths.splits, name, data.n_users, data.n_items)
        topk = p.paths.outputs / BASELINES_TOPK
        here = [s for s in scorers if s.name != "sasrec" or name in p.baselines.sasrec.splits]
        report["splits"][name] = evaluate_split(here, split, data.items, p.eval.ks, p.eval.batch_size, topk, engine)
        shown[name] = tuple(t for t in targets(split) if t != "valid")
    path = p.paths.metrics / BASELINES_FILE
    write_json(path, report)
    return Evaluated(path, dataset, {n: report["splits"][n] for n in names}, shown, min(p.eval.ks))
