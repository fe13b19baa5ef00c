"""The operations of the `bertrec` command line: recommend, registry, catalogue, serve, stack, replay, synth.

Imported by :mod:`bertrec.cli`, whose app, options and error mapping these commands share.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from bertrec.cli import (
    DEFAULT_PARAMS,
    MlflowPortOpt,
    ParamsOpt,
    PrefectPortOpt,
    SetOpt,
    app,
    command,
    read_params,
    registry_app,
    stack_app,
)
from bertrec.errors import ConfigError, UnknownUserError
from bertrec.mlops.stack import STOP_TIMEOUT_S

catalogue_app = typer.Typer(help="The champion's catalogue: add items without retraining.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")


@command(app.command())
def recommend(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    user: Annotated[
        str | None, typer.Option("--user", help="A user id of the prepared data: their full history.")
    ] = None,
    history: Annotated[str | None, typer.Option("--history", help="Item ids, oldest first, comma-separated.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="How many items (at least 1).")] = 10,
) -> None:
    """Recommend for a known user or an ad-hoc history, with the history item behind each pick."""
    from bertrec.data.dataset import load_dataset
    from bertrec.serve.recommender import Recommender

    p = read_params(params, set_)
    if (user is None) == (history is None):
        raise ConfigError("give exactly one of --user or --history")
    if user is not None:
        log = load_dataset(p.paths.prepared).interactions
        items = log.loc[log["user_id"] == user, "item_id"].astype(str).tolist()
        if not items:
            raise UnknownUserError(f"user {user!r} is not in {p.paths.prepared}")
    else:
        items = [i.strip() for i in history.split(",") if i.strip()]
    recommender = Recommender(p.paths.bundle, p.train.device)
    answer = recommender.answer_batch([(items, None)], k, unknown_items="fail")[0]
    texts = dict(zip(recommender.item_ids, recommender.items["text"], strict=True))
    if answer.basis == "popular":
        typer.echo("no history: the items most interacted with in training")
    for rank, pick in enumerate(answer.picks, 1):
        because = f"  (because: {texts[pick.because]})" if pick.because else ""
        typer.echo(f"{rank:>2}. {texts[pick.item_id]}  [{pick.score:.2f}]{because}")


@command(app.command())
def replay(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    start: Annotated[
        str, typer.Option("--start", help="data.window of the first step (ISO time, UTC unless zoned).")
    ] = "1998-01-01T00:00:00",
    every: Annotated[float, typer.Option("--every", help="Days between steps.")] = 7.0,
    steps: Annotated[
        int | None, typer.Option("--steps", help="At most this many steps (default: until the log ends).")
    ] = None,
    retrain_every: Annotated[
        int | None,
        typer.Option("--retrain-every", help="Also retrain after this many steps without retraining (default: never)."),
    ] = None,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="The replay's own git + DVC + MLflow workspace (must not exist).")
    ] = Path("outputs/replay"),
) -> None:
    """Replay the log's timeline: each step adds the next window of data, checks drift, retrains by retrain.policy.

    Runs the DVC stages in a workspace of its own (a git commit per step, a SQLite MLflow registry
    inside it); prints a row per step and writes replay.json and replay.md there.
    """
    from bertrec.mlops.replay import CHECK_NAMES
    from bertrec.mlops.replay import replay as run_replay
    from bertrec.render import replay_table

    read_params(params, set_)  # validate before building anything
    try:
        first = datetime.fromisoformat(start)
    except ValueError:
        raise ConfigError(f"--start {start!r} is not an ISO time such as 1998-01-01T00:00:00") from None
    shown = []

    def show(row) -> None:
        shown.append(row)
        table = replay_table(shown, CHECK_NAMES)
        typer.echo(table.splitlines()[-1] if len(shown) > 1 else table.rstrip())

    rows = run_replay(Path.cwd(), workdir, params, set_ or [], first, timedelta(days=every), steps, retrain_every, show)
    typer.echo(f"\n{len(rows)} steps -> {workdir / 'replay.md'}")


@command(registry_app.command("status"))
def registry_status(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Show every version of the registered model with its aliases, metrics and gate decision."""
    from bertrec.mlops.registry import versions
    from bertrec.mlops.tracking import mlflow_name
    from bertrec.render import versions_table

    p = read_params(params, set_)
    rows = versions(p)
    if not rows:
        typer.echo(f"{p.mlflow.registered_model}: no versions at {p.mlflow.tracking_uri}")
        return
    typer.echo(versions_table(rows, [p.promotion.metric, *p.promotion.guardrails], mlflow_name))


@command(registry_app.command("rollback"))
def registry_rollback(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
    """Move the `champion` alias back to the `previous` version."""
    from bertrec.mlops.registry import rollback

    p = read_params(params, set_)
    before, after = rollback(p)
    typer.echo(f"{p.mlflow.registered_model}: champion moved from version {before} back to version {after}")


@command(app.command())
def serve(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    alias: Annotated[str, typer.Option("--alias", help="The registry alias to serve.")] = "champion",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5001,
    poll: Annotated[
        float | None,
        typer.Option(
            "--poll",
            min=0,
            help="Seconds between looks at the alias; a new version replaces the served one without a pause "
            "(default: serving.poll_seconds). 0: `mlflow models serve` of the version named at start.",
        ),
    ] = None,
) -> None:
    """Serve models:/<registered_model>@<alias> (MLflow's scoring protocol: POST /invocations), following the alias."""
    p = read_params(params, set_)
    poll = p.serving.poll_seconds if poll is None else poll
    following = f", following the alias every {poll:g}s" if poll > 0 else ""
    typer.echo(
        f"serving models:/{p.mlflow.registered_model}@{alias} from {p.mlflow.tracking_uri} "
        f"on http://{host}:{port}/invocations{following}"
    )
    if poll > 0:
        from bertrec.serve.live import serve as serve_live

        serve_live(p, alias, host, port, poll)
    else:
        from bertrec.mlops.stack import serve as run_server

        run_server(p, alias, host, port)


@command(catalogue_app.command("add"))
def catalogue_add(
    items_file: Annotated[
        Path,
        typer.Argument(
            help="CSV/TSV or Parquet: data.columns.item_id, and text (or the fields of data.text_template); "
            "optional title."
        ),
    ],
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
) -> None:
    """Add new items to the champion without retraining: a new version, promoted when the guardrail holds.

    The items are placed from their text by the champion's item tower (weights unchanged); the new
    version is gated by catalogue.guardrail (the cold-item Hit@10, each version ranking its whole
    catalogue) and promoted under the registry lock. Bad input changes nothing in the registry.
    """
    from bertrec.mlops.catalogue import update_catalogue

    typer.echo(update_catalogue(read_params(params, set_), items_file).summary())


@command(stack_app.command("up"))
def stack_up(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    prefect_port: PrefectPortOpt = 4200,
    mlflow_port: MlflowPortOpt = 5000,
) -> None:
    """Start the Prefect and MLflow servers and a worker per pool (cpu, gpu), create the pools, deploy prefect.yaml."""
    from bertrec.mlops.stack import StackConfig, up

    for line in up(StackConfig.of(read_params(params, set_), Path.cwd(), prefect_port, mlflow_port)):
        typer.echo(line)


@command(stack_app.command("down"))
def stack_down(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    prefect_port: PrefectPortOpt = 4200,
    mlflow_port: MlflowPortOpt = 5000,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds the processes get after SIGTERM before SIGKILL.")
    ] = STOP_TIMEOUT_S,
) -> None:
    """Stop what `stack up` started: the workers, then the servers, each group SIGKILLed after the grace period."""
    from bertrec.mlops.stack import StackConfig, down

    stopped = down(StackConfig.of(read_params(params, set_), Path.cwd(), prefect_port, mlflow_port), grace)
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@command(stack_app.command("worker"))
def stack_worker(
    pool: Annotated[str, typer.Option("--pool", help="The work pool to poll.")],
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    dvc_remote: Annotated[
        str | None,
        typer.Option("--dvc-remote", help="URL of the DVC remote this worker shares (written to .dvc/config.local)."),
    ] = None,
    dvc_endpoint: Annotated[
        str | None, typer.Option("--dvc-endpoint", help="S3 endpoint URL of that remote (MinIO, ...).")
    ] = None,
) -> None:
    """Configure this checkout (params.yaml overrides, DVC remote), then run `prefect worker start --pool POOL`."""
    from bertrec.mlops.stack import start_worker

    start_worker(pool, params, set_ or [], dvc_remote, dvc_endpoint)


@command(app.command())
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (replaced atomically).")],
    rows: Annotated[int, typer.Option("--rows", min=1, help="Interactions to draw.")] = 1_000_000,
    items: Annotated[int, typer.Option("--items", min=10, help="Catalogue size.")] = 50_000,
    users: Annotated[int, typer.Option("--users", min=1, help="Users (each gets at least 5 rows).")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every draw.")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", help="table (interactions/items Parquet) | movielens (ratings.csv, movies.csv).")
    ] = "table",
    topics: Annotated[int, typer.Option("--topics", min=1, help="Latent topics behind items, text and users.")] = 50,
) -> None:
    """Write a synthetic log with Zipf popularity, heavy-tailed users, topic sessions and topic-bearing text.

    The generative model is documented in bertrec/data/synth.py. Use it with data.source=table
    (data.path=OUT/interactions.parquet, data.items_path=OUT/items.parquet) or data.source=movielens
    (data.path=OUT).
    """
    import time

    from bertrec.data.synth import SynthSpec, generate, write

    began = time.perf_counter()
    spec = SynthSpec(rows=rows, items=items, users=users, seed=seed, topics=topics)
    files = write(generate(spec), out, fmt)
    typer.echo(
        f"{rows} interactions, {items} items, {users} users ({fmt}) in {time.perf_counter() - began:.1f}s: "
        + ", ".join(str(f) for f in files.values())
    )


@command(app.command())
def tune(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Trials this call runs (default: tune.trials).")
    ] = None,
    worker: Annotated[
        int, typer.Option("--worker", min=0, help="This worker's number: varies the sampler's seed.")
    ] = 0,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the best params into the params file (comments kept).")
    ] = False,
) -> None:
    """Search tune.space with Optuna (TPE, median pruning on validation NDCG@10); never reads test.

    Trials are MLflow child runs under one parent run per study; the study's storage is a database
    beside MLflow's (tune.storage), so workers on several machines can join it. Prints the best
    params as a diff of the params file.
    """
    from bertrec.config import apply_overrides
    from bertrec.mlops.tune import as_sets
    from bertrec.mlops.tune import tune as run_tune

    study = run_tune(params, set_ or [], trials, worker)
    typer.echo(study.summary())
    if apply and study.best_params:
        apply_overrides(params, as_sets(study.best_params))
        typer.echo(f"-> best params written into {params}")
