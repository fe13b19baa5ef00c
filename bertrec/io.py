"""Atomic outputs and content hashes.

A step writes into a temporary sibling and renames it into place only when everything succeeded,
so a crash or a validation error never leaves a half-written artifact and never touches the
previous outputs. A folder is replaced in two renames (the old one aside, the new one in); a
writer killed between them leaves the old one aside, and :func:`recover_dir` (run by the next
writer and by the bundle's readers) puts it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _leftovers(final: Path, kind: str) -> list[Path]:
    """``.NAME.tmp-PID-*`` or ``.NAME.old-PID`` siblings of ``final`` whose writer is no longer running."""
    found = []
    for path in final.parent.glob(f".{final.name}.{kind}-*"):
        pid = path.name[len(f".{final.name}.{kind}-") :].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def recover_dir(final: Path) -> None:
    """Undo what a killed :func:`atomic_dir` left beside ``final``.

    If ``final`` is missing and a dead writer had moved it aside, it is moved back; the temporary
    and old folders of dead writers are removed. Folders of running writers are left alone.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    olds = _leftovers(final, "old")
    if olds and not final.exists():
        os.replace(olds.pop(), final)
    for path in [*olds, *_leftovers(final, "tmp")]:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` when the block succeeds.

    On an exception the temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it is renamed onto ``final`` when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically, keys in a stable order."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame to Parquet (no index) at ``path``; the caller makes it atomic."""
    frame.to_parquet(path, index=False)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
