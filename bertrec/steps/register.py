"""The `register` stage: one MLflow run for the pipeline's results, the bundle registered and gated.

It reads what the earlier steps wrote (the bundle, ``metrics/evaluate.json``,
``metrics/baselines.json``, the top-K lists, the prepared data's manifest) and:

1. logs them as one MLflow run: resolved params, every metric per split/target/K for the model and
   the baselines, per-epoch curves, the metrics JSON and top-K lists, PNG plots, lineage tags;
2. evaluates the bundle as served on the current data for the promotion rule;
3. registers the bundle as a new version (unless this exact bundle is one already);
4. re-evaluates the champion, decides and moves the aliases (bertrec.mlops.gate.gate_and_switch).

A version of this bundle that a killed run registered but never gated is gated now, so the next
run finishes the registration the killed one began.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from bertrec.config import Params
from bertrec.data.dataset import MANIFEST_FILE, load_dataset
from bertrec.errors import MissingInputError
from bertrec.io import write_json
from bertrec.mlops.gate import (
    GATED_TAG,
    Checkpoint,
    Decision,
    baseline_scores,
    decision_record,
    gate_and_switch,
    gate_scores,
)
from bertrec.mlops.plots import ndcg_against_k, popularity_against_catalogue, training_curve
from bertrec.mlops.registry import (
    CHAMPION,
    alias_version,
    bundle_fingerprint,
    find_bundle,
    log_bundle,
    register_version,
    version_tags,
)
from bertrec.mlops.tracking import (
    connect,
    curve_entries,
    lineage_tags,
    log_batch,
    metric_entries,
    mlflow_name,
    topk_lists,
)
from bertrec.model.bundle import read_training
from bertrec.ranking.evaluate import reference_of, train_set
from bertrec.ranking.results import EVALUATE_FILE, REGISTER_FILE, current_baselines, data_hash
from bertrec.serve.recommender import Recommender

log = logging.getLogger(__name__)
EXAMPLE_HISTORY = 5


@dataclass(frozen=True)
class Registration:
    run_id: str
    version: str
    registered: bool  # False when the same bundle was already a version (nothing new registered)
    decision: Decision | None
    champion: str | None  # the champion version after the call
    model: str  # the registered model's name
    where: str  # the tracking URI and experiment

    def summary(self) -> str:
        lines = [f"MLflow run {self.run_id} ({self.where})"]
        if self.decision is None:
            lines.append(
                f"this bundle is already version {self.version} of {self.model}; nothing registered or promoted"
            )
        else:
            if not self.registered:
                lines.append(f"this bundle is already version {self.version}, never gated: gated now")
            verdict = "PROMOTED to champion" if self.decision.promote else "stays challenger"
            lines.append(f"{self.model} version {self.version}: {verdict}\n  {self.decision.reason}")
        lines.append(f"champion: {f'{self.model} version {self.champion}' if self.champion else 'none'}")
        return "\n".join(lines)


def run(
    p: Params, run_name: str | None = None, run_tags: dict[str, str] | None = None, checkpoint: Checkpoint | None = None
) -> Registration:
    """Track this pipeline run in MLflow, register the bundle and run the promotion gate.

    ``run_tags`` are added to the run (e.g. the Prefect flow run); ``checkpoint`` is called with
    ``"uploaded"`` once the version is registered and ``"decided"`` before the aliases move.
    Raises RegistryError or MissingInputError (missing step outputs) before anything is registered.
    """
    client = connect(p)
    data = load_dataset(p.paths.prepared)
    manifest = json.loads((p.paths.prepared / MANIFEST_FILE).read_text())
    sha = data_hash(p.paths.prepared)
    training = read_training(p.paths.bundle)
    evaluation = _read(p.paths.metrics / EVALUATE_FILE)
    baselines = current_baselines(p)
    challenger = Recommender(p.paths.bundle, p.train.device)
    scores = gate_scores(challenger, data, p)
    baseline = baseline_scores(baselines, p)
    name = p.mlflow.registered_model
    where = f"{p.mlflow.tracking_uri}, experiment {p.mlflow.experiment}"
    with mlflow.start_run(run_name=run_name) as run:
        run_id = run.info.run_id
        tags = lineage_tags(p, manifest["dataset"], sha) | dict(run_tags or {})
        _log_results(client, run_id, p, training, evaluation, baselines, tags)
        log_batch(client, run_id, metrics={mlflow_name(f"gate/{k}"): v for k, v in scores.items()})
        _log_plots(p, data, training, evaluation)
        fingerprint = bundle_fingerprint(p.paths.bundle)
        version = find_bundle(client, name, fingerprint)
        registered = version is None
        if version is not None and GATED_TAG in client.get_model_version(name, version).tags:
            champion = alias_version(client, name, CHAMPION)
            mlflow.set_tags({"registry.version": version, "registry.registered": "false"})
            log.info("this bundle is already version %s of %s; nothing registered", version, name)
            result = Registration(run_id, version, False, None, champion, name, where)
            _write_record(p, result, run.info.experiment_id, scores, None, baseline, champion)
            return result
        if version is None:
            history = data.interactions["item_id"].astype(str).tolist()[:EXAMPLE_HISTORY]
            model_uri = log_bundle(p, history)
            labels = version_tags(scores, p, sha, float(data.interactions["timestamp"].max()), run_id, fingerprint)
            version = register_version(client, p, model_uri, labels)
            if checkpoint:
                checkpoint("uploaded")
        else:  # registered by a run that stopped before its gate: finish its registration
            log.info("version %s of %s holds this bundle but was never gated; gating it now", version, name)
        gate = gate_and_switch(client, p, version, scores, baseline, data, checkpoint)
        decision = gate.decision
        mlflow.set_tags(
            {
                "registry.version": version,
                "registry.registered": str(registered).lower(),
                "gate.promote": str(decision.promote).lower(),
                "gate.reason": decision.reason,
            }
        )
        mlflow.log_text(decision_record(decision, version, gate.champion), "gate/decision.json")
    result = Registration(run_id, version, registered, decision, gate.champion, name, where)
    _write_record(p, result, run.info.experiment_id, scores, gate.champion_scores, baseline, gate.champion_before)
    return result


def _write_record(
    p: Params,
    result: Registration,
    experiment_id: str,
    scores: dict[str, float],
    champion_scores: dict[str, float] | None,
    baselines: dict[str, dict[str, float]],
    champion_before: str | None,
) -> None:
    """``metrics/register.json``: what this step decided, with the numbers it decided on (a DVC metric)."""
    keys = [p.promotion.metric, *p.promotion.guardrails]
    uri = p.mlflow.tracking_uri
    write_json(
        p.paths.metrics / REGISTER_FILE,
        {
            "run_id": result.run_id,
            "experiment_id": experiment_id,
            "tracking_uri": uri,
            "run_url": f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{result.run_id}"
            if uri.startswith("http")
            else None,
            "model": p.mlflow.registered_model,
            "version": result.version,
            "registered": result.registered,
            "promote": result.decision.promote if result.decision else False,
            "reason": result.decision.reason if result.decision else f"this bundle is already version {result.version}",
            "champion_before": champion_before,
            "champion": result.champion,
            "challenger_scores": {k: scores[k] for k in keys if k in scores},
            "champion_scores": {k: champion_scores[k] for k in keys if k in champion_scores}
            if champion_scores
            else None,
            "baselines": {name: s.get(p.promotion.metric) for name, s in baselines.items()},
            "primary": p.promotion.metric,
        },
    )


def _read(path: Path) -> dict:
    if not path.exists():
        raise MissingInputError(f"{path} not found; run `bertrec evaluate` first")
    return json.loads(path.read_text())


def _log_results(
    client, run_id: str, p: Params, training: dict, evaluation: dict, baselines: dict, tags: dict[str, str]
) -> None:
    split = evaluation["split"]
    metrics: dict[str, float] = {}
    for model, results in evaluation["results"].items():
        prefix = "" if model == "bertrec" else f"baselines/{model}/"
        metrics |= metric_entries(results, split, prefix)
    for split_name, models in baselines.items():
        for model, results in models.items():
            metrics |= metric_entries(results, split_name, f"baselines/{model}/")
    metrics |= {"train/best_epoch": float(training["best_epoch"])}
    log_batch(client, run_id, metrics=metrics, curves=curve_entries(training["epochs"]), params=p.flat(), tags=tags)
    for path in sorted(p.paths.metrics.glob("*.json")):
        mlflow.log_artifact(str(path), "metrics")
    mlflow.log_dict(training, "metrics/training.json")
    topk = p.paths.outputs / "topk"
    if topk.exists():
        mlflow.log_artifacts(str(topk), "topk")


def _log_plots(p: Params, data, training: dict, evaluation: dict) -> None:
    from bertrec.data.split import read_split

    split_name = evaluation["split"]
    split = read_split(p.paths.splits, split_name, data.n_users, data.n_items)
    target = "test_all" if split.new_items is not None else "test"
    results = {model: r[target] for model, r in evaluation["results"].items()}
    popularity = reference_of(train_set(split, data.items)).popularity
    with tempfile.TemporaryDirectory(prefix="bertrec-plots-") as tmp:
        folder = Path(tmp)
        ndcg_against_k(results, tuple(p.eval.ks), folder / "ndcg_at_k.png", f"{split_name} {target}")
        lists = {m: v[:, : min(p.eval.ks)] for m, v in topk_lists(p.paths.outputs / "topk", split_name, target).items()}
        if lists:
            popularity_against_catalogue(
                lists,
                popularity,
                folder / "popularity.png",
                f"{split_name} {target}: top-{min(p.eval.ks)} by item popularity",
            )
        if training["epochs"]:
            training_curve(training["epochs"], folder / "training_curve.png")
        mlflow.log_artifacts(str(folder), "plots")
