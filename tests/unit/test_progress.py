"""Progress as log lines (readable in a Prefect run's log): counts, rate, ETA, and the final line."""

from __future__ import annotations

import logging
import re

import pytest

from bertrec.progress import Progress, duration, phase, progress


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (75.2, "1m15s"), (3725, "1h02m05s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_progress_logs_count_rate_and_eta_then_a_final_line(caplog):
    caplog.set_level(logging.INFO, logger="bertrec.progress")
    chunks = [list(range(10))] * 4
    # When four chunks of ten are counted, logging after every chunk (every=0) and the last line always
    seen = list(progress(chunks, "encode", total=40, unit="texts", every=0.0, quiet_below=0.0))
    # Then the chunks pass through unchanged, and each line says where the work is
    assert seen == chunks
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("encode: 10/40 texts (25.0%), ") and re.search(r"texts/s, ETA \d", lines[0])
    assert lines[-1].startswith("encode: 40/40 texts (100.0%), ") and "ETA" not in lines[-1]
    assert len(lines) == 4  # three intermediate lines and the final one


def test_short_work_stays_quiet(caplog):
    caplog.set_level(logging.INFO, logger="bertrec.progress")
    meter = Progress("rank test", 5, "users")
    meter.advance(5)
    meter.finish()
    with phase("split loo"):
        pass
    assert caplog.records == []
    with phase("split ratio", quiet_below=0.0):
        pass
    assert [r.getMessage() for r in caplog.records] == ["split ratio: 0.0s"]
