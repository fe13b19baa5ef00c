"""Steady traffic for a serving process on loopback: one request after another, every reply recorded.

Used by the live-update test and by bench/live_update.py, so both measure the same way.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

VERSION_HEADER = "x-bertrec-model-version"  # bertrec.serve.live.VERSION_HEADER


@dataclass(frozen=True)
class Reply:
    sent: float  # time.monotonic()
    received: float
    status: int | None  # None: no HTTP answer at all (refused, reset, timed out)
    version: str | None  # the served version that answered
    items: tuple[str, ...]  # the first row's item_ids
    error: str | None = None


@dataclass
class RequestLoop:
    """POSTs ``body`` to ``/invocations`` back to back on a thread while the block runs."""

    port: int
    body: dict
    timeout: float = 60.0
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-loop", daemon=True)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    def _run(self) -> None:
        data = json.dumps(self.body).encode()
        url = f"http://127.0.0.1:{self.port}/invocations"
        while not self._stop.is_set():
            sent = time.monotonic()
            request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.loads(response.read())
                    version = response.headers.get(VERSION_HEADER)
                    items = tuple(answer["predictions"][0]["item_ids"])
                    self.replies.append(Reply(sent, time.monotonic(), response.status, version, items))
            except urllib.error.HTTPError as error:
                text = error.read().decode(errors="replace")[:300]
                self.replies.append(Reply(sent, time.monotonic(), error.code, None, (), text))
            except Exception as error:  # no answer: a dropped request
                self.replies.append(Reply(sent, time.monotonic(), None, None, (), repr(error)))

    def first_with(self, item: str, since: float) -> Reply | None:
        """The first reply sent at or after ``since`` whose list holds ``item``."""
        return next((r for r in list(self.replies) if r.sent >= since and item in r.items), None)

    def wait_for(self, item: str, since: float, timeout: float, then: int = 5) -> Reply | None:
        """Wait until a reply holds ``item`` and ``then`` more replies came; the first such reply, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first_with(item, since)
            if found is not None and sum(r.sent > found.sent for r in list(self.replies)) >= then:
                return found
            time.sleep(0.1)
        return self.first_with(item, since)


def traffic_report(loop: RequestLoop, item: str, began: float, finished: float) -> dict:
    """The figures of a live update: requests, errors, versions served, seconds until ``item`` was served."""
    replies = list(loop.replies)
    first = loop.first_with(item, began)
    errors = [asdict(r) for r in replies if r.status != 200]
    versions = [r.version for r in replies]
    return {
        "requests": len(replies),
        "errors": len(errors),
        "error_examples": errors[:5],
        "versions_served": sorted(set(versions) - {None}, key=lambda v: int(v)),
        "requests_per_version": {v: versions.count(v) for v in sorted(set(versions) - {None}, key=int)},
        "update_seconds": round(finished - began, 2),  # from the item's arrival to the update's end
        "seconds_to_first_served": round(first.received - began, 2) if first else None,
        "first_served_by_version": first.version if first else None,
        "requests_during_update": sum(began <= r.sent <= finished for r in replies),
        "max_reply_seconds": round(max((r.received - r.sent for r in replies), default=0.0), 3),
    }
