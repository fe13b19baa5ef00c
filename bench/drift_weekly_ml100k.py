"""The interaction drift check on real ml-100k, each week against the week before.

Unlike ``drift_false_alarms.py`` (pairs drawn from one distribution), these windows are real
consecutive weeks of MovieLens-100K, so a drift here is what the check says of real traffic, not a
false alarm by construction. Thresholds are those of params.yaml. Writes
``bench/results/drift_weekly_ml100k.json`` and ``.md``.

    python bench/drift_weekly_ml100k.py                      # weeks ending 1998-01-08 to the end of the log
    python bench/drift_weekly_ml100k.py --start 1997-10-01

Run it after `make run` (it reads data/prepared).
"""

from __future__ import annotations

import argparse
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

from bertrec.config import load_params
from bertrec.data.dataset import load_dataset
from bertrec.mlops.drift.checks import check_interactions

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
WEEK = 7 * 86_400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="1998-01-01T00:00:00", help="end of the first reference week (UTC)")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    data = load_dataset(ROOT / params.paths.prepared)
    stamps = data.interactions["timestamp"]
    end = datetime.fromisoformat(args.start).replace(tzinfo=UTC).timestamp()
    weeks = []
    while end + WEEK <= stamps.max() + WEEK:
        reference = data.interactions[(stamps > end - WEEK) & (stamps <= end)]
        current = data.interactions[(stamps > end) & (stamps <= end + WEEK)]
        if len(reference) and len(current):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns on constant columns
                check = check_interactions(reference, current, data.items, params.drift)
            columns = check.details["columns"]
            weeks.append(
                {
                    "week_ending": datetime.fromtimestamp(end + WEEK, tz=UTC).date().isoformat(),
                    "rows": {"reference": len(reference), "current": len(current)},
                    "drift": check.drift,
                    "share_drifted": check.score,
                    "drifted": [c for c, v in columns.items() if v["drifted"]],
                    "scores": {c: v["score"] for c, v in columns.items()},
                }
            )
            print(weeks[-1]["week_ending"], weeks[-1]["drift"], weeks[-1]["drifted"], flush=True)
        end += WEEK
    drifted = sum(w["drift"] for w in weeks)
    counts = {c: sum(c in w["drifted"] for w in weeks) for c in weeks[0]["scores"]}
    lines = [
        f"Interaction drift, each week of ml-100k against the week before: {drifted}/{len(weeks)} weeks drift "
        f"(drift_share {params.drift.drift_share})\n",
        "| column | weeks drifted |",
        "|---|---|",
        *(f"| {c} | {n}/{len(weeks)} |" for c, n in counts.items()),
        "",
        "| week ending | rows (ref / cur) | drift | drifted columns |",
        "|---|---|---|---|",
        *(
            f"| {w['week_ending']} | {w['rows']['reference']} / {w['rows']['current']} "
            f"| {'yes' if w['drift'] else 'no'} "
            f"| {', '.join(w['drifted'])} |"
            for w in weeks
        ),
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "drift_weekly_ml100k.json").write_text(json.dumps({"weeks": weeks, "drifted": drifted}, indent=2) + "\n")
    (OUT / "drift_weekly_ml100k.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
