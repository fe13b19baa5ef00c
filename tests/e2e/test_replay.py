"""`bertrec replay` on a two-week log: a champion on week one, a drift check on week two; a DVC version per step."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from bertrec.mlops.replay import replay

from builders import LENGTH, N_USERS, T0, WEEK, dvc

pytestmark = pytest.mark.integration


def git(root, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def test_replay_trains_checks_and_versions_each_step(tmp_path, project_copy):
    # Given a project whose pipeline ran on week one of the log (the session's built project): the replay's
    # workspace shares its DVC cache, so the stages of step 0 that saw the same inputs come from the run-cache
    root = project_copy()
    work = tmp_path / "replay"
    start = datetime.fromtimestamp(T0 + WEEK, tz=UTC)
    # When the replay starts after week one and steps a week at a time
    rows = replay(root, work, root / "params.yaml", [], start, timedelta(days=7), None, retrain_every=4)
    # Then it stops when the window reaches the end of the log: two steps
    assert [r.step for r in rows] == [0, 1]
    first, second = rows
    # Step 0 trains and promotes the first champion on week one
    assert (first.retrained, first.version, first.promoted, first.champion) == ("first", "1", True, "1")
    assert first.rows == N_USERS * LENGTH and first.champion_ndcg is not None
    # Step 1 checks week two (new users behaving alike): no drift, so no training before the schedule's turn
    assert second.new_rows == N_USERS * LENGTH and second.rows == 2 * N_USERS * LENGTH
    assert second.drift["interactions"] is False and second.drift["embeddings"] is None  # no new items: skipped
    assert (second.drift_any, second.retrained, second.champion) == (False, "", "1")
    assert (work / "replay.md").read_text().count("\n") == 4  # header, rule, two steps
    # Each step is a git commit whose dvc.lock pins that step's data: going back to step 0 brings week one back
    assert git(work, "log", "--format=%s").splitlines() == [
        f"replay step 1: data as of {second.window}",
        f"replay step 0: data as of {first.window}; retrained (first)",
        "replay workspace",
    ]
    git(work, "checkout", "-q", "HEAD~1")
    dvc(work, "checkout")
    assert len(pd.read_parquet(work / "data" / "prepared" / "interactions.parquet")) == N_USERS * LENGTH
    # The replay's registry is its own SQLite file; a second replay into the same folder is refused
    assert (work / "mlflow.db").exists()
    with pytest.raises(RuntimeError, match="already holds a replay"):
        replay(root, work, root / "params.yaml", [], start, timedelta(days=7), None, retrain_every=4)
