"""Where the raw data comes from: a local path, the GroupLens archive, or the RecBole wheel.

MovieLens-100K is found, in order: at ``data.path`` when one is given; in ``paths.raw`` when an
earlier run fetched it; then through each route of ``data.routes``: the GroupLens archive
(checked against its published MD5) and the copy inside the ``recbole==1.2.1`` wheel, which is
downloaded from the package index without being installed. The route taken is logged and
recorded in ``SOURCE.json`` beside the raw files.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertrec.config import Params
from bertrec.data.formats import Loaded, detect_movielens, read_movielens, read_recbole, read_tables
from bertrec.io import atomic_dir, md5_file, sha256_file
from bertrec.errors import DataError
from bertrec.data.text import template_fields

log = logging.getLogger(__name__)

GROUPLENS_ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_GLOB = "recbole-1.2.1-*.whl"
RECBOLE_ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
# Template fields of MovieLens -> columns of RecBole's ml-100k.item.
RECBOLE_ML100K_FIELDS = {"title": "movie_title", "year": "release_year", "genres": "class"}
ML100K = "ml-100k"
SOURCE_FILE = "SOURCE.json"
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Source:
    """What was read and how it got here."""

    loaded: Loaded
    name: str
    route: str  # local, grouplens, recbole-wheel, or cached:<route>
    detail: str  # the file or folder name, the URL or the wheel: never a path of this machine


class RouteUnavailable(RuntimeError):
    """A download route could not be used (no network, no package index); the next is tried."""


def download_grouplens(dest: Path, url: str = GROUPLENS_ML100K_URL, md5: str = GROUPLENS_ML100K_MD5) -> Path:
    """Download the GroupLens ml-100k archive to ``dest`` and check its MD5.

    Raises:
        RouteUnavailable: the network or the server cannot be reached.
        DataError: the archive arrived but its MD5 is not the published one (the file is removed).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        raise RouteUnavailable(f"cannot download {url}: {exc}") from None
    got = md5_file(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: MD5 is {got}, expected the published {md5}; the archive was discarded")
    part.replace(dest)
    return dest


def find_or_download_recbole_wheel(cache: Path) -> Path:
    """The ``recbole==1.2.1`` wheel from ``cache``, or downloaded there with ``pip download --no-deps``."""
    wheels = cache / "wheels"
    found = sorted(wheels.glob(RECBOLE_WHEEL_GLOB))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", RECBOLE_WHEEL, "--no-deps", "--quiet", "-d", str(wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(RECBOLE_WHEEL_GLOB))
    if done.returncode != 0 or not found:
        raise RouteUnavailable(f"'{' '.join(cmd)}' failed: {done.stderr.strip()[-500:]}")
    return found[-1]


def extract_zip(archive: Path, dest: Path, prefix: str = "") -> None:
    """Extract the members of ``archive`` under ``prefix`` into ``dest``, flattening the prefix."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise DataError(f"{archive}: no files under {prefix!r}")
        for member in members:
            relative = Path(member[len(prefix):])
            if relative.is_absolute() or ".." in relative.parts:
                raise DataError(f"{archive}: unsafe member path {member!r}")
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _single_subfolder(folder: Path) -> Path:
    """Archives wrap their files in one folder (``ml-100k/u.data``); step into it."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != SOURCE_FILE]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def fetch_ml100k(raw_root: Path, cache: Path, routes: tuple[str, ...], url: str = GROUPLENS_ML100K_URL,
                 md5: str = GROUPLENS_ML100K_MD5) -> tuple[Path, str, str]:
    """Put MovieLens-100K under ``raw_root/ml-100k``, trying each route; return (folder, route, detail).

    A folder fetched by an earlier run is reused. Raises DataError when every route failed.
    """
    target = raw_root / ML100K
    record = target / SOURCE_FILE
    if record.exists():
        info = json.loads(record.read_text())
        return _single_subfolder(target), f"cached:{info['route']}", info["detail"]
    failures = []
    for route in routes:
        try:
            with atomic_dir(target) as tmp:
                if route == "grouplens":
                    archive = download_grouplens(cache / "downloads" / "ml-100k.zip", url, md5)
                    extract_zip(archive, tmp)
                    detail = f"{url} (md5 {md5})"
                else:
                    wheel = find_or_download_recbole_wheel(cache)
                    extract_zip(wheel, tmp, RECBOLE_ML100K_PREFIX)
                    detail = f"{wheel.name} (sha256 {sha256_file(wheel)[:16]}...)"
                (tmp / SOURCE_FILE).write_text(json.dumps({"route": route, "detail": detail}, indent=2) + "\n")
        except RouteUnavailable as exc:
            log.warning("route %s unavailable: %s", route, exc)
            failures.append(f"{route}: {exc}")
            continue
        log.info("MovieLens-100K fetched through route %s: %s", route, detail)
        return _single_subfolder(target), route, detail
    raise DataError("MovieLens-100K: every route failed:\n  " + "\n  ".join(failures or ["no routes configured"]))


def _read_folder(folder: Path, params: Params, recbole_name: str, recbole_fields: dict[str, str]) -> Loaded:
    """A MovieLens folder, or a RecBole atomic folder."""
    if detect_movielens(folder):
        return read_movielens(folder)
    if (folder / f"{recbole_name}.inter").exists():
        return read_recbole(folder, recbole_name, params.data.columns, recbole_fields)
    present = sorted(p.name for p in folder.iterdir())
    raise DataError(f"{folder}: neither MovieLens files nor {recbole_name}.inter found; found {present}")


def _local_folder(path: Path, raw_root: Path) -> Path:
    """A folder to read from a local path: the folder itself, or a zip extracted into ``raw_root``."""
    if not path.exists():
        raise DataError(f"{path}: data.path does not exist")
    if path.is_dir():
        return _single_subfolder(path)
    if zipfile.is_zipfile(path):
        target = raw_root / path.stem.split("-py3")[0]
        digest = sha256_file(path)
        record = target / SOURCE_FILE
        if not record.exists() or json.loads(record.read_text()).get("sha256") != digest:
            prefix = RECBOLE_ML100K_PREFIX if path.suffix == ".whl" else ""
            with atomic_dir(target) as tmp:
                extract_zip(path, tmp, prefix)
                (tmp / SOURCE_FILE).write_text(json.dumps({"route": "local", "detail": str(path), "sha256": digest}))
        return _single_subfolder(target)
    raise DataError(f"{path}: data.path must be a folder, a .zip archive or the RecBole wheel")


def load_source(params: Params) -> Source:
    """Read the interaction log and item table that ``params.data`` describes."""
    data, paths = params.data, params.paths
    fields = dict(data.item_fields)
    if data.source == "table":
        if data.path is None or data.items_path is None:
            raise DataError("data.source 'table' needs data.path (interactions) and data.items_path (items)")
        loaded = read_tables(data.path, data.items_path, data.columns, fields or _identity(data.text_template),
                             data.delimiter, data.encoding, data.list_sep)
        return Source(loaded, data.name or data.path.stem, "local", data.path.name)
    if data.source == "recbole":
        if data.path is None:
            raise DataError("data.source 'recbole' needs data.path: the folder of NAME.inter and NAME.item")
        folder = _local_folder(data.path, paths.raw)
        name = data.name or folder.name
        loaded = read_recbole(folder, name, data.columns, fields or _identity(data.text_template))
        return Source(loaded, name, "local", data.path.name)
    if data.source == "movielens":
        if data.path is None:
            raise DataError("data.source 'movielens' needs data.path: a MovieLens folder or .zip archive")
        folder = _local_folder(data.path, paths.raw)
        return Source(read_movielens(folder), data.name or folder.name, "local", data.path.name)
    # movielens-100k
    recbole_fields = fields or RECBOLE_ML100K_FIELDS
    if data.path is not None:
        folder = _local_folder(data.path, paths.raw)
        route, detail = "local", data.path.name
    else:
        folder, route, detail = fetch_ml100k(paths.raw, paths.cache, data.routes)
    log.info("MovieLens-100K route: %s (%s)", route, detail)
    return Source(_read_folder(folder, params, ML100K, recbole_fields), data.name or ML100K, route, detail)


def _identity(template: str) -> dict[str, str]:
    """Template fields read from the columns of the same name."""
    return {name: name for name in template_fields(template)}


def fetch_raw(params: Params) -> tuple[Path, str, str]:
    """Put the configured raw data under ``paths.raw``, the folder DVC versions; returns (folder, route, detail).

    MovieLens-100K without ``data.path`` is fetched through the routes (see :func:`fetch_ml100k`).
    A local source (``data.path`` and, for tables, ``data.items_path``) is copied into
    ``paths.raw/local/<name>`` with a SOURCE.json of the files' sha256; an unchanged snapshot is left
    as it is, so its DVC hash changes only when the data does. Raises DataError.
    """
    data, paths = params.data, params.paths
    if data.source == "movielens-100k" and data.path is None:
        return fetch_ml100k(paths.raw, paths.cache, data.routes)
    files = [Path(f) for f in (data.path, data.items_path) if f is not None]
    if not files:
        raise DataError(f"data.source {data.source!r} needs data.path")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DataError(f"{', '.join(missing)}: not found (data.path / data.items_path)")
    digests = {f.name: (sha256_file(f) if f.is_file() else _tree_sha256(f)) for f in files}
    target = paths.raw / "local" / (data.name or files[0].stem)
    record = target / SOURCE_FILE
    if record.exists() and json.loads(record.read_text()).get("sha256") == digests:
        return target, "local", "unchanged snapshot"
    with atomic_dir(target) as tmp:
        for f in files:
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        detail = ", ".join(str(f) for f in files)
        (tmp / SOURCE_FILE).write_text(json.dumps({"route": "local", "detail": detail, "sha256": digests}, indent=2) + "\n")
    return target, "local", detail


def _tree_sha256(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
