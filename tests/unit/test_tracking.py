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


def test_dvc_hash_reads_the_lock_file(tmp_path):
    lock = tmp_path / "dvc.lock"
    assert dvc_hash(tmp_path / "data", lock) is None
    lock.write_text("schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared\n      md5: abc.dir\n")
    assert dvc_hash("data/prepared", lock) == "abc.dir"
