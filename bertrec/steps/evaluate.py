"""The `evaluate` stage: the trained model beside every baseline on the split it was trained on.

The baselines' figures of the `baselines` stage are reused while they are of the same data and
models; otherwise the baselines are evaluated again here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertrec.compute.engine import announce, engine_for
from bertrec.config import Params
from bertrec.data.dataset import load_dataset
from bertrec.data.split import read_split
from bertrec.io import write_json
from bertrec.model.bundle import load_model, read_training
from bertrec.ranking.baselines import make_baselines
from bertrec.ranking.evaluate import evaluate_split, targets
from bertrec.ranking.results import EVALUATE_FILE, EVALUATE_TOPK, current_baselines
from bertrec.render import Results, markdown_table


@dataclass(frozen=True)
class Evaluated:
    path: Path  # metrics/evaluate.json
    split: str
    results: Results
    targets: tuple[str, ...]
    k: int

    def summary(self) -> str:
        tables = [f"\n{self.split} · {t}\n\n{markdown_table(self.results, t, self.k)}" for t in self.targets]
        return "\n".join([*tables, f"\n-> {self.path}"])


def run(p: Params) -> Evaluated:
    """Evaluate the bundle's model and the baselines; write ``metrics/evaluate.json`` and the top-K lists."""
    data = load_dataset(p.paths.prepared)
    scorer, _ = load_model(p.paths.bundle, p.train.device)
    trained_on = read_training(p.paths.bundle)["split"]
    split = read_split(p.paths.splits, trained_on, data.n_users, data.n_items)
    topk = p.paths.outputs / EVALUATE_TOPK
    engine = engine_for(p.compute)
    announce("evaluate", engine, "ranking")
    results = evaluate_split([scorer], split, data.items, p.eval.ks, p.eval.batch_size, topk, engine)
    saved = current_baselines(p).get(trained_on, {})
    if set(saved) >= set(p.baselines.models):
        results |= {name: saved[name] for name in p.baselines.models}
    else:
        baselines = make_baselines(p, engine)
        results |= evaluate_split(baselines, split, data.items, p.eval.ks, p.eval.batch_size, topk, engine)
    path = p.paths.metrics / EVALUATE_FILE
    write_json(path, {"split": trained_on, "results": results})
    return Evaluated(path, trained_on, results, targets(split), min(p.eval.ks))
