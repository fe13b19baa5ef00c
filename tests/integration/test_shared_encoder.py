"""Versions that share their frozen encoder, against a real `mlflow server`: stored once, resolved on load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from bertrec.errors import RegistryError
from bertrec.mlops.encoders import (
    EXPERIMENT_SUFFIX,
    EncoderRef,
    encoder_sha256,
    fetch_encoder,
    find_encoder,
)
from bertrec.mlops.registry import (
    BUNDLE_TAG,
    bundle_fingerprint,
    download_version,
    log_bundle,
    register_version,
    version_size,
)
from bertrec.model.layout import ENCODER, ENCODER_CACHE_ENV, MODEL
from bertrec.serve.recommender import Recommender

from versions import HISTORY, given_champion, params_of

pytestmark = pytest.mark.integration

OWN = "artifacts/bundle/model/"  # where a version's bundle model files are, under its model's artifacts


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_versions_with_the_same_frozen_encoder_store_it_once(quality_bundles, medium_version, strong_version):
    root, bundles, uri = quality_bundles
    client = MlflowClient(uri, uri)
    encoder = root / "outputs-strong" / "bundle" / MODEL / ENCODER
    sha = encoder_sha256(encoder)
    # Given two bundles trained apart with the same frozen encoder: the same encoder folder
    assert encoder_sha256(root / "outputs-medium" / "bundle" / MODEL / ENCODER) == sha
    # When both are registered (medium_version, strong_version), the encoder is one run of the encoders experiment
    experiment = params_of(bundles["strong"], "any").mlflow.experiment + EXPERIMENT_SUFFIX
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], f"tags.`encoder.sha256` = '{sha}'")
    assert len(runs) == 1 and find_encoder(client, experiment, sha) == runs[0].info.run_id
    # And each version names it and carries no encoder folder of its own
    sizes = [version_size(client, *source) for source in (medium_version, strong_version)]
    for size in sizes:
        assert size.encoder is not None and size.encoder.sha256 == sha
        assert size.encoder.uri == f"runs:/{runs[0].info.run_id}/encoder" and size.encoder.size == _folder_size(encoder)
        assert not [path for path in size.files if path.startswith(OWN + ENCODER + "/")]
    # And a version downloaded from the registry has the fingerprint of the bundle it was logged from
    name, version = strong_version
    local = root / "outputs-strong" / "bundle"
    downloaded = download_version(client, name, version, root / "downloaded-strong")
    assert not (downloaded / MODEL / ENCODER).exists()
    assert bundle_fingerprint(downloaded) == bundle_fingerprint(local)
    assert client.get_model_version(name, version).tags[BUNDLE_TAG] == bundle_fingerprint(local)


def test_a_version_with_its_encoder_inside_weighs_the_encoder_more_and_still_loads(quality_bundles, strong_version):
    root, bundles, uri = quality_bundles
    client = MlflowClient(uri, uri)
    # Given the strong bundle logged the way versions were before: share_encoder off, the encoder inside
    p = params_of([*bundles["strong"], "--set", "mlflow.share_encoder=false"], "encoder-inside")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name="encoder-inside"):
        version = register_version(client, p, log_bundle(p, HISTORY), {})
    inside, shared = version_size(client, "encoder-inside", version), version_size(client, *strong_version)
    encoder = root / "outputs-strong" / "bundle" / MODEL / ENCODER
    # Then it carries the encoder's files; the shared version has a reference instead and weighs that much less
    assert inside.encoder is None
    carried = sum(size for path, size in inside.files.items() if path.startswith(OWN + ENCODER + "/"))
    assert carried == _folder_size(encoder) > 0
    assert abs(inside.total - shared.total - carried) < 4096  # the reference file and MLmodel metadata
    # And it loads as before, without the encoder cache
    recommender = Recommender(download_version(client, "encoder-inside", version, root / "downloaded-inside"))
    expected = Recommender(root / "outputs-strong" / "bundle").recommend(HISTORY, 5)
    assert [x.item_id for x in recommender.recommend(HISTORY, 5)] == [x.item_id for x in expected]


def test_a_fresh_process_with_only_the_tracking_uri_loads_the_champion(quality_bundles, strong_version, tmp_path):
    root, _, uri = quality_bundles
    given_champion(uri, strong_version, "fresh-process")
    cache = tmp_path / "encoders"
    # Given a process outside the project whose only knowledge is the tracking URI, and an empty encoder cache
    code = (
        "import json, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/fresh-process@champion')\n"
        f"got = model.predict(pd.DataFrame({{'history': [{HISTORY!r}]}}), params={{'k': 5}})\n"
        "import bertrec\n"  # imported by loading: the package logged with the version
        "result = {'items': list(got['item_ids'][0]), 'scores': list(got['scores'][0]), 'code': bertrec.__file__}\n"
        "print('RESULT', json.dumps(result))\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": uri,
        ENCODER_CACHE_ENV: str(cache),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    answer = json.loads(done.stdout.split("RESULT ", 1)[1])
    # Then it runs the code logged with the version and answers as the full bundle does, from the encoder it cached
    assert Path(__file__).resolve().parents[2] not in Path(answer["code"]).resolve().parents
    expected = Recommender(root / "outputs-strong" / "bundle").recommend(HISTORY, 5)
    assert answer["items"] == [x.item_id for x in expected]
    assert all(abs(a - b.score) < 1e-5 for a, b in zip(answer["scores"], expected, strict=True))
    sha = encoder_sha256(root / "outputs-strong" / "bundle" / MODEL / ENCODER)
    assert [p.name for p in cache.iterdir()] == [sha] and encoder_sha256(cache / sha) == sha


def test_a_corrupt_cached_encoder_is_downloaded_again_and_a_bad_reference_is_refused(
    quality_bundles, strong_version, tmp_path
):
    _, _, uri = quality_bundles
    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)
    ref = version_size(client, *strong_version).encoder
    assert ref is not None
    # Given the encoder in a cache, when one of its files is changed there, the next fetch downloads it again
    folder = fetch_encoder(ref, tmp_path)
    weights = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"corrupt!")
    assert fetch_encoder(ref, tmp_path) == folder and weights.read_bytes() == original
    # When the stored copy does not match the sha256 a version names, loading stops and names both
    wrong = EncoderRef("0" * 64, ref.uri, ref.size, ref.files, ref.source)
    with pytest.raises(RegistryError, match=f"{ref.uri} has sha256 {ref.sha256}, not the {'0' * 64}"):
        fetch_encoder(wrong, tmp_path / "other")
    # When it is gone from the store, the error names the sha256 and where it was
    gone = EncoderRef(ref.sha256, "runs:/0123456789abcdef0123456789abcdef/encoder", ref.size, ref.files, ref.source)
    with pytest.raises(RegistryError, match=f"encoder sha256 {ref.sha256} cannot be downloaded from {gone.uri}"):
        fetch_encoder(gone, tmp_path / "empty")
