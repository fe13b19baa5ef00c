"""The MLflow model registry, and nothing else: versions, their tags and files, the aliases.

One registered model (``mlflow.registered_model``) whose versions are pyfunc models carrying the
whole bundle (encoder, towers, embeddings, FAISS index, item table), so a model is never served
with an index built by another. A frozen encoder is the exception: it is stored once and each
version carries a reference to it (:mod:`bertrec.mlops.encoders`). Aliases: every new version is
``challenger``; on promotion the old champion becomes ``previous`` and the new version ``champion``.
Deciding who is champion is the gate's (:mod:`bertrec.mlops.gate`); this module moves the aliases
it is told to, under a lock.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import bertrec
from bertrec.config import Params
from bertrec.errors import RegistryError
from bertrec.mlops.encoders import (
    EXPERIMENT_SUFFIX,
    EncoderRef,
    artifact_sizes,
    encoder_sha256,
    is_frozen,
    read_ref,
    resolve_encoder,
    store_encoder,
    write_ref,
)
from bertrec.mlops.tracking import mlflow_name
from bertrec.model.index import INFO_FILE
from bertrec.model.layout import EMBEDDINGS, ENCODER, ENCODER_REF, INDEX, MODEL, TRAINING
from bertrec.model.vectors import STATS_FILE
from bertrec.serve.pyfunc import BUNDLE_ARTIFACT, DEFAULT_K, MODEL_CODE, SIGNATURE, input_example, pip_requirements

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
BUNDLE_TAG = "bundle.sha256"
DATA_END_TAG = "data.end"  # epoch seconds of the newest interaction a version was trained on
# Files whose content is the model; run records with timings (training.json, ...) are left out.
FINGERPRINT_SKIP = {TRAINING, STATS_FILE, INFO_FILE}


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: tuple[str, ...]
    run_id: str
    created: int  # ms since the epoch
    tags: dict[str, str]


@dataclass(frozen=True)
class VersionSize:
    """What a registered version stores: its own files, and the shared encoder it names (stored once)."""

    files: dict[str, int]  # path under the version's model -> bytes
    encoder: EncoderRef | None  # None when the version carries its encoder (or has none)

    @property
    def total(self) -> int:
        return sum(self.files.values())


def bundle_fingerprint(bundle: Path) -> str:
    """sha256 over the bundle's model files (names and contents), timings excluded.

    The encoder counts by its identity, its :func:`~bertrec.mlops.encoders.encoder_sha256`: a
    bundle with ``model/encoder/`` and one with the ``model/encoder.ref.json`` naming it have the same
    fingerprint, so a version downloaded from the registry has that of the bundle it was logged from.
    """
    bundle = Path(bundle)
    model = bundle / MODEL
    digest = hashlib.sha256()
    for path in sorted(p for part in (MODEL, EMBEDDINGS, INDEX) for p in (bundle / part).rglob("*")):
        encoder_file = model / ENCODER in path.parents or path == model / ENCODER_REF  # counted below, by sha
        if path.is_file() and path.name not in FINGERPRINT_SKIP and not encoder_file:
            digest.update(str(path.relative_to(bundle)).encode())
            digest.update(path.read_bytes())
    if (model / ENCODER).is_dir():
        digest.update(f"{MODEL}/{ENCODER}".encode() + encoder_sha256(model / ENCODER).encode())
    elif (model / ENCODER_REF).exists():
        digest.update(f"{MODEL}/{ENCODER}".encode() + read_ref(model / ENCODER_REF).sha256.encode())
    return digest.hexdigest()


# What MLflow answers for a registered model that does not exist, and for an alias it does not have.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def champion_of(client: MlflowClient, name: str, uri: str, reader: str = ""):
    """The model version the ``champion`` alias names, or None when there is none (no model, no alias yet).

    Raises:
        RegistryError: the registry cannot be read (an outage is not "no champion"); ``reader`` prefixes it.
    """
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND:
            raise RegistryError(f"{reader}cannot read the champion of {name} at {uri}: {exc}") from None
        return None


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


def download_version(client: MlflowClient, name: str, version: str, into: Path) -> Path:
    """Download a version's bundle into ``into`` (a shared encoder into the encoder cache); returns the bundle."""
    root = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(into))
    bundle = Path(root) / "artifacts" / BUNDLE_ARTIFACT
    resolve_encoder(bundle)
    return bundle


def version_size(client: MlflowClient, name: str, version: str) -> VersionSize:
    """The files a registered version stores in the artifact store, and the shared encoder it names."""
    uri = client.get_model_version_download_uri(name, version)
    files = artifact_sizes(uri, client.tracking_uri)
    ref_path = f"artifacts/{BUNDLE_ARTIFACT}/{MODEL}/{ENCODER_REF}"
    if ref_path not in files:
        return VersionSize(files, None)
    with tempfile.TemporaryDirectory(prefix="bertrec-ref-") as tmp:
        local = mlflow.artifacts.download_artifacts(f"{uri}/{ref_path}", dst_path=tmp, tracking_uri=client.tracking_uri)
        return VersionSize(files, read_ref(Path(local)))


def set_aliases(client: MlflowClient, name: str, version: str, champion: str | None, promote: bool) -> str | None:
    """Make ``version`` the challenger and, when ``promote``, the champion (the old one ``previous``).

    Returns the champion afterwards.
    """
    if promote:
        if champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion)
        client.set_registered_model_alias(name, CHAMPION, version)
        champion = version
    client.set_registered_model_alias(name, CHALLENGER, version)
    return champion


def lock_for(p: Params) -> FileLock:
    key = hashlib.sha1(f"{p.mlflow.tracking_uri}|{p.mlflow.registered_model}".encode()).hexdigest()[:16]
    path = Path(p.paths.cache) / "locks" / f"registry-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=p.promotion.lock_timeout)


def log_bundle(p: Params, example_history: list[str]) -> str:
    """Log the bundle as a pyfunc model (models-from-code, no pickle) in the active run; returns its model URI.

    A frozen encoder (with ``mlflow.share_encoder``) is stored once, under the registry lock, and the
    version carries ``model/encoder.ref.json`` in its place (:mod:`bertrec.mlops.encoders`).
    """
    bundle = Path(p.paths.bundle)
    ref = None
    if p.mlflow.share_encoder and is_frozen(bundle):
        client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
        source = str(json.loads((bundle / MODEL / TRAINING).read_text())["params"].get("model.encoder", ""))
        with lock_for(p):  # two registrations of the same encoder upload it once
            ref = store_encoder(client, p.mlflow.experiment + EXPERIMENT_SUFFIX, bundle / MODEL / ENCODER, source)
    with tempfile.TemporaryDirectory(prefix="bertrec-bundle-") as tmp:
        staged = Path(tmp) / BUNDLE_ARTIFACT
        for part in (MODEL, EMBEDDINGS, INDEX):
            skip = (lambda folder, names: [ENCODER] if Path(folder) == bundle / MODEL else []) if ref else None
            shutil.copytree(bundle / part, staged / part, ignore=skip)
        if ref is not None:
            write_ref(ref, staged / MODEL / ENCODER_REF)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={BUNDLE_ARTIFACT: str(staged)},
            signature=SIGNATURE,
            input_example=(input_example(example_history), {"k": DEFAULT_K}),
            pip_requirements=pip_requirements(),
            code_paths=[str(Path(bertrec.__file__).parent)],
        )
    return info.model_uri


def register_version(client: MlflowClient, p: Params, model_uri: str, tags: dict[str, str]) -> str:
    """Register ``model_uri``; check the version is READY and its index arrived. Returns the version."""
    name = p.mlflow.registered_model
    version = mlflow.register_model(model_uri, name, await_registration_for=600, tags=tags)
    status = client.get_model_version(name, version.version).status
    if status != "READY":
        raise RegistryError(f"version {version.version} of {name} is {status}, not READY; no alias was changed")
    listed = mlflow.artifacts.list_artifacts(
        artifact_uri=f"{client.get_model_version_download_uri(name, version.version)}/artifacts/bundle/{INDEX}"
    )
    if not any(Path(f.path).name == "index.faiss" for f in listed):
        raise RegistryError(
            f"version {version.version} of {name} has no FAISS index in its artifacts; no alias was changed"
        )
    return str(version.version)


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
    rows = [
        VersionRow(
            v.version,
            tuple(sorted(a for a, n in aliases.items() if str(n) == str(v.version))),
            v.run_id or "",
            v.creation_timestamp,
            dict(v.tags),
        )
        for v in found
    ]
    return sorted(rows, key=lambda r: -int(r.version))


def version_tags(
    scores: dict[str, float], p: Params, data_sha256: str, data_end: float, run_id: str, fingerprint: str
) -> dict[str, str]:
    """What a version carries as tags: its gate metrics, data hash and window, run id, bundle fingerprint.

    ``data.end`` (epoch seconds of the newest interaction it was trained on) is where the drift
    check's current window starts.
    """
    tags = {mlflow_name(k): f"{v:.6g}" for k, v in scores.items() if k in (p.promotion.metric, *p.promotion.guardrails)}
    window = p.data.window.isoformat() if p.data.window else "all"  # the data "as of" which it was trained
    return tags | {
        "data.sha256": data_sha256,
        "data.window": window,
        DATA_END_TAG: f"{data_end:.0f}",
        "run_id": run_id,
        BUNDLE_TAG: fingerprint,
    }
