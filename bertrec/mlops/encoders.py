"""Encoders stored once in MLflow, shared by the versions that use them unchanged.

With ``train.freeze_layers: all`` (the default) every bundle carries the same encoder folder (the
Hugging Face weights, the tokenizer, ``bertrec.json``: ~90 MB for all-MiniLM-L6-v2). Instead of
logging it again with each version, :func:`store_encoder` stores it once, content-addressed: the
artifacts (``encoder/``) of one run of the experiment ``<mlflow.experiment>-encoders``, tagged
``bertrec.kind=encoder`` and ``encoder.sha256`` (:func:`encoder_sha256`: names and contents of its
files), found again by that tag. The version then carries ``model/encoder.ref.json``
(:class:`EncoderRef`) in place of ``model/encoder/``. A fine-tuned encoder stays inside its version.

Loading (the pyfunc model, :func:`bertrec.mlops.registry.download_version`) calls
:func:`resolve_encoder`: the encoder is downloaded once into the local cache
(:func:`bertrec.model.layout.encoder_cache`, ``$BERTREC_ENCODER_CACHE``) under its sha256, and
checked against it on every load; a corrupt cached copy is downloaded again. It needs only the
tracking URI (``runs:/`` URIs), as ``models:/`` URIs do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from bertrec.errors import RegistryError
from bertrec.io import atomic_file
from bertrec.model.layout import ENCODER, ENCODER_REF, MODEL, TRAINING, encoder_cache

log = logging.getLogger(__name__)

EXPERIMENT_SUFFIX = "-encoders"  # encoders live in <mlflow.experiment>-encoders
KIND_TAG, KIND = "bertrec.kind", "encoder"
SHA_TAG = "encoder.sha256"
SOURCE_TAG = "encoder.source"
ARTIFACT = "encoder"  # the encoder folder, in its run's artifacts


@dataclass(frozen=True)
class EncoderRef:
    """What ``model/encoder.ref.json`` holds: the encoder's identity and where it is stored."""

    sha256: str  # encoder_sha256 of the folder
    uri: str  # runs:/<run_id>/encoder
    size: int  # bytes, all files
    files: int
    source: str  # the model.encoder it was loaded from (a Hugging Face id or a folder)


def encoder_sha256(folder: Path) -> str:
    """sha256 over the names (relative, sorted), sizes and contents of every file under ``folder``."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def is_frozen(bundle: Path) -> bool:
    """Whether ``bundle`` carries an encoder that training left as it was loaded (``train.freeze_layers: all``)."""
    model = Path(bundle) / MODEL
    if not (model / ENCODER).is_dir():
        return False
    params = json.loads((model / TRAINING).read_text()).get("params", {})
    return params.get("train.freeze_layers") == "all"


def write_ref(ref: EncoderRef, path: Path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(asdict(ref), indent=2, sort_keys=True) + "\n")


def read_ref(path: Path) -> EncoderRef:
    """The reference in ``path``. Raises RegistryError naming the file and the field that is missing."""
    try:
        fields = json.loads(Path(path).read_text())
        return EncoderRef(**{name: fields[name] for name in EncoderRef.__dataclass_fields__})
    except KeyError as missing:
        fields_ = list(EncoderRef.__dataclass_fields__)
        raise RegistryError(f"{path}: field {missing} is missing; expected {fields_}") from None
    except ValueError as exc:
        raise RegistryError(f"{path}: not a JSON encoder reference ({exc})") from None


def artifact_sizes(artifact_uri: str, tracking_uri: str | None = None) -> dict[str, int]:
    """``{path: bytes}`` of every file under ``artifact_uri`` (paths relative to it), listed recursively.

    ``tracking_uri`` resolves ``runs:/`` and ``mlflow-artifacts:`` URIs (default: MLflow's current one).
    """
    repo = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    sizes: dict[str, int] = {}
    todo: list[str | None] = [None]
    while todo:
        for info in repo.list_artifacts(todo.pop()):
            if info.is_dir:
                todo.append(info.path)
            else:
                sizes[info.path] = int(info.file_size or 0)
    return sizes


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def find_encoder(client: MlflowClient, experiment: str, sha256: str) -> str | None:
    """The run id of the oldest finished upload of encoder ``sha256`` in ``experiment``, if any."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.`{SHA_TAG}` = '{sha256}' and tags.`{KIND_TAG}` = '{KIND}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def store_encoder(client: MlflowClient, experiment: str, folder: Path, source: str) -> EncoderRef:
    """The reference of encoder ``folder`` in MLflow, uploaded first when no run of ``experiment`` has it.

    Call it under the registry lock, so that two registrations do not both upload it. The run is
    marked FINISHED only once every file has arrived: a killed upload is never found again.
    Raises RegistryError when the upload does not arrive whole.
    """
    folder = Path(folder)
    sha = encoder_sha256(folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    run_id = find_encoder(client, experiment, sha)
    if run_id is not None:
        log.info("encoder %s is stored in run %s already; nothing uploaded", sha[:12], run_id)
    else:
        tags = {KIND_TAG: KIND, SHA_TAG: sha, SOURCE_TAG: source, "mlflow.runName": f"encoder-{sha[:12]}"}
        run_id = client.create_run(_experiment_id(client, experiment), tags=tags).info.run_id
        try:
            client.log_artifacts(run_id, str(folder), ARTIFACT)
            arrived = artifact_sizes(f"runs:/{run_id}/{ARTIFACT}", client.tracking_uri)
            if (len(arrived), sum(arrived.values())) != (len(files), size):
                raise RegistryError(
                    f"encoder {sha} uploaded to run {run_id}: {len(arrived)} files, {sum(arrived.values())} bytes "
                    f"arrived of {len(files)} files, {size} bytes"
                )
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        log.info("encoder %s stored in run %s (%.1f MB)", sha[:12], run_id, size / 1e6)
    return EncoderRef(sha, f"runs:/{run_id}/{ARTIFACT}", size, len(files), source)


def fetch_encoder(ref: EncoderRef, cache: Path | None = None) -> Path:
    """The folder of the encoder ``ref`` names, in the local cache: downloaded once, its sha256 checked each call.

    A cached copy whose sha256 differs is removed and downloaded again. ``cache``: default
    :func:`~bertrec.model.layout.encoder_cache`. Raises RegistryError naming the sha256 and the URI
    when the download fails or does not match it.
    """
    root = Path(cache) if cache is not None else encoder_cache()
    target = root / ref.sha256
    if target.is_dir():
        found = encoder_sha256(target)
        if found == ref.sha256:
            return target
        log.warning("cached encoder %s has sha256 %s; downloading it again from %s", target, found, ref.uri)
        shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{ref.sha256[:12]}-", dir=root) as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=tmp))
        except Exception as exc:  # MlflowException, OSError: the run or its files are gone or unreachable
            raise RegistryError(f"encoder sha256 {ref.sha256} cannot be downloaded from {ref.uri}: {exc}") from None
        found = encoder_sha256(local)
        if found != ref.sha256:
            raise RegistryError(
                f"encoder downloaded from {ref.uri} has sha256 {found}, not the {ref.sha256} the version names: "
                "the stored copy is corrupt or incomplete"
            )
        try:
            os.replace(local, target)
        except OSError:  # another process put it there first
            if not target.is_dir():
                raise
    return target


def resolve_encoder(bundle: Path) -> Path | None:
    """Make the shared encoder of ``bundle`` (``model/encoder.ref.json``) loadable: fetched into the cache.

    Returns its folder; None for a bundle that carries its own encoder (or has none), which loads as it is.
    """
    ref = Path(bundle) / MODEL / ENCODER_REF
    if (Path(bundle) / MODEL / ENCODER).exists() or not ref.exists():
        return None
    return fetch_encoder(read_ref(ref))
