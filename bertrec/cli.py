"""The `bertrec` command line: parse, call a step (:mod:`bertrec.steps`), print, map errors to exit codes."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from bertrec.config import DEFAULT_PARAMS, SPLITS, Params, load_params
from bertrec.errors import DRIFT_FOUND, BertrecError, exit_code

app = typer.Typer(
    help="bertrec: language-model recommendations, from interaction logs to a served, monitored model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
registry_app = typer.Typer(help="The model registry: versions, aliases, rollback.", no_args_is_help=True)
stack_app = typer.Typer(
    help="A local stack on 127.0.0.1: Prefect server, MLflow server, workers.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
app.add_typer(stack_app, name="stack")

# A flow that runs a step through DVC passes its run's name and tags (a JSON object) in the environment.
RUN_TAGS_ENV, RUN_NAME_ENV = "BERTREC_RUN_TAGS", "BERTREC_RUN_NAME"
ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="The params file (one source of configuration).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param, e.g. --set split.seed=7 (repeatable; values are YAML)."),
]
SplitsOpt = Annotated[list[str] | None, typer.Option("--split", help=f"Split(s): {', '.join(SPLITS)} (repeatable).")]
PrefectPortOpt = Annotated[int, typer.Option("--prefect-port", help="Port of the Prefect server.")]
MlflowPortOpt = Annotated[int, typer.Option("--mlflow-port", help="Port of the MLflow server.")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_StderrHandler()],
        force=True,  # one handler, however often the app is invoked in one process
    )
    # faiss announces at INFO which of its builds it tried to load, on every import
    logging.getLogger("faiss").setLevel(logging.DEBUG if verbose else logging.WARNING)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be swapped after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def command(registered: Callable) -> Callable:
    """``registered`` (``app.command()``, ...) for a function whose BertrecErrors become one line and an exit code."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except BertrecError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(exit_code(exc)) from None

        return registered(run)

    return decorate


def read_params(path: Path, sets: list[str] | None, *more: str) -> Params:
    """The params file with the command's --set overrides (and ``more``) applied; raises ConfigError."""
    return load_params(path, [*(sets or []), *more])


def plain_stage(name: str, help_text: str) -> None:
    """A command for a stage that takes nothing but the params: it prints bertrec.steps.<name>.run(params)."""

    def stage(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None) -> None:
        step = importlib.import_module(f"bertrec.steps.{name}")
        typer.echo(step.run(read_params(params, set_)).summary())

    stage.__doc__ = help_text
    command(app.command(name))(stage)


# The stage commands in the order the stages run (so `bertrec --help` lists them so).
plain_stage("fetch", "Put the raw data under paths.raw, the snapshot DVC versions: fetch MovieLens-100K or copy a log.")
plain_stage("prepare", "Load the configured source, validate and clean it, write Parquet tables and a manifest.")


@command(app.command())
def split(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, name: SplitsOpt = None) -> None:
    """Write the train/valid/test splits of PROTOCOL.md (loo, ratio, cold_items; default: all) as Parquet."""
    from bertrec.steps import split as step

    typer.echo(step.run(read_params(params, set_), name).summary())


@command(app.command())
def baselines(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, name: SplitsOpt = None) -> None:
    """Evaluate every baseline on the splits (default: eval.splits); write metrics/baselines.json, print tables.

    sasrec trains (a few minutes on CPU for ml-100k), on baselines.sasrec.splits only.
    """
    from bertrec.steps import baselines as step

    typer.echo(step.run(read_params(params, set_), name).summary())


@command(app.command())
def train(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    split_name: Annotated[str | None, typer.Option("--split", help="Split to train on (default: train.split).")] = None,
) -> None:
    """Fine-tune the two-tower model on a split's training data; write the bundle's model/ part.

    Training starts where train.init says: scratch, the registry's champion (warm start; scratch when
    there is none yet) or a bundle folder; metrics/train.json records which, the epochs and the seconds.
    Checkpoints go to <bundle>/checkpoints after every epoch; an interrupted run resumes from the last.
    Then the re-ranking penalty (rerank.penalty) and its beta are chosen on the validation users and saved with it.
    """
    from bertrec.steps import train as step

    typer.echo(step.run(read_params(params, set_, *([f"train.split={split_name}"] if split_name else []))).summary())


plain_stage("embed", "Encode every catalogue item from its text through the trained item tower (float16 + id map).")
plain_stage("index", "Build the FAISS index of the item vectors; measure its recall@10 against exact search.")
plain_stage("evaluate", "Evaluate the trained model beside every baseline on the split it was trained on; one table.")


@command(app.command())
def register(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    run_name: Annotated[
        str | None, typer.Option("--run-name", help="MLflow run name (default: $BERTREC_RUN_NAME).")
    ] = None,
) -> None:
    """Log this pipeline run to MLflow, register the bundle as a model version, run the promotion gate.

    Tags in $BERTREC_RUN_TAGS (a JSON object; the Prefect flow sets it) are added to the MLflow run.
    """
    from bertrec.steps import register as step

    tags = json.loads(os.environ.get(RUN_TAGS_ENV, "{}"))
    typer.echo(step.run(read_params(params, set_), run_name or os.environ.get(RUN_NAME_ENV), tags).summary())


@command(app.command())
def drift(
    params: ParamsOpt = DEFAULT_PARAMS,
    set_: SetOpt = None,
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift", help=f"Exit with {DRIFT_FOUND} on drift.")] = False,
) -> None:
    """Check the newest data against the champion's: interactions, new items' embeddings, predictions.

    Reference: the last stretch of the data the champion was trained on; current: every interaction
    since, up to data.window. Writes outputs/drift/ (an Evidently HTML report per check, verdict.json)
    and metrics/drift.json, and logs them to an MLflow run. Thresholds: the `drift` section of params.
    """
    from bertrec.steps import drift as step

    outcome = step.run(read_params(params, set_), json.loads(os.environ.get(RUN_TAGS_ENV, "{}")))
    typer.echo(outcome.summary())
    if fail_on_drift and outcome.drift:
        raise typer.Exit(DRIFT_FOUND)


from bertrec import cli_ops  # noqa: E402, F401  (adds the operations: recommend, registry, serve, stack, replay)
