"""The CLI: every step has --help; overrides reach the step; bad config and data exit non-zero."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bertrec.cli import app
from conftest import paths_under

runner = CliRunner()


@pytest.mark.parametrize("command", ["prepare", "split", "baselines"])
def test_each_step_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output and "--params" in result.output


def test_unknown_key_exits_2_with_the_key_named(tmp_path):
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "p.yaml"), "--set", "data.sorce=x"])
    assert result.exit_code == 2
    assert "unknown key 'data.sorce'" in result.output


def test_bad_data_exits_1_with_the_row_named(tmp_path):
    log, items = tmp_path / "log.csv", tmp_path / "items.csv"
    log.write_text("user_id,item_id,timestamp\n1,10,soon\n")
    items.write_text("item_id,title\n10,Heat\n")
    sets = [*paths_under(tmp_path), "data.source=table", f"data.path={log}", f"data.items_path={items}",
            "data.text_template='{title}'"]  # fmt: skip
    result = runner.invoke(app, ["prepare", "--params", str(tmp_path / "p.yaml"), *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 1
    assert f"{log}:2: column 'timestamp' is 'soon'" in result.output
    assert not (tmp_path / "prepared").exists()
