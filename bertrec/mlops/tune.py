"""Hyper-parameter search as a product feature: an Optuna study over the space params.yaml declares.

``bertrec tune`` runs trials of one study (``tune.study``): TPE samples the ``tune.space``
dimensions, each trial trains on ``train.split`` with early stopping on validation, reports its
validation NDCG@10 after every epoch (a median pruner stops trials that trail the others at the same
epoch, after ``tune.warmup_epochs``), then chooses its re-ranking penalty on validation as the train
stage does; the trial's value is its validation NDCG@10 with that re-ranking. The test target is
never looked at.

Tracking: one MLflow parent run per study (``tune-<study>``), one child run per trial (its params,
its curve, its value or ``pruned``). The best params go to the parent run and come out as a diff of
params.yaml. Several workers may run trials of one study at once (the `tune/gpu` deployment does):
the study lives in a database, by default beside MLflow's (``tune.storage: auto``, see
:func:`storage_url`), and the parent run's id is kept in the study.
"""

from __future__ import annotations

import difflib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertrec.config import Params, SpaceRange, load_params, render_overrides
from bertrec.errors import ConfigError
from bertrec.mlops.tracking import connect, curve_entries, log_batch, mlflow_name

log = logging.getLogger(__name__)

OPTUNA_SCHEMA = "optuna"  # PostgreSQL: the study's tables in this schema of MLflow's database
PARENT_RUN_ATTR = "mlflow_parent_run_id"
VALUE = "valid/NDCG_at_10_reranked"


def storage_url(p: Params) -> str:
    """Where the study lives: ``tune.storage``, or with ``auto`` a database beside MLflow's.

    - ``postgresql://...`` tracking (or a server's backend given as ``tune.storage``): the same
      database, schema ``optuna``;
    - ``sqlite:///mlflow.db``: ``sqlite:///mlflow-optuna.db`` beside it. One SQLite file cannot hold
      both: MLflow and Optuna each keep their schema version in a table named ``alembic_version``;
    - an ``http(s)://`` tracking server: its database is not reachable through it, so
      ``tune.storage`` must name it (the server's ``--backend-store-uri``).
    """
    if p.tune.storage != "auto":
        return p.tune.storage
    uri = p.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return f"sqlite:///{path.with_name(path.stem + '-optuna' + (path.suffix or '.db'))}"
    if uri.startswith("postgresql"):
        return uri
    raise ConfigError(
        f"tune.storage: auto cannot derive a database from mlflow.tracking_uri {uri!r}; set tune.storage "
        "to a database URL (e.g. the MLflow server's --backend-store-uri: postgresql://user@host/mlflow)"
    )


def open_storage(url: str):
    """An Optuna RDB storage at ``url`` (PostgreSQL: in schema ``optuna``, created when missing)."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
        engine.dispose()
        kwargs["engine_kwargs"] = {"connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"}}
    # A worker that dies leaves its trial RUNNING; the heartbeat lets the others mark it failed.
    return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180, **kwargs)


def suggest(trial, space: dict[str, SpaceRange | list[Any]]) -> dict[str, Any]:
    """One value per dimension of ``space`` from ``trial``."""
    values: dict[str, Any] = {}
    for key, dimension in space.items():
        if isinstance(dimension, SpaceRange):
            if isinstance(dimension.low, int) and isinstance(dimension.high, int) and not dimension.log:
                values[key] = trial.suggest_int(key, int(dimension.low), int(dimension.high))
            else:
                values[key] = trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log)
        else:
            values[key] = trial.suggest_categorical(key, list(dimension))
    return values


def as_sets(values: dict[str, Any]) -> list[str]:
    """``{"model.dim": 64}`` -> ``["model.dim=64"]`` (values as YAML, as --set takes them)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def check_space(params_path: Path, sets: list[str], p: Params) -> None:
    """Every dimension names a param and every choice validates: fail before the first trial, not during it."""
    for key, dimension in p.tune.dimensions().items():
        choices = [dimension.low, dimension.high] if isinstance(dimension, SpaceRange) else list(dimension)
        for choice in choices:
            try:
                load_params(params_path, [*sets, *as_sets({key: choice})])
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: the value {choice!r} is not valid: {exc}") from None


@dataclass
class Study:
    """What ``bertrec tune`` reports: the study, its parent run and its best trial so far."""

    name: str
    storage: str
    parent_run_id: str
    best_value: float | None
    best_params: dict[str, Any]
    states: dict[str, int] = field(default_factory=dict)  # trials per state (COMPLETE, PRUNED, FAIL, ...)
    diff: str = ""

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.states.items()))
        best = (
            f"best valid NDCG@10 (re-ranked) {self.best_value:.4f}" if self.best_value is not None else "no trial done"
        )
        lines = [f"study {self.name} ({counts}): {best}; MLflow parent run {self.parent_run_id}"]
        return "\n".join([*lines, self.diff.rstrip()] if self.diff else lines)


def create_study(p: Params, client=None):
    """The study of ``tune.study`` (created or joined) and its MLflow parent run's id (created once)."""
    import optuna

    client = client or connect(p)
    sampler = optuna.samplers.TPESampler(seed=p.tune.seed, n_startup_trials=p.tune.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=p.tune.startup_trials, n_warmup_steps=p.tune.warmup_epochs)
    study = optuna.create_study(
        study_name=p.tune.study,
        storage=open_storage(storage_url(p)),
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent is None:
        experiment = client.get_experiment_by_name(p.mlflow.experiment)
        run = client.create_run(
            experiment.experiment_id,
            run_name=f"tune-{p.tune.study}",
            tags={"bertrec.kind": "tune", "optuna.study": p.tune.study},
        )
        log_batch(client, run.info.run_id, params={f"space.{k}": _plain(v) for k, v in p.tune.dimensions().items()})
        study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        parent = run.info.run_id
    return study, parent


def _plain(dimension: SpaceRange | list[Any]) -> Any:
    return dimension.model_dump() if isinstance(dimension, SpaceRange) else dimension


def tune(params_path: Path, sets: list[str], trials: int | None = None, worker: int = 0) -> Study:
    """Run ``trials`` (default ``tune.trials``) trials of the study; returns it with its best params and diff.

    ``worker`` varies the sampler's seed, so workers of one study do not propose the same points.
    """
    import optuna

    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split

    p = load_params(params_path, sets)
    if not p.tune.dimensions():
        raise ConfigError("tune.space is empty: declare the params to search in params.yaml (see its tune: section)")
    check_space(params_path, sets, p)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = connect(p)
    study, parent = create_study(p, client)
    study.sampler = optuna.samplers.TPESampler(seed=p.tune.seed + worker, n_startup_trials=p.tune.startup_trials)
    data = load_dataset(p.paths.prepared)
    split = read_split(p.paths.splits, p.train.split, data.n_users, data.n_items)

    def objective(trial) -> float:
        values = suggest(trial, p.tune.dimensions())
        trial_params = load_params(params_path, [*sets, *as_sets(values)])
        return run_trial(trial, trial_params, values, split, data.items, client, parent, worker)

    timeout = p.tune.timeout_minutes * 60 if p.tune.timeout_minutes else None
    study.optimize(objective, n_trials=trials or p.tune.trials, timeout=timeout, catch=(RuntimeError,))
    return report(study, p, params_path, sets, client, parent)


def run_trial(trial, p: Params, values: dict[str, Any], split, items, client, parent: str, worker: int = 0) -> float:
    """Train one trial's model as a child run of ``parent``; its value is validation NDCG@10 after re-ranking."""
    import optuna

    from bertrec.model.ensemble import train_model
    from bertrec.model.train import PRIMARY
    from bertrec.ranking.evaluate import build_cases, reference_of, train_set
    from bertrec.ranking.rerank import NDCG, choose_beta

    experiment = client.get_experiment_by_name(p.mlflow.experiment).experiment_id
    run = client.create_run(
        experiment,
        run_name=f"{p.tune.study}-trial-{trial.number}",
        tags={
            "mlflow.parentRunId": parent,
            "optuna.trial": str(trial.number),
            "optuna.worker": str(worker),
            "bertrec.kind": "tune-trial",
        },
    )
    run_id = run.info.run_id
    log_batch(client, run_id, params=values)
    trial.set_user_attr("mlflow_run_id", run_id)

    best = [0.0]

    def on_epoch_end(entry) -> None:
        log_batch(client, run_id, curves=curve_entries([entry.__dict__]))
        # The best so far is reported: early stopping keeps it, and a dip is no reason to prune.
        best[0] = max(best[0], entry.valid[PRIMARY])
        trial.report(best[0], entry.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {entry.epoch}: valid NDCG@10 {entry.valid[PRIMARY]:.4f}")

    try:
        with tempfile.TemporaryDirectory(prefix="bertrec-trial-") as work:
            result = train_model(p, split, items, Path(work), on_epoch_end=on_epoch_end)
        cases = build_cases(split, "valid").sample(p.train.valid_users, p.train.seed)
        choice = choose_beta(result.scorer, cases, reference_of(train_set(split, items)), p.rerank, p.eval.batch_size)
    except optuna.TrialPruned:
        client.set_tag(run_id, "optuna.state", "pruned")
        client.set_terminated(run_id, "KILLED")
        raise
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    value = choice.valid[NDCG]
    metrics = {
        VALUE: value,
        mlflow_name("valid/Coverage@10_reranked"): choice.valid["Coverage@10"],
        mlflow_name(f"valid/{PRIMARY}"): result.best_valid[PRIMARY],
        "rerank/beta": choice.beta,
        "best_epoch": float(result.best_epoch),
    }
    log_batch(client, run_id, metrics=metrics, tags={"optuna.state": "complete"})
    client.set_terminated(run_id, "FINISHED")
    trial.set_user_attr("rerank_beta", choice.beta)
    trial.set_user_attr("valid_coverage_at_10", choice.valid["Coverage@10"])
    return value


def report(study, p: Params, params_path: Path, sets: list[str], client, parent: str) -> Study:
    """The study's state, its best params on the parent run, and the params.yaml diff they make."""
    from optuna.trial import TrialState

    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return Study(p.tune.study, storage_url(p), parent, None, {}, states)
    best = study.best_trial
    diff = params_diff(params_path, sets, best.params)
    log_batch(
        client,
        parent,
        metrics={
            "best/" + VALUE: best.value,
            "trials/complete": float(states.get("COMPLETE", 0)),
            "trials/pruned": float(states.get("PRUNED", 0)),
            "trials/failed": float(states.get("FAIL", 0)),
        },
        # tags, not params: a later call of the same study may find a better trial
        tags={
            **{f"best.{k}": json.dumps(v) for k, v in best.params.items()},
            "best.trial": str(best.number),
            "best.mlflow_run_id": best.user_attrs.get("mlflow_run_id", ""),
        },
    )
    client.log_text(parent, diff or "(params.yaml already holds the best values)\n", "best_params.diff")
    return Study(p.tune.study, storage_url(p), parent, best.value, dict(best.params), states, diff)


def params_diff(params_path: Path, sets: list[str], best: dict[str, Any]) -> str:
    """A unified diff of params.yaml to the file with the best values written in (comments kept)."""
    before = Path(params_path).read_text(encoding="utf-8") if Path(params_path).exists() else ""
    after = render_overrides(params_path, [*sets, *as_sets(best)])
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), str(params_path), f"{params_path} (tuned)"
    )
    return "".join(lines)
