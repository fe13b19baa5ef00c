"""Pure helpers of tracking and plotting: metric names, curves, popularity deciles, bundle fingerprints."""

from __future__ import annotations

import numpy as np

from bertrec.mlops.plots import popularity_deciles, popularity_shares
from bertrec.mlops.registry import bundle_fingerprint
from bertrec.mlops.tracking import curve_entries, dvc_hash, metric_entries, mlflow_name


def test_metric_names_are_valid_for_mlflow():
    from mlflow.utils.validation import validate_param_and_metric_name

    entries = metric_entries({"test": {"NDCG@10": 0.1, "TailHit@20": 0.2}}, "cold_items", "baselines/itemknn/")
    assert entries == {
        "baselines/itemknn/cold_items/test/NDCG_at_10": 0.1,
        "baselines/itemknn/cold_items/test/TailHit_at_20": 0.2,
    }
    assert all(validate_param_and_metric_name(k) for k in entries)
    assert mlflow_name("loo/test/NDCG@10") == "loo/test/NDCG_at_10"


def test_curves_have_one_point_per_epoch():
    epochs = [{"epoch": e, "loss": 5.0 - e, "seconds": 1.0, "valid": {"NDCG@10": 0.1 * e}} for e in (1, 2, 3)]
    points = curve_entries(epochs)
    assert [(v, s) for k, v, s in points if k == "valid/NDCG_at_10"] == [(0.1, 1), (0.2, 2), (0.30000000000000004, 3)]
    assert [s for k, _, s in points if k == "train/loss"] == [1, 2, 3]


def test_popularity_shares_match_a_loop():
    # Given 20 items with random popularity and random top-5 lists
    rng = np.random.default_rng(0)
    popularity = rng.integers(0, 50, size=20)
    topk = rng.integers(0, 20, size=(30, 5))
    topk[0, -1] = -1  # an empty slot is not counted
    # Then each decile's share equals a direct count over items ranked by popularity (ties by index)
    ranked = sorted(range(20), key=lambda i: (-popularity[i], i))
    decile_of = {item: rank * 10 // 20 for rank, item in enumerate(ranked)}
    picked = [i for i in topk.ravel() if i >= 0]
    expected = np.array([sum(decile_of[i] == d for i in picked) for d in range(10)]) / len(picked)
    assert np.allclose(popularity_shares(topk, popularity), expected)
    assert popularity_deciles(popularity)[ranked[0]] == 0 and popularity_deciles(popularity)[ranked[-1]] == 9


def test_fingerprint_ignores_run_records_but_not_weights(tmp_path):
    for part, name in (("model", "weights.safetensors"), ("model", "training.json"), ("index", "index.faiss")):
        (tmp_path / part).mkdir(exist_ok=True)
        (tmp_path / part / name).write_bytes(b"x")
    first = bundle_fingerprint(tmp_path)
    (tmp_path / "model" / "training.json").write_bytes(b"timings changed")
    assert bundle_fingerprint(tmp_path) == first
    (tmp_path / "model" / "weights.safetensors").write_bytes(b"y")
    assert bundle_fingerprint(tmp_path) != first


def test_fingerprint_counts_the_encoder_by_its_sha_inside_or_referenced(tmp_path):
    import json

    from bertrec.mlops.encoders import EncoderRef, encoder_sha256, is_frozen, write_ref

    # Given a bundle with its encoder inside, trained with a frozen encoder
    full, referenced = tmp_path / "full", tmp_path / "referenced"
    for bundle in (full, referenced):
        (bundle / "model").mkdir(parents=True)
        (bundle / "model" / "weights.safetensors").write_bytes(b"towers")
        (bundle / "model" / "training.json").write_text(json.dumps({"params": {"train.freeze_layers": "all"}}))
    (full / "model" / "encoder").mkdir()
    (full / "model" / "encoder" / "model.safetensors").write_bytes(b"bert")
    sha = encoder_sha256(full / "model" / "encoder")
    assert is_frozen(full) and not is_frozen(referenced)
    # When another holds a reference to that encoder instead, both have the same fingerprint
    write_ref(EncoderRef(sha, "runs:/r/encoder", 4, 1, "tiny"), referenced / "model" / "encoder.ref.json")
    assert bundle_fingerprint(referenced) == bundle_fingerprint(full)
    # And a change of the encoder's bytes, or a fine-tuned encoder, changes what counts
    (full / "model" / "encoder" / "model.safetensors").write_bytes(b"BERT")
    assert bundle_fingerprint(referenced) != bundle_fingerprint(full)
    (full / "model" / "training.json").write_text(json.dumps({"params": {"train.freeze_layers": 2}}))
    assert not is_frozen(full)


def test_a_reference_without_its_sha_is_refused_naming_the_file(tmp_path):
    import pytest

    from bertrec.errors import RegistryError
    from bertrec.mlops.encoders import read_ref

    path = tmp_path / "encoder.ref.json"
    path.write_text('{"uri": "runs:/r/encoder", "size": 1, "files": 1, "source": "tiny"}')
    with pytest.raises(RegistryError, match=f"{path}: field 'sha256' is missing"):
        read_ref(path)


def test_dvc_hash_reads_the_lock_file(tmp_path):
    lock = tmp_path / "dvc.lock"
    assert dvc_hash(tmp_path / "data", lock) is None
    lock.write_text("schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared\n      md5: abc.dir\n")
    assert dvc_hash("data/prepared", lock) == "abc.dir"
