"""Atomic folders: what a killed writer leaves is put right by the next writer or reader, and only that."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bertrec.io import atomic_dir, recover_dir


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_folder_moved_aside_by_a_dead_writer_is_put_back(tmp_path, dead_pid):
    final = tmp_path / "embeddings"
    # Given a writer that died after moving the old folder aside, with its new folder half written
    (tmp_path / f".embeddings.old-{dead_pid}").mkdir()
    (tmp_path / f".embeddings.old-{dead_pid}" / "vectors.npy").write_text("old")
    (tmp_path / f".embeddings.tmp-{dead_pid}-x1").mkdir()
    recover_dir(final)
    # Then the old folder is back in place and the leftovers are gone
    assert (final / "vectors.npy").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings"]


def test_the_folders_of_a_running_writer_are_left_alone(tmp_path):
    final = tmp_path / "index"
    final.mkdir()
    running = os.getppid()  # the process that started this test run is alive
    busy = [tmp_path / f".index.tmp-{running}-x1", tmp_path / f".index.old-{running}"]
    for path in busy:
        path.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "index.faiss").write_text("new")
    assert (final / "index.faiss").read_text() == "new"
    assert all(path.exists() for path in busy)
