"""The pure parts of `bertrec drift` (bertrec.mlops.drift.monitor) and `bertrec replay` (bertrec.mlops.replay)."""

from __future__ import annotations

import pandas as pd
import pytest

from bertrec.config import apply_overrides, load_params
from bertrec.data.text import normalise_lists
from bertrec.errors import ConfigError
from bertrec.mlops.drift.monitor import champion_end, summary_metrics, windows_of
from bertrec.mlops.replay import CHECK_NAMES, Step
from bertrec.render import replay_table, verdict_table


def log(stamps: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_idx": range(len(stamps)), "item_idx": range(len(stamps)), "timestamp": stamps})


def test_windows_split_at_the_champion_end_with_a_reference_as_long_as_the_current_window():
    windows = windows_of(log([0, 10, 40, 55, 60, 70, 90, 100]), reference_end=60)
    assert windows.current["timestamp"].tolist() == [70, 90, 100]
    assert windows.before["timestamp"].tolist() == [0, 10, 40, 55, 60]
    # current spans (60, 100]: the reference is (20, 60]
    assert windows.reference["timestamp"].tolist() == [40, 55, 60]
    assert (windows.reference_start, windows.current_end) == (20, 100)
    assert windows.describe()["current"]["rows"] == 3


def test_a_current_window_of_some_days_leaves_a_lag_after_an_old_champion():
    day = 86_400
    windows = windows_of(log([d * day for d in range(21)]), reference_end=10 * day, window_days=2)
    assert windows.current["timestamp"].tolist() == [19 * day, 20 * day]
    assert windows.reference["timestamp"].tolist() == [9 * day, 10 * day]
    assert len(windows.history) == 19 and len(windows.before) == 11
    assert (windows.span, windows.lag) == (2 * day, 4)  # (10, 18] between: four windows of two days
    assert windows.describe()["lag_windows"] == 4
    # a window longer than what came since the champion: everything since, no lag
    assert windows_of(log([d * day for d in range(21)]), 10 * day, window_days=30).lag == 0


def test_windows_without_newer_rows_are_empty():
    windows = windows_of(log([0, 10, 20]), reference_end=20)
    assert windows.current.empty and windows.reference.empty and len(windows.before) == 3


def test_champion_end_reads_data_end_then_the_window_and_refuses_neither():
    assert champion_end({"data.end": "884000000", "data.window": "all"}, "3") == 884_000_000
    assert champion_end({"data.window": "1970-01-02T00:00:00"}, "2") == 86_400
    with pytest.raises(ValueError, match="champion version 1 has neither a data.end tag nor a data.window"):
        champion_end({"data.window": "all"}, "1")


PAYLOAD = {
    "status": "checked",
    "drift": True,
    "data_window": "1998-02-01T00:00:00",
    "champion": {"version": "4", "data_end": "1998-01-25T00:00:00+00:00"},
    "windows": {
        "reference": {"start": "a", "end": "b", "rows": 900},
        "current": {"start": "b", "end": "c", "rows": 1000},
    },
    "checks": {
        "embeddings": {"drift": False, "score": None, "threshold": 0.55, "details": {"skipped": "3 new items"}},
        "interactions": {
            "drift": True,
            "score": 0.6,
            "threshold": 0.5,
            "details": {"columns": {"hour": {"drifted": True}, "rating": {"drifted": False}}},
        },
    },
    "quality": {
        "users": 80,
        "k": 10,
        "ours": {"NDCG@10": 0.12, "Hit@10": 0.3},
        "evidently": {"NDCG@10": 0.12, "Hit@10": 0.3},
        "disagreements": [],
    },
}


def test_summary_metrics_are_flat_numbers_without_skipped_scores():
    assert summary_metrics(PAYLOAD) == {
        "drift": 1,
        "embeddings.drift": 0,
        "interactions.drift": 1,
        "interactions.score": 0.6,
        "quality.NDCG@10": 0.12,
        "quality.evidently.NDCG@10": 0.12,
        "quality.Hit@10": 0.3,
        "quality.evidently.Hit@10": 0.3,
        "current.rows": 1000,
    }


def test_verdict_table_names_drifted_columns_skips_and_agreement():
    table = verdict_table(PAYLOAD)
    assert table.startswith("**drift: yes** (checked)")
    assert "| interactions | yes | 0.6 | 0.5 | drifted: hour |" in table
    assert "| embeddings | no |  | 0.55 | 3 new items |" in table
    assert "champion v4" in table and "NDCG@10 0.1200 (Evidently 0.1200)" in table and ": agree" in table
    disagreeing = PAYLOAD | {"quality": PAYLOAD["quality"] | {"disagreements": ["NDCG@10"]}}
    assert "DISAGREE on NDCG@10" in verdict_table(disagreeing)


def test_replay_table_has_a_row_per_step():
    def step(index, new_rows, drift, any_, decay, legacy, planted, new_ndcg, retrained, version, promoted):
        window = f"1998-01-{1 + 7 * index:02d}T00:00:00"
        return Step(index, window, 50_000 + index, new_rows, drift, any_, None, None, decay, new_ndcg, legacy,
                    planted, "why", retrained, version, promoted, "1", 0.1, 60.0)  # fmt: skip

    rows = [
        step(0, None, {}, None, None, None, False, None, "first", "1", True),
        step(
            1,
            4000,
            {"interactions": True, "embeddings": None, "predictions": False},
            True,
            True,
            True,
            True,
            0.02,
            "policy",
            "2",
            False,
        ),  # fmt: skip
        step(
            2,
            7000,
            {"interactions": False, "embeddings": False, "predictions": False},
            False,
            None,
            True,
            False,
            0.03,
            "",
            None,
            False,
        ),  # fmt: skip
    ]
    lines = replay_table(rows, CHECK_NAMES).splitlines()
    assert len(lines) == 5
    assert lines[2].startswith(
        "| 0 | 1998-01-01 | 50000 |  | – | – | – | – | – | – |  |  | yes (first): v1 promoted | v1 | 0.1000 |"
    )
    assert (
        lines[3] == "| 1 | 1998-01-08 | 50001 | 4000 | yes | – | no | yes | yes | yes | yes | 0.0200 "
        "| yes (policy): v2 not promoted | v1 | 0.1000 |"
    )
    assert lines[4].endswith("| no | no | no | no | – | yes |  | 0.0300 | no | v1 | 0.1000 |")


def test_list_fields_are_prepared_with_one_separator():
    items = pd.DataFrame(
        {"item_id": ["1", "2", "3"], "genres": ["Animation Children's Comedy", "", None], "title": ["a b", "c", "d"]}
    )
    out = normalise_lists(items, ("genres", "tags"), " ")
    assert out["genres"].tolist() == ["Animation|Children's|Comedy", "", ""]
    assert out["title"].tolist() == ["a b", "c", "d"]  # not a list field


def test_times_are_written_quoted_and_a_bare_time_in_params_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  window: null  # a comment\n")
    apply_overrides(path, ["data.window=1998-01-01T00:00:00"])
    assert 'window: "1998-01-01T00:00:00" # a comment' in path.read_text()
    assert load_params(path).data.window.year == 1998
    path.write_text("data:\n  window: 1998-01-01T00:00:00\n")
    with pytest.raises(ConfigError, match=r"params.yaml: data.window: 1998-01-01T00:00:00 must be quoted"):
        load_params(path)
