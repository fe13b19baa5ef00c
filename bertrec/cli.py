"""The `bertrec` command line: one command per pipeline step, configured by params.yaml."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from bertrec.config import DEFAULT_PARAMS, SPLITS, ConfigError, Params, load_params

app = typer.Typer(
    help="bertrec: language-model recommendations, from interaction logs to a served, monitored model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RUN_TAGS_ENV, RUN_NAME_ENV = "BERTREC_RUN_TAGS", "BERTREC_RUN_NAME"
ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="The params file (one source of configuration).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param, e.g. --set split.seed=7 (repeatable; values are YAML)."),
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_StderrHandler()],
        force=True,  # one handler, however often the app is invoked in one process
    )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be swapped after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _params(path: Path, overrides: list[str] | None) -> Params:
    try:
        return load_params(path, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@app.command()
def fetch(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Put the raw data under paths.raw, the snapshot DVC versions: fetch MovieLens-100K or copy a local log."""
    from bertrec.sources import fetch_raw
    from bertrec.tables import DataError

    p = _params(params, set_)
    try:
        folder, route, detail = fetch_raw(p)
    except DataError as exc:
        raise _fail(exc) from None
    typer.echo(f"{route}: {detail} -> {folder}")


@app.command()
def prepare(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Load the configured source, validate and clean it, write Parquet tables and a manifest."""
    from bertrec.data import prepare as run_prepare
    from bertrec.tables import DataError

    p = _params(params, set_)
    try:
        manifest = run_prepare(p)
    except DataError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"{manifest['dataset']} via {manifest['route']}: {manifest['rows']['kept']} interactions, "
        f"{manifest['n_users']} users, {manifest['n_items']} items -> {p.paths.prepared}"
    )


@app.command()
def split(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    name: Annotated[
        list[str] | None, typer.Option("--split", help=f"Split(s) to write: {', '.join(SPLITS)} (default: all).")
    ] = None,
) -> None:
    """Write the train/valid/test splits of PROTOCOL.md (loo, ratio, cold_items) as Parquet."""
    from bertrec.data import load_dataset
    from bertrec.split import make_split, write_split

    p = _params(params, set_)
    data = load_dataset(p.paths.prepared)
    for split_name in name or list(SPLITS):
        try:
            made = make_split(data, split_name, p.split)
        except ValueError as exc:
            raise _fail(exc) from None
        folder = write_split(made, p.paths.splits)
        typer.echo(f"{split_name}: {json.dumps(made.summary())} -> {folder}")


@app.command()
def baselines(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    name: Annotated[
        list[str] | None, typer.Option("--split", help=f"Split(s) to evaluate: {', '.join(SPLITS)} (default: eval.splits).")
    ] = None,
) -> None:
    """Evaluate every baseline on the chosen splits; write metrics/baselines.json and print a table."""
    from bertrec.baselines import make_baselines
    from bertrec.data import MANIFEST_FILE, load_dataset
    from bertrec.evaluate import evaluate_split, targets
    from bertrec.io import write_json
    from bertrec.report import markdown_table
    from bertrec.results import BASELINES_FILE, BASELINES_TOPK, baseline_config, data_hash, read_baselines
    from bertrec.split import read_split

    p = _params(params, set_)
    data = load_dataset(p.paths.prepared)
    manifest = json.loads((p.paths.prepared / MANIFEST_FILE).read_text())
    out_path = p.paths.metrics / BASELINES_FILE
    report = read_baselines(p)
    if report.get("data_sha256") != data_hash(p.paths.prepared) or report.get("config") != baseline_config(p):
        report = {"data_sha256": data_hash(p.paths.prepared), "config": baseline_config(p),
                  "dataset": manifest["dataset"], "splits": {}}  # fmt: skip
    scorers = make_baselines(p)
    for split_name in name or list(p.eval.splits):
        if split_name not in SPLITS:
            raise _fail(ValueError(f"unknown split {split_name!r}; valid splits: {', '.join(SPLITS)}"))
        loaded = read_split(p.paths.splits, split_name, data.n_users, data.n_items)
        results = evaluate_split(scorers, loaded, data.items, p.eval.ks, p.eval.batch_size, p.paths.outputs / BASELINES_TOPK)
        report["splits"][split_name] = results
        for target in targets(loaded):
            if target == "valid":
                continue
            typer.echo(f"\n{manifest['dataset']} · {split_name} · {target}\n")
            typer.echo(markdown_table(results, target, min(p.eval.ks)))
    write_json(out_path, report)
    typer.echo(f"\n-> {out_path}")


SplitOpt = Annotated[
    str | None, typer.Option("--split", help=f"Split to train on: {', '.join(SPLITS)} (default: train.split).")
]


@app.command()
def train(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, split_name: SplitOpt = None) -> None:
    """Fine-tune the two-tower model on a split's training data; write the bundle's model/ part.

    Checkpoints go to <bundle>/checkpoints after every epoch; an interrupted run resumes from the last.
    """
    from bertrec.bundle import save_model, training_record
    from bertrec.results import write_training_metrics
    from bertrec.data import load_dataset
    from bertrec.split import read_split
    from bertrec.train import train as run_train

    p = _params(params, [*(set_ or []), *([f"train.split={split_name}"] if split_name else [])])
    data = load_dataset(p.paths.prepared)
    loaded = read_split(p.paths.splits, p.train.split, data.n_users, data.n_items)
    work = p.paths.bundle / "checkpoints"
    result = run_train(p, loaded, data.items, work)
    record = training_record(result, p, loaded.name)
    target = save_model(result.scorer, data.items, p.paths.bundle, record, data.interactions)
    write_training_metrics(record, p.paths.metrics)
    shutil.rmtree(work, ignore_errors=True)
    typer.echo(
        f"trained on {loaded.name}: best epoch {result.best_epoch}, valid NDCG@10 "
        f"{result.best_valid.get('NDCG@10', float('nan')):.4f} -> {target}"
    )


@app.command()
def embed(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Encode every catalogue item from its text through the trained item tower (float16 + id map)."""
    from bertrec.bundle import load_model
    from bertrec.embed import embed_catalogue, write_embeddings

    p = _params(params, set_)
    scorer, items = load_model(p.paths.bundle, p.train.device)
    vectors, stats = embed_catalogue(scorer, items, p.model.encode_batch_size)
    target = write_embeddings(vectors, items, p.paths.bundle, stats)
    typer.echo(f"{stats.n_items} items x {stats.dim} in {stats.seconds:.1f}s ({stats.items_per_second:.0f} items/s) -> {target}")


@app.command()
def index(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Build the FAISS index of the item vectors; measure its recall@10 against exact search."""
    from bertrec.bundle import INDEX
    from bertrec.embed import read_embeddings
    from bertrec.index import write_index

    p = _params(params, set_)
    vectors, _ = read_embeddings(p.paths.bundle)
    info = write_index(vectors, p.paths.bundle / INDEX, p.index.factory, p.index.recall_sample)
    typer.echo(f"{info.factory} over {info.n_items} items, recall@10 vs exact {info.recall_at_10:.4f} -> {p.paths.bundle / INDEX}")


@app.command()
def evaluate(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Evaluate the trained model beside every baseline on the split it was trained on; one table."""
    from bertrec.baselines import make_baselines
    from bertrec.bundle import MODEL, load_model
    from bertrec.data import load_dataset
    from bertrec.evaluate import evaluate_split, targets
    from bertrec.io import write_json
    from bertrec.report import markdown_table
    from bertrec.results import EVALUATE_FILE, EVALUATE_TOPK, current_baselines
    from bertrec.split import read_split

    p = _params(params, set_)
    data = load_dataset(p.paths.prepared)
    scorer, _ = load_model(p.paths.bundle, p.train.device)
    trained_on = json.loads((p.paths.bundle / MODEL / "training.json").read_text())["split"]
    loaded = read_split(p.paths.splits, trained_on, data.n_users, data.n_items)
    topk_dir = p.paths.outputs / EVALUATE_TOPK
    results = evaluate_split([scorer], loaded, data.items, p.eval.ks, p.eval.batch_size, topk_dir)
    # The baselines' figures of `bertrec baselines` are reused when they are of the same data and models.
    by_model = current_baselines(p).get(trained_on, {})
    if set(by_model) >= set(p.baselines.models):
        results |= {name: by_model[name] for name in p.baselines.models}
    else:
        results |= evaluate_split(make_baselines(p), loaded, data.items, p.eval.ks, p.eval.batch_size, topk_dir)
    for target in targets(loaded):
        typer.echo(f"\n{trained_on} · {target}\n")
        typer.echo(markdown_table(results, target, min(p.eval.ks)))
    out = p.paths.metrics / EVALUATE_FILE
    write_json(out, {"split": trained_on, "results": results})
    typer.echo(f"\n-> {out}")


@app.command()
def recommend(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    user: Annotated[str | None, typer.Option("--user", help="A user id of the prepared data: their full history.")] = None,
    history: Annotated[str | None, typer.Option("--history", help="Item ids, oldest first, comma-separated.")] = None,
    k: Annotated[int, typer.Option("--k", help="How many items.")] = 10,
) -> None:
    """Recommend for a known user or an ad-hoc history, with the history item behind each pick."""
    from bertrec.data import load_dataset
    from bertrec.recommend import Recommender, UnknownItemError

    p = _params(params, set_)
    if (user is None) == (history is None):
        raise _fail(ValueError("give exactly one of --user or --history"))
    if user is not None:
        log = load_dataset(p.paths.prepared).interactions
        items = log.loc[log["user_id"] == user, "item_id"].astype(str).tolist()
        if not items:
            raise _fail(ValueError(f"user {user!r} is not in {p.paths.prepared}"))
    else:
        items = [i.strip() for i in history.split(",") if i.strip()]
    recommender = Recommender(p.paths.bundle, p.train.device)
    try:
        picks = recommender.recommend(items, k)
    except UnknownItemError as exc:
        raise _fail(exc) from None
    texts = dict(zip(recommender.item_ids, recommender.items["text"]))
    for rank, pick in enumerate(picks, 1):
        because = f"  (because: {texts[pick.because]})" if pick.because else ""
        typer.echo(f"{rank:>2}. {texts[pick.item_id]}  [{pick.score:.2f}]{because}")


@app.command()
def register(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Name of the MLflow run (default: $BERTREC_RUN_NAME, else MLflow's).")] = None,
) -> None:
    """Log this pipeline run to MLflow, register the bundle as a model version, run the promotion gate.

    Tags in $BERTREC_RUN_TAGS (a JSON object; the Prefect flow sets it) are added to the MLflow run.
    """
    from bertrec.register import register as run_register
    from bertrec.registry import RegistryError

    p = _params(params, set_)
    # A flow that runs this step through DVC passes its run's name and tags in the environment.
    tags = json.loads(os.environ.get(RUN_TAGS_ENV, "{}"))
    try:
        result = run_register(p, run_name or os.environ.get(RUN_NAME_ENV), tags)
    except (RegistryError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    name = p.mlflow.registered_model
    typer.echo(f"MLflow run {result.run_id} ({p.mlflow.tracking_uri}, experiment {p.mlflow.experiment})")
    if not result.registered:
        typer.echo(f"this bundle is already version {result.version} of {name}; nothing registered or promoted")
    else:
        verdict = "PROMOTED to champion" if result.decision.promote else "stays challenger"
        typer.echo(f"{name} version {result.version}: {verdict}\n  {result.decision.reason}")
    typer.echo(f"champion: {f'{name} version {result.champion}' if result.champion else 'none'}")


@app.command()
def drift(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift", help="Exit with status 3 when drift is found.")] = False,
) -> None:
    """Check the newest data against the champion's: interactions, new items' embeddings, predictions.

    Reference: the last stretch of the data the champion was trained on; current: every interaction
    since, up to data.window. Writes outputs/drift/ (an Evidently HTML report per check, verdict.json)
    and metrics/drift.json, and logs them to an MLflow run. Thresholds: the `drift` section of params.
    """
    from bertrec.monitor import check_drift, verdict_table

    p = _params(params, set_)
    try:
        outcome = check_drift(p, json.loads(os.environ.get(RUN_TAGS_ENV, "{}")))
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    typer.echo(verdict_table(outcome.payload))
    typer.echo(f"-> {outcome.verdict_path} (MLflow run {outcome.run_id})")
    if fail_on_drift and outcome.drift:
        raise typer.Exit(3)


@app.command()
def replay(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    start: Annotated[str, typer.Option("--start", help="data.window of the first step (ISO time, UTC unless zoned).")] = "1998-01-01T00:00:00",
    every: Annotated[float, typer.Option("--every", help="Days between steps.")] = 7.0,
    steps: Annotated[int | None, typer.Option("--steps", help="At most this many steps (default: until the log ends).")] = None,
    retrain_every: Annotated[int, typer.Option("--retrain-every", help="Retrain after this many steps without drift.")] = 4,
    workdir: Annotated[Path, typer.Option("--workdir", help="The replay's own git + DVC + MLflow workspace (must not exist).")] = Path("outputs/replay"),
) -> None:
    """Replay the log's timeline: each step adds the next window of data, checks drift, retrains on drift or schedule.

    Runs the DVC stages in a workspace of its own (a git commit per step, a SQLite MLflow registry
    inside it); prints a row per step and writes replay.json and replay.md there.
    """
    from datetime import datetime, timedelta

    from bertrec.replay import ReplayError, markdown
    from bertrec.replay import replay as run_replay

    _params(params, set_)  # validate before building anything
    try:
        first = datetime.fromisoformat(start)
    except ValueError:
        raise _fail(ValueError(f"--start {start!r} is not an ISO time such as 1998-01-01T00:00:00")) from None
    shown = []

    def show(row) -> None:
        shown.append(row)
        typer.echo(markdown(shown).splitlines()[-1] if len(shown) > 1 else markdown(shown).rstrip())

    try:
        rows = run_replay(Path.cwd(), workdir, params, set_ or [], first, timedelta(days=every), steps, retrain_every, show)
    except ReplayError as exc:
        raise _fail(exc) from None
    typer.echo(f"\n{len(rows)} steps -> {workdir / 'replay.md'}")


registry_app = typer.Typer(help="The model registry: versions, aliases, rollback.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("status")
def registry_status(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Show every version of the registered model with its aliases, metrics and gate decision."""
    from bertrec.registry import versions
    from bertrec.tracking import mlflow_name

    p = _params(params, set_)
    rows = versions(p)
    if not rows:
        typer.echo(f"{p.mlflow.registered_model}: no versions at {p.mlflow.tracking_uri}")
        return
    keys = [p.promotion.metric, *p.promotion.guardrails]
    typer.echo("| version | aliases | " + " | ".join(keys) + " | gate |")
    typer.echo("|---" * (len(keys) + 3) + "|")
    for row in rows:
        values = [row.tags.get(mlflow_name(k), "") for k in keys]
        gate = {"true": "promoted", "false": "not promoted"}.get(row.tags.get("gate.promote", ""), "")
        typer.echo(f"| {row.version} | {', '.join(row.aliases)} | " + " | ".join(values) + f" | {gate} |")


@registry_app.command("rollback")
def registry_rollback(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Move the `champion` alias back to the `previous` version."""
    from bertrec.registry import RegistryError, rollback

    p = _params(params, set_)
    try:
        before, after = rollback(p)
    except RegistryError as exc:
        raise _fail(exc) from None
    typer.echo(f"{p.mlflow.registered_model}: champion moved from version {before} back to version {after}")


@app.command()
def serve(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    alias: Annotated[str, typer.Option("--alias", help="The registry alias to serve.")] = "champion",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5001,
) -> None:
    """Serve models:/<registered_model>@<alias> with `mlflow models serve` (POST /invocations)."""

    p = _params(params, set_)
    uri = f"models:/{p.mlflow.registered_model}@{alias}"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", host, "-p", str(port)]  # fmt: skip
    typer.echo(f"serving {uri} from {p.mlflow.tracking_uri} on http://{host}:{port}/invocations")
    # mlflow starts `uvicorn` by name: put this environment's scripts first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.execvpe(command[0], command, os.environ | {"MLFLOW_TRACKING_URI": p.mlflow.tracking_uri, "PATH": path})


stack_app = typer.Typer(help="A local stack on 127.0.0.1: Prefect server, MLflow server, workers.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
PrefectPortOpt = Annotated[int, typer.Option("--prefect-port", help="Port of the Prefect server.")]
MlflowPortOpt = Annotated[int, typer.Option("--mlflow-port", help="Port of the MLflow server.")]


def _stack_config(params: Path, set_: list[str] | None, prefect_port: int, mlflow_port: int):
    from bertrec.stack import StackConfig

    p = _params(params, set_)
    backend = p.mlflow.tracking_uri if p.mlflow.tracking_uri.startswith("sqlite") else "sqlite:///mlflow.db"
    return StackConfig(Path.cwd(), p.paths.cache / "stack", prefect_port, mlflow_port, backend)


@stack_app.command("up")
def stack_up(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, prefect_port: PrefectPortOpt = 4200,
             mlflow_port: MlflowPortOpt = 5000) -> None:  # fmt: skip
    """Start the Prefect and MLflow servers and a worker per pool (cpu, gpu), create the pools, deploy prefect.yaml."""
    from bertrec.stack import up

    for line in up(_stack_config(params, set_, prefect_port, mlflow_port)):
        typer.echo(line)


@stack_app.command("down")
def stack_down(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, prefect_port: PrefectPortOpt = 4200,
               mlflow_port: MlflowPortOpt = 5000) -> None:  # fmt: skip
    """Stop what `stack up` started."""
    from bertrec.stack import down

    stopped = down(_stack_config(params, set_, prefect_port, mlflow_port))
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("worker")
def stack_worker(
    pool: Annotated[str, typer.Option("--pool", help="The work pool to poll.")],
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    dvc_remote: Annotated[str | None, typer.Option("--dvc-remote", help="URL of the DVC remote this worker shares (written to .dvc/config.local).")] = None,
    dvc_endpoint: Annotated[str | None, typer.Option("--dvc-endpoint", help="S3 endpoint URL of that remote (MinIO, ...).")] = None,
) -> None:
    """Configure this checkout (params.yaml overrides, DVC remote), then run `prefect worker start --pool POOL`."""
    import subprocess

    from bertrec.config import apply_overrides

    if set_:
        try:
            apply_overrides(params, set_)
        except ConfigError as exc:
            raise _fail(exc) from None
    if dvc_remote:
        subprocess.run(["dvc", "remote", "add", "--local", "--force", "--default", "stack", dvc_remote], check=True)
        if dvc_endpoint:
            subprocess.run(["dvc", "remote", "modify", "--local", "stack", "endpointurl", dvc_endpoint], check=True)
    prefect = str(Path(sys.executable).parent / "prefect")
    os.execv(prefect, [prefect, "worker", "start", "--pool", pool])


if __name__ == "__main__":
    app()
