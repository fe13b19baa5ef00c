"""Bad input: one clear error naming file, row, column and value, and the previous outputs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from bertrec.errors import DataError
from bertrec.steps import prepare as prepare_step

GOOD_LOG = "user_id,item_id,rating,timestamp\n1,10,4,100\n1,20,5,200\n2,10,3,150\n2,30,2,160\n"
GOOD_ITEMS = "item_id,title,year,genres\n10,Heat,1995,Action|Crime\n20,Up,2009,Animation\n30,Alien,1979,Horror\n"


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def table_project(make_params, tmp_path):
    """A generic CSV source prepared once successfully; returns (write, run) helpers."""
    log, items = tmp_path / "log.csv", tmp_path / "items.csv"
    log.write_text(GOOD_LOG)
    items.write_text(GOOD_ITEMS)

    def run(*overrides: str):
        return prepare_step.run(
            make_params("data.source=table", f"data.path={log}", f"data.items_path={items}", *overrides)
        ).manifest

    run()
    before = snapshot(tmp_path / "prepared")
    return log, items, run, lambda: snapshot(tmp_path / "prepared") == before


def expect_error(run, *fragments: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(DataError) as caught:
        run(*overrides)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_column(table_project):
    # Given a log without its timestamp column
    log, _, run, unchanged = table_project
    log.write_text("user_id,item_id,rating\n1,10,4\n")
    # Then the error names the file's header line and the missing column, and outputs stay
    expect_error(run, f"{log}:1", "['timestamp']", "found ['user_id', 'item_id', 'rating']")
    assert unchanged()


def test_wrong_type(table_project):
    log, _, run, unchanged = table_project
    log.write_text(GOOD_LOG.replace("1,20,5,200", "1,20,five,200"))
    expect_error(run, f"{log}:3: column 'rating' is 'five'; expected a number")
    assert unchanged()


def test_unparseable_timestamp(table_project):
    log, _, run, unchanged = table_project
    log.write_text(GOOD_LOG.replace("2,10,3,150", "2,10,3,yesterday"))
    expect_error(run, f"{log}:4: column 'timestamp' is 'yesterday'", "ISO-8601")
    assert unchanged()


def test_empty_id(table_project):
    log, _, run, unchanged = table_project
    log.write_text(GOOD_LOG.replace("2,30,2,160", ",30,2,160"))
    expect_error(run, f"{log}:5: column 'user_id' is ''; expected a non-empty id")
    assert unchanged()


def test_unknown_item_fails_by_default(table_project):
    log, items, run, unchanged = table_project
    log.write_text(GOOD_LOG + "3,99,4,170\n")
    expect_error(run, f"{log}:6: column 'item_id' is '99'; expected an item id listed in {items}")
    assert unchanged()


def test_unknown_item_dropped_and_counted_by_policy(table_project, tmp_path):
    # Given one unknown item among 5 rows and a policy that drops them
    log, _, run, _ = table_project
    log.write_text(GOOD_LOG + "3,99,4,170\n")
    # When prepared with unknown_items=drop and room for the drop
    manifest = run("data.unknown_items=drop", "data.max_drop_fraction=0.5")
    # Then the row is gone and counted
    assert manifest["dropped"] == {"unknown_item": 1}
    assert manifest["rows"] == {"raw": 5, "after_window": 0, "kept": 4}


def test_drop_above_threshold_fails(table_project):
    log, _, run, unchanged = table_project
    log.write_text(GOOD_LOG + "3,99,4,170\n")
    expect_error(run, "drop 1 of 5 rows", "max_drop_fraction=0.05", overrides=("data.unknown_items=drop",))
    assert unchanged()


def test_empty_file(table_project):
    log, _, run, unchanged = table_project
    log.write_text("")
    expect_error(run, f"{log}: file is empty")
    assert unchanged()


def test_wrong_delimiter(table_project):
    log, _, run, unchanged = table_project
    log.write_text(GOOD_LOG.replace(",", ";"))
    expect_error(run, f"{log}:1", "is the delimiter a semicolon?", "data.delimiter")
    assert unchanged()


def test_wrong_encoding(table_project):
    # Given a latin-1 byte in a file read as utf-8, on line 3
    _, items, run, unchanged = table_project
    items.write_bytes(GOOD_ITEMS.replace("Up", "Amélie").encode("latin-1"))
    # Then the error names the line, the byte and the setting to change
    expect_error(run, f"{items}:3: byte b'\\xe9'", "not valid utf-8", "data.encoding")
    assert unchanged()


def test_duplicates_fail_policy_names_the_later_row(table_project):
    log, _, run, unchanged = table_project
    log.write_text(GOOD_LOG + "1,10,1,50\n")
    # the row at line 6 is earlier (t=50), so the later one at line 2 is the duplicate
    expect_error(
        run, f"{log}:2: column 'item_id' is '10'", "each (user, item) pair once", overrides=("data.duplicates=fail",)
    )
    assert unchanged()


def test_duplicates_keep_the_earliest(table_project, tmp_path):
    log, _, run, _ = table_project
    log.write_text(GOOD_LOG + "1,10,1,50\n")
    manifest = run("data.max_drop_fraction=0.5")
    kept = pd.read_parquet(tmp_path / "prepared" / "interactions.parquet")
    assert manifest["dropped"] == {"duplicate": 1}
    assert kept.query("user_id == '1' and item_id == '10'")["timestamp"].tolist() == [50]


def test_many_bad_values_give_a_count_and_examples(table_project):
    log, _, run, unchanged = table_project
    rows = "".join(f"1,10,x{i},100\n" for i in range(8))
    log.write_text("user_id,item_id,rating,timestamp\n" + rows)
    message = expect_error(run, f"{log}: column 'rating' has 8 bad values", f"{log}:2 'x0'", f"{log}:6 'x4'")
    assert "'x5'" not in message  # only the first five examples
    assert unchanged()


def test_min_rating_without_ratings_is_an_error(table_project):
    log, _, run, unchanged = table_project
    log.write_text("user_id,item_id,timestamp\n1,10,100\n")
    expect_error(run, "data.min_rating is set but the log has no rating column", overrides=("data.min_rating=4",))
    assert unchanged()


def test_template_field_missing_from_items(table_project):
    _, items, run, unchanged = table_project
    expect_error(run, str(items), "['plot']", overrides=("data.text_template='{title}: {plot}'",))
    assert unchanged()
