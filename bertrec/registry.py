"""The MLflow model registry: a bundle becomes a version; the gate moves the aliases.

One registered model (``mlflow.registered_model``) whose versions are pyfunc models carrying the
whole bundle (encoder, towers, embeddings, FAISS index, item table), so a model is never served
with an index built by another. Aliases: every new version is ``challenger``; on promotion the old
champion becomes ``previous`` and the new version ``champion``.

Order of operations, so that a failure at any point changes no alias: log and upload the bundle,
register the version and check that its files are there, then, under a lock, re-evaluate the
champion on the current data, decide (:func:`bertrec.promotion.decide_promotion`) and only then
move the aliases. The lock is a file lock beside the cache (runs on one machine); across machines
the training deployment's concurrency limit of 1 serialises runs, and the champion alias is read
again just before the switch: if another run moved it meanwhile, the gate runs again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import bertrec
from bertrec.bundle import EMBEDDINGS, INDEX, MODEL
from bertrec.config import Params
from bertrec.data import Dataset
from bertrec.promotion import Decision, decide_promotion, flat_metrics
from bertrec.recommend import CatalogueScorer, Recommender
from bertrec.tracking import mlflow_name

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
BUNDLE_TAG = "bundle.sha256"
DATA_END_TAG = "data.end"  # epoch seconds of the newest interaction a version was trained on
GATE_ATTEMPTS = 3
# Files whose content is the model; run records with timings (training.json, ...) are left out.
FINGERPRINT_SKIP = {"training.json", "embeddings.json", "index.json"}


class RegistryError(RuntimeError):
    """A registry operation cannot be done (no champion to roll back, missing baselines, ...)."""


@dataclass(frozen=True)
class Registration:
    run_id: str
    version: str
    registered: bool  # False when the same bundle was already a version (nothing new registered)
    decision: Decision | None
    champion: str | None  # the champion version after the call


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: tuple[str, ...]
    run_id: str
    created: int  # ms since the epoch
    tags: dict[str, str]


Checkpoint = Callable[[str], None]


def bundle_fingerprint(bundle: Path) -> str:
    """sha256 over the bundle's model files (names and contents), timings excluded."""
    digest = hashlib.sha256()
    for path in sorted(p for part in (MODEL, EMBEDDINGS, INDEX) for p in (Path(bundle) / part).rglob("*")):
        if path.is_file() and path.name not in FINGERPRINT_SKIP:
            digest.update(str(path.relative_to(bundle)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def gate_splits(p: Params) -> list[str]:
    """The splits the promotion rule reads metrics from, primary first."""
    keys = [p.promotion.metric, *p.promotion.guardrails]
    return list(dict.fromkeys(key.split("/")[0] for key in keys))


def gate_scores(recommender: Recommender, data: Dataset, p: Params) -> dict[str, float]:
    """A loaded bundle's metrics on the current data, for every split of the rule, as served.

    On ``cold_items`` the new items are scored by their text part alone (their ID embeddings left
    out), so a model trained on ``loo`` is probed on the cold-start path; it has seen those items'
    interactions in training, so this is a regression check, not the protocol's cold figure.
    """
    from bertrec.evaluate import evaluate_split
    from bertrec.split import read_split

    scores: dict[str, float] = {}
    for name in gate_splits(p):
        split = read_split(p.paths.splits, name, data.n_users, data.n_items)
        scorer = CatalogueScorer(recommender, data.items, split.new_items)
        results = evaluate_split([scorer], split, data.items, p.eval.ks, p.eval.batch_size)
        scores |= flat_metrics(results[scorer.name], name)
    return scores


def baseline_scores(baselines: dict, p: Params) -> dict[str, dict[str, float]]:
    """``{baseline: {"split/target/metric": value}}`` from ``{split: {model: {target: metrics}}}``."""
    split = p.promotion.metric.split("/")[0]
    if p.promotion.beat_baselines and split not in baselines:
        raise RegistryError(f"no current baseline figures for split {split!r}; run `bertrec baselines --split {split}`")
    out: dict[str, dict[str, float]] = {}
    for split_name, models in baselines.items():
        for model, results in models.items():
            out.setdefault(model, {}).update(flat_metrics(results, split_name))
    return out


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def find_bundle(client: MlflowClient, name: str, fingerprint: str) -> str | None:
    """The version registered with this bundle fingerprint, if any."""
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{BUNDLE_TAG}` = '{fingerprint}'")
    except MlflowException:
        return None
    return str(min(int(v.version) for v in found)) if found else None


def load_version(client: MlflowClient, name: str, version: str, into: Path, device: str = "auto") -> Recommender:
    """Download a version's bundle into ``into`` and load it."""
    root = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(into))
    from bertrec.serving import BUNDLE_ARTIFACT

    return Recommender(Path(root) / "artifacts" / BUNDLE_ARTIFACT, device)


def lock_for(p: Params) -> FileLock:
    key = hashlib.sha1(f"{p.mlflow.tracking_uri}|{p.mlflow.registered_model}".encode()).hexdigest()[:16]
    path = Path(p.paths.cache) / "locks" / f"registry-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=p.promotion.lock_timeout)


def log_bundle(p: Params, example_history: list[str]) -> str:
    """Log the bundle as a pyfunc model in the active run; returns its model URI."""
    from bertrec.serving import BUNDLE_ARTIFACT, DEFAULT_K, SIGNATURE, BundleModel, input_example, pip_requirements

    with tempfile.TemporaryDirectory(prefix="bertrec-bundle-") as tmp:
        staged = Path(tmp) / BUNDLE_ARTIFACT
        for part in (MODEL, EMBEDDINGS, INDEX):
            shutil.copytree(Path(p.paths.bundle) / part, staged / part)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=BundleModel(), artifacts={BUNDLE_ARTIFACT: str(staged)},
            signature=SIGNATURE, input_example=(input_example(example_history), {"k": DEFAULT_K}),
            pip_requirements=pip_requirements(), code_paths=[str(Path(bertrec.__file__).parent)],
        )  # fmt: skip
    return info.model_uri


def register_version(client: MlflowClient, p: Params, model_uri: str, tags: dict[str, str]) -> str:
    """Register ``model_uri``; check the version is READY and its index arrived. Returns the version."""
    name = p.mlflow.registered_model
    version = mlflow.register_model(model_uri, name, await_registration_for=600, tags=tags)
    status = client.get_model_version(name, version.version).status
    if status != "READY":
        raise RegistryError(f"version {version.version} of {name} is {status}, not READY; no alias was changed")
    listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{client.get_model_version_download_uri(name, version.version)}/artifacts/bundle/{INDEX}")
    if not any(Path(f.path).name == "index.faiss" for f in listed):
        raise RegistryError(f"version {version.version} of {name} has no FAISS index in its artifacts; no alias was changed")
    return str(version.version)


@dataclass(frozen=True)
class Gate:
    decision: Decision
    champion: str | None  # after the switch
    champion_before: str | None
    champion_scores: dict[str, float] | None  # the champion before, re-evaluated on the current data


def gate_and_switch(client: MlflowClient, p: Params, version: str, scores: dict[str, float],
                    baselines: dict[str, dict[str, float]], data: Dataset,
                    checkpoint: Checkpoint | None = None, force: bool = False) -> Gate:  # fmt: skip
    """Under the registry lock: re-evaluate the champion, decide, move the aliases.

    ``force`` promotes even when the gate says no; the reason records both.
    """
    name = p.mlflow.registered_model
    with lock_for(p):
        for _ in range(GATE_ATTEMPTS):
            champion = alias_version(client, name, CHAMPION)
            champion_scores = None
            if champion is not None:
                with tempfile.TemporaryDirectory(prefix="bertrec-champion-") as tmp:
                    champion_scores = gate_scores(load_version(client, name, champion, Path(tmp), p.train.device), data, p)
            decision = decide_promotion(scores, champion_scores, baselines, p.promotion)
            if force and not decision.promote:
                decision = Decision(True, f"forced promotion; the gate said: {decision.reason}", decision.checks)
            if checkpoint:
                checkpoint("decided")
            if alias_version(client, name, CHAMPION) == champion:
                break
        else:
            raise RegistryError(f"the champion of {name} kept moving during {GATE_ATTEMPTS} gate attempts; no alias was changed")
        before = champion
        gate_tags = {"gate.promote": str(decision.promote).lower(), "gate.reason": decision.reason,
                     "gate.champion_before": champion or "none"}  # fmt: skip
        if champion_scores:
            gate_tags |= {mlflow_name(f"gate.champion.{k}"): f"{v:.6g}" for k, v in champion_scores.items()
                          if k in (p.promotion.metric, *p.promotion.guardrails)}  # fmt: skip
        for key, value in gate_tags.items():
            client.set_model_version_tag(name, version, key, value)
        if decision.promote:
            if champion is not None:
                client.set_registered_model_alias(name, PREVIOUS, champion)
            client.set_registered_model_alias(name, CHAMPION, version)
            champion = version
        client.set_registered_model_alias(name, CHALLENGER, version)
    return Gate(decision, champion, before, champion_scores)


def promote_version(p: Params, version: str, force: bool = False) -> Gate:
    """Run the gate for an already registered ``version`` against the champion, on the current data.

    For manual promotion (the `promote` flow). Raises RegistryError when the version is the champion.
    """
    from bertrec.data import load_dataset
    from bertrec.results import current_baselines

    client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
    name = p.mlflow.registered_model
    if alias_version(client, name, CHAMPION) == str(version):
        raise RegistryError(f"version {version} of {name} is already the champion")
    data = load_dataset(p.paths.prepared)
    with tempfile.TemporaryDirectory(prefix="bertrec-version-") as tmp:
        scores = gate_scores(load_version(client, name, str(version), Path(tmp), p.train.device), data, p)
    return gate_and_switch(client, p, str(version), scores, baseline_scores(current_baselines(p), p), data, force=force)


def rollback(p: Params) -> tuple[str, str]:
    """Move ``champion`` back to ``previous``; returns (from, to). Raises RegistryError without one."""
    client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
    name = p.mlflow.registered_model
    with lock_for(p):
        champion, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
        if previous is None or champion is None:
            raise RegistryError(f"{name} has no `previous` version to roll back to (champion: {champion or 'none'})")
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.delete_registered_model_alias(name, PREVIOUS)
        client.set_model_version_tag(name, champion, "rolled_back", "true")
    return champion, previous


def versions(p: Params) -> list[VersionRow]:
    """Every version of the registered model, newest first, with its aliases and tags."""
    client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
    name = p.mlflow.registered_model
    try:
        aliases = client.get_registered_model(name).aliases  # {alias: version}; search results carry none
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    rows = [VersionRow(v.version, tuple(sorted(a for a, n in aliases.items() if str(n) == str(v.version))),
                       v.run_id or "", v.creation_timestamp, dict(v.tags)) for v in found]  # fmt: skip
    return sorted(rows, key=lambda r: -int(r.version))


def version_tags(scores: dict[str, float], p: Params, data_sha256: str, data_end: float, run_id: str,
                 fingerprint: str) -> dict[str, str]:  # fmt: skip
    """What a version carries as tags: its gate metrics, data hash and window, run id, bundle fingerprint.

    ``data.end`` (epoch seconds of the newest interaction it was trained on) is where the drift
    check's current window starts.
    """
    tags = {mlflow_name(k): f"{v:.6g}" for k, v in scores.items() if k in (p.promotion.metric, *p.promotion.guardrails)}
    window = p.data.window.isoformat() if p.data.window else "all"  # the data "as of" which it was trained
    return tags | {"data.sha256": data_sha256, "data.window": window, DATA_END_TAG: f"{data_end:.0f}", "run_id": run_id,
                   BUNDLE_TAG: fingerprint}  # fmt: skip


def decision_record(decision: Decision, version: str, champion: str | None) -> str:
    return json.dumps({"version": version, "promote": decision.promote, "reason": decision.reason,
                       "champion_after": champion,
                       "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks]},
                      indent=2)  # fmt: skip
