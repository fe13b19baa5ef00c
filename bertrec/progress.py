"""Progress of long work as log lines with a rate and an ETA, readable in a Prefect run's log.

A terminal bar (tqdm) is invisible in a flow's log and in `dvc repro`'s captured output; these are
ordinary ``logging`` records, written at most every ``every`` seconds plus once at the end::

    embed: 51200/200000 items (25.6%), 812 items/s, ETA 3m03s

Work shorter than ``every`` seconds logs only its final line, and only when ``quiet_below`` allows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("bertrec.progress")

EVERY_S = 10.0


def duration(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3725`` -> ``1h02m05s``."""
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


class Progress:
    """Counts units of work and logs ``done/total``, the rate and the ETA every ``every`` seconds."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "items",
        every: float = EVERY_S,
        logger: logging.Logger | None = None,
        quiet_below: float = 2.0,
    ) -> None:
        self.what, self.total, self.unit, self.every = what, int(total), unit, every
        self.log = logger or log
        self.quiet_below = quiet_below
        self.done = 0
        self.began = self.last = time.perf_counter()

    def line(self, now: float) -> str:
        elapsed = max(now - self.began, 1e-9)
        rate = self.done / elapsed
        share = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        text = f"{self.what}: {self.done}/{self.total} {self.unit}{share}, {rate:,.0f} {self.unit}/s"
        if self.done < self.total and rate > 0:
            return f"{text}, ETA {duration((self.total - self.done) / rate)}"
        return f"{text}, {duration(elapsed)}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log.info(self.line(now))

    def finish(self) -> float:
        """Log the final line (when the work took ``quiet_below`` seconds or more); return the seconds taken."""
        now = time.perf_counter()
        if now - self.began >= self.quiet_below:
            self.log.info(self.line(now))
        return now - self.began


def progress(
    chunks: Iterable[T],
    what: str,
    total: int,
    size: Callable[[T], int] = len,
    unit: str = "items",
    every: float = EVERY_S,
    quiet_below: float = 2.0,
) -> Iterator[T]:
    """Yield ``chunks`` unchanged, counting ``size(chunk)`` units of ``total`` after each one."""
    meter = Progress(what, total, unit, every, quiet_below=quiet_below)
    for chunk in chunks:
        yield chunk
        meter.advance(size(chunk))
    meter.finish()


@contextlib.contextmanager
def phase(what: str, quiet_below: float = 2.0) -> Iterator[None]:
    """Log ``what: 12.3s`` when the block took ``quiet_below`` seconds or more (a step of no countable units)."""
    began = time.perf_counter()
    yield
    took = time.perf_counter() - began
    if took >= quiet_below:
        log.info("%s: %s", what, duration(took) if took >= 60 else f"{took:.1f}s")
