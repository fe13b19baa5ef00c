"""The `bertrec` command line: one command per pipeline step, configured by params.yaml."""

from __future__ import annotations

import json
import logging
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

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="The params file (one source of configuration).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a param, e.g. --set split.seed=7 (repeatable; values are YAML)."),
]
BASELINES_FILE = "baselines.json"


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


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
    from bertrec.split import read_split

    p = _params(params, set_)
    data = load_dataset(p.paths.prepared)
    manifest = json.loads((p.paths.prepared / MANIFEST_FILE).read_text())
    data_hash = manifest["outputs"]["interactions.parquet"]
    out_path = p.paths.metrics / BASELINES_FILE
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    if report.get("data_sha256") != data_hash:
        report = {"data_sha256": data_hash, "dataset": manifest["dataset"], "splits": {}}
    scorers = make_baselines(p)
    for split_name in name or list(p.eval.splits):
        if split_name not in SPLITS:
            raise _fail(ValueError(f"unknown split {split_name!r}; valid splits: {', '.join(SPLITS)}"))
        loaded = read_split(p.paths.splits, split_name, data.n_users, data.n_items)
        results = evaluate_split(
            scorers, loaded, data.items, p.eval.ks, p.eval.batch_size, p.paths.outputs / "topk"
        )
        report["splits"][split_name] = results
        for target in targets(loaded):
            if target == "valid":
                continue
            typer.echo(f"\n{manifest['dataset']} · {split_name} · {target}\n")
            typer.echo(markdown_table(results, target, min(p.eval.ks)))
    write_json(out_path, report)
    typer.echo(f"\n-> {out_path}")


if __name__ == "__main__":
    app()
