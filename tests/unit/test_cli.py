"""The CLI: every step has --help; overrides reach the step; each error kind exits with its own code, in one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bertrec import errors
from bertrec.cli import app

from conftest import paths_under

runner = CliRunner()


@pytest.mark.parametrize(
    "command", ["fetch", "prepare", "split", "baselines", "train", "embed", "index", "evaluate", "register", "drift"]
)
def test_each_step_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output and "--params" in result.output


def test_unknown_key_exits_2_with_the_key_named(tmp_path):
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "p.yaml"), "--set", "data.sorce=x"])
    assert result.exit_code == 2
    assert "unknown key 'data.sorce'" in result.output


def test_bad_data_exits_with_the_data_code_and_the_row_named(tmp_path):
    log, items = tmp_path / "log.csv", tmp_path / "items.csv"
    log.write_text("user_id,item_id,timestamp\n1,10,soon\n")
    items.write_text("item_id,title\n10,Heat\n")
    sets = [
        *paths_under(tmp_path),
        "data.source=table",
        f"data.path={log}",
        f"data.items_path={items}",
        "data.text_template='{title}'",
    ]
    result = runner.invoke(
        app, ["prepare", "--params", str(tmp_path / "p.yaml"), *[x for s in sets for x in ("--set", s)]]
    )
    assert result.exit_code == errors.DataError.exit_code == 4
    assert f"{log}:2: column 'timestamp' is 'soon'" in result.output
    assert not (tmp_path / "prepared").exists()


def test_a_missing_input_names_the_step_that_writes_it(tmp_path):
    # Given a project where nothing was prepared, when a later step runs
    result = runner.invoke(
        app, ["split", "--params", str(tmp_path / "p.yaml"), *[x for s in paths_under(tmp_path) for x in ("--set", s)]]
    )
    # Then it exits with the missing-input code and one line that says what to run
    assert result.exit_code == errors.MissingInputError.exit_code
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'prepared' / 'interactions.parquet'} not found; run `bertrec prepare` first"
    ]


def test_an_unknown_split_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["split", "--split", "lol", "--params", str(tmp_path / "p.yaml")])
    assert result.exit_code == errors.ConfigError.exit_code == 2
    assert "unknown split 'lol'; valid splits: loo, ratio, cold_items" in result.output


def test_every_error_kind_has_its_own_exit_code():
    kinds = [errors.BertrecError, *_subclasses(errors.BertrecError)]
    codes = {kind: kind.exit_code for kind in kinds if "exit_code" in vars(kind)}
    # each kind that declares a code declares a distinct one, and none is the drift finding's or success
    assert len(set(codes.values())) == len(codes) >= 8
    assert errors.DRIFT_FOUND not in codes.values() and 0 not in codes.values()
    # kinds that only refine another (unknown item, unknown user) inherit its code
    assert errors.exit_code(errors.UnknownItemError("x")) == errors.ServingError.exit_code
    assert str(errors.UnknownItemError("item id '7' is not in the catalogue")) == "item id '7' is not in the catalogue"


def _subclasses(kind: type) -> list[type]:
    return [sub for direct in kind.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_recommend_refuses_a_k_below_one_before_loading_anything(tmp_path):
    result = runner.invoke(app, ["recommend", "--params", str(tmp_path / "p.yaml"), "--history", "1", "--k", "-1"])
    assert result.exit_code == 2
    assert "Invalid value for '--k': Input should be greater than or equal to 1" in result.output


def test_drift_with_mlflow_down_is_an_error_not_no_drift(tmp_path, monkeypatch):
    # Given a tracking URI where nothing listens (and no retries, so that the test does not wait on them)
    from servers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    sets = [*paths_under(tmp_path), f"mlflow.tracking_uri={uri}"]
    # When the drift check runs, it fails with the registry's code, names the server, and writes no verdict
    result = runner.invoke(
        app, ["drift", "--params", str(tmp_path / "p.yaml"), *[x for s in sets for x in ("--set", s)]]
    )
    assert result.exit_code == errors.RegistryError.exit_code
    assert f"error: cannot read the champion of bertrec at {uri}" in result.output
    assert not (tmp_path / "outputs" / "drift").exists() and not (tmp_path / "metrics" / "drift.json").exists()


@pytest.mark.parametrize("given", [[], ["--user", "1", "--history", "1,2"]])
def test_recommend_needs_exactly_one_of_user_or_history(tmp_path, given):
    result = runner.invoke(app, ["recommend", "--params", str(tmp_path / "p.yaml"), *given])
    assert result.exit_code == errors.ConfigError.exit_code
    assert result.output.strip() == "error: give exactly one of --user or --history"
