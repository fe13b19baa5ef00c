"""What one registered version weighs in the MLflow artifact store, per part; with and without a shared encoder.

The size of a version is the sum of the files under its model's artifacts
(:func:`bertrec.mlops.registry.version_size`). A version whose frozen encoder is shared carries
``model/encoder.ref.json`` instead of ``model/encoder/``; the encoder it names is stored once, in a
run of ``<mlflow.experiment>-encoders``, and is reported beside it, not counted in it.

    python bench/version_size.py                     # every version of mlflow.registered_model (params.yaml)
    python bench/version_size.py --version 3 --set mlflow.tracking_uri=http://host:5000
    python bench/version_size.py --scratch           # paths.bundle, logged into a throwaway registry

``--scratch`` logs the bundle at ``paths.bundle`` into a temporary SQLite registry three times:
with ``mlflow.share_encoder=false`` (how every version was stored before), then twice with it (the
second upload stores no encoder again), and measures the three. Nothing of the project's registry
is read or written. Writes ``bench/reports/version_size.json`` and ``.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
BUNDLE_FILES = "artifacts/bundle/"


def part_of(path: str) -> str:
    """The part a file of a version's model belongs to: a bundle file, the encoder, the code, MLflow's files."""
    if path.startswith(BUNDLE_FILES + "model/encoder/"):
        return "bundle/model/encoder/"
    if path.startswith(BUNDLE_FILES):
        return "bundle/" + path[len(BUNDLE_FILES) :]
    if path.startswith("code/"):
        return "code/ (the bertrec package)"
    return "MLflow files (MLmodel, requirements, examples)"


def measure(client, name: str, version: str, label: str) -> dict:
    from bertrec.mlops.registry import version_size

    size = version_size(client, name, version)
    parts: dict[str, int] = {}
    for path, nbytes in size.files.items():
        parts[part_of(path)] = parts.get(part_of(path), 0) + nbytes
    encoder = size.encoder
    return {
        "model": name,
        "version": version,
        "label": label,
        "total_bytes": size.total,
        "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "shared_encoder": None
        if encoder is None
        else {"sha256": encoder.sha256, "uri": encoder.uri, "bytes": encoder.size},
    }


def scratch(params: Path, sets: list[str], folder: Path) -> dict:
    """Log the bundle of ``params`` into a registry under ``folder``: once with the encoder inside, twice shared."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from bertrec.config import load_params
    from bertrec.mlops.encoders import EXPERIMENT_SUFFIX
    from bertrec.mlops.registry import log_bundle, register_version
    from bertrec.model.layout import ENCODER_CACHE_ENV

    os.environ[ENCODER_CACHE_ENV] = str(folder / "encoder-cache")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    sets = [*sets, f"mlflow.tracking_uri={uri}", f"paths.cache={folder}"]
    p = load_params(params, sets)
    client = MlflowClient(uri, uri)
    for experiment in (p.mlflow.experiment, p.mlflow.experiment + EXPERIMENT_SUFFIX):
        client.create_experiment(experiment, artifact_location=str(folder / "artifacts" / experiment))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(p.mlflow.experiment)
    history = pd.read_parquet(Path(p.paths.bundle) / "model" / "items.parquet")["item_id"].astype(str).tolist()[:5]
    rows = []
    for label, share in (("encoder inside (before)", False), ("shared encoder (after)", True), ("shared again", True)):
        q = load_params(params, [*sets, f"mlflow.share_encoder={str(share).lower()}"])
        with mlflow.start_run(run_name=label):
            version = register_version(client, q, log_bundle(q, history), {})
        rows.append(measure(client, q.mlflow.registered_model, version, label))
    encoders = client.get_experiment_by_name(p.mlflow.experiment + EXPERIMENT_SUFFIX)
    source = f"{p.paths.bundle}, logged into a scratch registry"
    return {"source": source, "versions": rows, "encoder_runs": len(client.search_runs([encoders.experiment_id]))}


def markdown(report: dict) -> str:
    lines = [f"# Registered version size\n\n{report['source']} (`python bench/version_size.py`)\n"]
    if report["encoder_runs"] is not None:
        lines.append(f"Encoder runs in `<experiment>-encoders` after these versions: {report['encoder_runs']}\n")
    for row in report["versions"]:
        lines += [f"### {row['model']} version {row['version']}: {row['label']}: {row['total_bytes'] / 1e6:.2f} MB\n"]
        lines += ["| part | MB |", "|---|---:|"]
        lines += [f"| {part} | {nbytes / 1e6:.3f} |" for part, nbytes in row["parts"].items()]
        if row["shared_encoder"]:
            enc = row["shared_encoder"]
            lines.append(
                f"| (shared encoder {enc['sha256'][:12]}, stored once: {enc['uri']}) | ({enc['bytes'] / 1e6:.3f}) |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--set", action="append", default=[], help="override a param (repeatable)")
    parser.add_argument("--version", action="append", default=[], help="a version to measure (default: all)")
    parser.add_argument("--scratch", action="store_true", help="log paths.bundle into a throwaway registry")
    parser.add_argument("--out", type=Path, default=REPORTS / "version_size")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlflow.tracking import MlflowClient

    from bertrec.config import load_params
    from bertrec.mlops.registry import versions

    if args.scratch:
        with tempfile.TemporaryDirectory(prefix="bertrec-version-size-") as tmp:
            report = scratch(args.params, args.set, Path(tmp))
    else:
        p = load_params(args.params, args.set)
        client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
        chosen = args.version or [row.version for row in versions(p)]
        rows = [measure(client, p.mlflow.registered_model, v, "") for v in chosen]
        report = {"source": f"{p.mlflow.tracking_uri}, model {p.mlflow.registered_model}", "versions": rows}
        report["encoder_runs"] = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    sys.stdout.write(markdown(report))


if __name__ == "__main__":
    main()
