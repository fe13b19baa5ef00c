"""`bertrec serve`: MLflow's scoring server for the version an alias names, following the alias.

Every ``serving.poll_seconds`` a thread reads the alias (``models:/NAME@champion``). When it names
another version, that version is downloaded and loaded in the background while the old one keeps
answering; then the served version is swapped in one assignment. A request is answered by one
version from start to end: the one served when it arrived. No request is dropped or refused for
the swap, and a version that fails to load is logged while the old one stays served (it is tried
again after :data:`RETRY_FAILED_S`, or as soon as the alias names another version).

Each version is answered by MLflow's own scoring app (``mlflow.pyfunc.scoring_server.init``, what
`mlflow models serve` runs) around the same pyfunc model, so requests and answers are those of
`mlflow models serve`: POST /invocations (``dataframe_split``, ``dataframe_records``, ``inputs``,
``params``), GET /ping and /health. Two additions: every answer carries the header
``x-bertrec-model-version``, and GET /version answers the served version as JSON (MLflow's
/version answers its own version only).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertrec.config import Params
from bertrec.errors import RegistryError

log = logging.getLogger(__name__)

VERSION_HEADER = "x-bertrec-model-version"
RETRY_FAILED_S = 600.0  # a version that failed to load is tried again after this long
KEEP_FOLDERS = 2  # downloaded versions kept on disk: the served one and the one before (in-flight requests)

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


@dataclass(frozen=True)
class Served:
    version: str
    app: ASGIApp  # MLflow's scoring app around this version's pyfunc model
    since: float  # epoch seconds


@dataclass(frozen=True)
class Look:
    """What one look at the alias did: ``swapped`` when another version is served now."""

    swapped: bool
    version: str | None  # the version the alias named (None when it could not be read)
    reason: str


class AliasServer:
    """An ASGI app that answers with the version an alias names, swapping versions without a pause.

    Args:
        resolve: the version the alias names now (raises when it cannot tell).
        load: the scoring app of a version (raises when it cannot be loaded).
        poll: seconds between looks at the alias; 0: never look again after the first.
    """

    def __init__(self, uri: str, resolve: Callable[[], str], load: Callable[[str], ASGIApp], poll: float) -> None:
        self.uri, self.resolve, self.load, self.poll = uri, resolve, load, poll
        self.served: Served | None = None
        self.failed: dict[str, float] = {}  # version -> time.monotonic() of its failed load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def look(self) -> Look:
        """Read the alias once; load and swap in the version it names when that is not the served one."""
        current = self.served.version if self.served else None
        try:
            version = str(self.resolve())
        except Exception as exc:  # the registry is down or the alias gone: keep serving what is served
            log.warning("cannot read %s (%s); still serving version %s", self.uri, exc, current)
            return Look(False, None, f"cannot read {self.uri}: {exc}")
        if version == current:
            return Look(False, version, f"{self.uri} is still version {version}")
        failed = self.failed.get(version)
        if failed is not None and time.monotonic() - failed < RETRY_FAILED_S:
            return Look(False, version, f"version {version} failed to load; tried again after {RETRY_FAILED_S:.0f}s")
        began = time.monotonic()
        try:
            app = self.load(version)
        except Exception as exc:
            log.exception("loading version %s of %s failed; still serving version %s", version, self.uri, current)
            self.failed[version] = time.monotonic()
            return Look(False, version, f"loading version {version} failed ({exc}); still serving version {current}")
        self.served = Served(version, app, time.time())  # one assignment: the next request gets the new version
        self.failed.pop(version, None)
        seconds = time.monotonic() - began
        log.info("now serving %s: version %s (was %s), loaded in %.1fs", self.uri, version, current, seconds)
        return Look(True, version, f"version {version} replaced version {current} after loading for {seconds:.1f}s")

    def start(self) -> None:
        """Look at the alias every ``poll`` seconds in a background thread (none when ``poll`` is 0)."""
        if self.poll > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            self.look()

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        served = self.served  # read once: this request is answered by this version from start to end
        if served is None:
            raise RuntimeError("no version loaded; look() must succeed before serving")
        if scope["type"] == "http" and scope["path"] == "/version":
            await _json(send, {"model": self.uri, "version": served.version, "since": served.since})
            return
        tag = (VERSION_HEADER.encode(), served.version.encode())

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), tag]}
            await send(message)

        await served.app(scope, receive, tagged)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _json(send: Callable, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class VersionLoader:
    """Downloads a version of a registered model under ``root`` and builds MLflow's scoring app for it.

    Keeps the folders of the last :data:`KEEP_FOLDERS` versions loaded (a model reads some files
    lazily, and the version before may still be answering a request); older ones are removed.
    """

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, Path(root)
        self.kept: list[Path] = []

    def __call__(self, version: str) -> ASGIApp:
        import mlflow
        from mlflow.pyfunc import load_model, scoring_server

        folder = self.root / f"version-{version}"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            local = mlflow.artifacts.download_artifacts(f"models:/{self.name}/{version}", dst_path=str(folder))
            app = scoring_server.init(load_model(local))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.kept = [f for f in self.kept if f != folder] + [folder]
        while len(self.kept) > KEEP_FOLDERS:
            shutil.rmtree(self.kept.pop(0), ignore_errors=True)
        return app


def serve(p: Params, alias: str, host: str, port: int, poll: float) -> None:
    """Serve ``models:/<registered_model>@<alias>`` on ``host:port``, following the alias every ``poll`` s.

    Returns when the server is stopped. Raises RegistryError when the alias names no loadable version.
    """
    import mlflow
    import uvicorn
    from mlflow.tracking import MlflowClient

    name, uri = p.mlflow.registered_model, p.mlflow.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    root = Path(tempfile.mkdtemp(prefix="bertrec-serve-"))
    try:
        server = AliasServer(
            f"models:/{name}@{alias}",
            lambda: client.get_model_version_by_alias(name, alias).version,
            VersionLoader(name, root),
            poll,
        )
        first = server.look()
        if server.served is None:
            raise RegistryError(f"cannot serve models:/{name}@{alias} from {uri}: {first.reason}")
        uvicorn.run(server, host=host, port=port, lifespan="on")
    finally:
        shutil.rmtree(root, ignore_errors=True)
