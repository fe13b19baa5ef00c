"""New items live without retraining, measured: steady requests while a catalogue update is served.

The champion of the params' registered model is copied (tags too) to a scratch model of its own,
``<registered_model>-live-bench``, so the real one is left alone. `bertrec serve --poll POLL`
serves that model's champion on loopback; a thread sends requests back to back (one history, ``k``
= the champion's catalogue size, so every servable item is listed); meanwhile
`bertrec catalogue add ITEMS` registers and promotes a version with the new items. It records the
requests, the errors and the seconds from the update's start (the items' arrival) to the first
answer that lists one of them: the same code as the test
(tests/integration/test_live_update.py, tests/traffic.py). Writes ``bench/reports/live_update.json``.

    python bench/live_update.py --items new_items.csv    # after `make run` (a champion, data, splits)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
from bertrec.config import load_params  # noqa: E402
from bertrec.data.new_items import read_new_items  # noqa: E402
from bertrec.mlops.registry import CHALLENGER, CHAMPION, alias_version  # noqa: E402

from servers import free_port, serving  # noqa: E402
from traffic import RequestLoop, traffic_report  # noqa: E402


def scratch_champion(uri: str, source: str, model: str) -> str:
    """Copy the champion of ``source`` (tags too) to a new version of ``model``, its champion; returns it."""
    client = MlflowClient(uri, uri)
    version = alias_version(client, source, CHAMPION)
    if version is None:
        raise SystemExit(f"{source} has no champion at {uri}; run `make run` first")
    copied = client.copy_model_version(f"models:/{source}/{version}", model)
    for key, value in client.get_model_version(source, version).tags.items():
        client.set_model_version_tag(model, copied.version, key, value)
    for alias in (CHAMPION, CHALLENGER):
        client.set_registered_model_alias(model, alias, copied.version)
    return str(copied.version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=Path, required=True, help="the new-items file (CSV/Parquet)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a params override (repeatable)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between the server's looks at the alias")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a new item to be served")
    args = parser.parse_args()

    p = load_params(args.params, args.sets)
    new_ids = read_new_items(args.items, p.data).items["item_id"].tolist()  # refused here if the file is bad
    model = f"{p.mlflow.registered_model}-live-bench"
    parent = scratch_champion(p.mlflow.tracking_uri, p.mlflow.registered_model, model)
    sets = [x for s in [*args.sets, f"mlflow.registered_model={model}"] for x in ("--set", s)]
    common = ["--params", str(args.params), *sets]
    log = pd.read_parquet(p.paths.prepared / "interactions.parquet")
    history = log["item_id"].astype(str).tolist()[:5]
    size = len(pd.read_parquet(p.paths.prepared / "items.parquet"))
    body = {"dataframe_records": [{"history": history}], "params": {"k": size}}
    port = free_port()
    serve = [str(BIN / "bertrec"), "serve", *common, "--port", str(port), "--poll", str(args.poll)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bertrec-live-bench-") as tmp:
        with serving(serve, f"http://127.0.0.1:{port}/ping", Path(tmp) / "serve.log", {"HF_HUB_OFFLINE": "1"}):
            with RequestLoop(port, body) as loop:
                while not loop.replies:
                    time.sleep(0.05)
                began = time.monotonic()
                add = [str(BIN / "bertrec"), "catalogue", "add", str(args.items), *common]
                done = subprocess.run(add, cwd=ROOT, env=env, capture_output=True, text=True)
                finished = time.monotonic()
                if done.returncode != 0:
                    raise SystemExit(f"catalogue add failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
                loop.wait_for(new_ids[0], began, args.timeout)
    report = traffic_report(loop, new_ids[0], began, finished) | {
        "what": "POST /invocations back to back (one history, k = catalogue size) while `bertrec catalogue add` runs",
        "model": model,
        "parent_version": parent,
        "items_added": len(new_ids),
        "catalogue_size": size,
        "poll_seconds": args.poll,
        "update_output": done.stdout.strip(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["python", "bench/live_update.py", *sys.argv[1:]]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "live_update.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
