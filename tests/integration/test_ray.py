"""compute.engine=ray against the local path, on a real local Ray cluster (`ray start --head`, 2 CPUs).

Each distributed stage must give the local result: the same ranked lists and metrics, the same
vectors, the same index; data-parallel training must follow the one-process run; a worker killed
mid-stage costs a retry, not a different result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bertrec.compute.engine import RayEngine, engine_for, parts
from bertrec.data.split import split_loo
from bertrec.model.index import read_index, write_index
from bertrec.model.scorer import build_towers
from bertrec.model.train import train
from bertrec.ranking.baselines import ItemKNN, Popular
from bertrec.ranking.evaluate import evaluate_split
from bertrec.ranking.scoring import Scorer

from builders import cyclic_dataset, tiny_model

pytestmark = pytest.mark.integration

# The DDP runs: a cyclic log large enough for ~2k windows an epoch, full softmax, no dropout.
DDP_DATA = {"n_users": 200, "n_items": 80, "length": 30}
DDP_EPOCHS = 4


@pytest.fixture(scope="module")
def ray_cluster_root():
    """A real local Ray cluster (head node, 2 CPUs) for this module, torn down after it: (address, session root).

    Its session folder is short and outside pytest's tree: Ray's socket paths must stay under 107 bytes.
    """
    import tempfile

    from servers import ray_cluster

    with tempfile.TemporaryDirectory(prefix="ray-") as root, ray_cluster(Path(root)) as address:
        yield address, Path(root)


@pytest.fixture(scope="module")
def ray_address(ray_cluster_root) -> str:
    return ray_cluster_root[0]


def worker_logs(root: Path) -> str:
    """Everything the cluster's worker processes wrote to their log files so far."""
    files = {p.resolve() for p in root.glob("session_2*/logs/**/*worker*") if p.is_file()}  # not session_latest
    return "".join(p.read_text(errors="replace") for p in sorted(files))


def ray_params(make_params, address: str, *extra: str):
    return make_params("compute.engine=ray", f"compute.address={address}", "compute.workers=2", *extra)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_encoder, ray_cluster_root):
    """The same training run in one process (batch 32) and on 2 Ray Train workers (16 each), one of them
    SIGKILLed once Ray Train has recorded a checkpoint: (params, local result, Ray result, killed pids, logs)."""
    from bertrec.compute.train import train_on_ray
    from bertrec.config import load_params

    from conftest import paths_under

    address, cluster_root = ray_cluster_root
    root = tmp_path_factory.mktemp("ddp")
    data = cyclic_dataset(**DDP_DATA)
    split = split_loo(data)
    sets = [
        *paths_under(root),
        *tiny_model(tiny_encoder),
        "train.batch_size=32",
        f"train.epochs={DDP_EPOCHS}",
        "train.patience=50",
        "train.loss=full",
        "compute.engine=ray",
        f"compute.address={address}",
        "compute.workers=2",
    ]
    params = load_params(root / "absent.yaml", sets)
    local = train(params, split, data.items, root / "local")
    storage, killed = root / "ray" / "ray", []
    earlier = set(training_workers())  # processes of earlier runs that may still be exiting

    def kill_a_worker_after_a_checkpoint() -> None:
        # A checkpoint's folder appears before Ray Train has recorded it; its snapshot lists the recorded ones.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not recorded_checkpoints(storage):
            time.sleep(0.02)
        workers = [pid for pid in training_workers() if pid not in earlier]
        if workers:
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])

    killer = threading.Thread(target=kill_a_worker_after_a_checkpoint, daemon=True)
    killer.start()
    distributed = train_on_ray(params, split, data.items, root / "ray", RayEngine(params.compute))
    killer.join(timeout=5)
    return params, local, distributed, killed, worker_logs(cluster_root)


def test_parts_cover_the_range_in_order():
    assert parts(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert parts(2, 4) == [(0, 1), (1, 2)]
    assert [b - a for a, b in parts(1001, 2)] == [500, 501]


def test_an_unreachable_cluster_is_a_clear_error(make_params):
    import ray

    from bertrec.errors import ConfigError

    ray.shutdown()  # a fresh connection attempt
    params = make_params("compute.engine=ray", "compute.address=127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"compute.address=127.0.0.1:1: no Ray cluster answers"):
        engine_for(params.compute)


class DiesOnce(Scorer):
    """Ranks like its inner scorer; the first process to use it (marked by a file) dies instead."""

    def __init__(self, inner: Scorer, marker: Path) -> None:
        self.inner, self.marker, self.name = inner, marker, inner.name

    def fit(self, train):
        self.inner.fit(train)
        return self

    def score(self, histories):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.score(histories)


def test_sharded_ranking_gives_the_local_metrics_and_lists_even_when_a_worker_dies(
    make_params, tiny_encoder, ray_address, tmp_path
):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    # Given baselines and an untrained tiny two-tower model on the cyclic log, and an itemknn whose
    # first ranking process dies (SIGKILL) before it answers
    data = cyclic_dataset(n_users=120)
    split = split_loo(data)
    params = ray_params(make_params, ray_address, *tiny_model(tiny_encoder))
    tower = build_towers(params, split, data.items)
    marker = tmp_path / "died"
    local = evaluate_split(
        [Popular(), ItemKNN(neighbours=20), tower], split, data.items, (10, 20), 32, tmp_path / "local"
    )
    # When they are evaluated with users sharded over 2 Ray workers
    engine = engine_for(params.compute)
    scorers = [Popular(), DiesOnce(ItemKNN(neighbours=20), marker), tower]
    sharded = evaluate_split(scorers, split, data.items, (10, 20), 32, tmp_path / "ray", engine)
    # Then the dead worker's task ran again elsewhere, and every metric of every model and target is
    # exactly the local one, and so is every list
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    assert sharded == local
    for name in ("popular", "itemknn", "bertrec"):
        for target in ("valid", "test"):
            a = (tmp_path / "local" / "loo" / f"{name}.{target}.parquet").read_bytes()
            assert a == (tmp_path / "ray" / "loo" / f"{name}.{target}.parquet").read_bytes()
    port = ray_address.rpartition(":")[2]  # Ray names the head by the node's IP, not the loopback one we gave
    assert re.fullmatch(rf"Ray at [\d.]+:{port}, 2 workers x 1 CPU", engine.where())


def test_a_frozen_encoders_features_on_ray_data_equal_the_local_ones(tiny_encoder, make_params, ray_address, tmp_path):
    from bertrec.model.encoder import TextEncoder
    from bertrec.model.features import catalogue_features

    # Given the catalogue's texts and a frozen encoder (the feature cache train and text-zero-shot read;
    # the item tower's path through Ray Data runs in the embed stage's test below)
    texts = cyclic_dataset(n_items=300).items["text"].tolist()
    encoder = TextEncoder.load(str(tiny_encoder), device="cpu")
    engine = engine_for(ray_params(make_params, ray_address).compute)
    # When 2 Ray Data actors encode them into the cache
    cached = catalogue_features(encoder, texts, 64, tmp_path / "cache", "key", engine)
    # Then the cache file holds the features this process computes, row for row
    assert (tmp_path / "cache" / "text_features" / "key.npy").exists()
    assert cached.shape == (300, encoder.model.config.hidden_size)
    assert np.array_equal(cached, catalogue_features(encoder, texts, 64))


def test_switching_to_ray_reruns_nothing_and_the_embed_stage_writes_the_local_vectors(
    project_copy, ray_address, monkeypatch
):
    from bertrec.config import apply_overrides
    from bertrec.model.layout import EMBEDDINGS
    from bertrec.model.vectors import VECTORS

    from builders import dvc, run_steps

    # Given a built project (trained, embedded, indexed and evaluated in one process by `dvc repro`)
    root = project_copy()
    bundle = root / "outputs" / "bundle"
    vectors = np.load(bundle / EMBEDDINGS / VECTORS)
    # When its params switch to the Ray cluster, nothing is out of date: the engine is no stage's param
    apply_overrides(root / "params.yaml", ["compute.engine=ray", f"compute.address={ray_address}"])
    assert "up to date" in dvc(root, "status", "embed", "index", "evaluate")
    # and when the embed stage runs again (the command dvc.yaml runs; in this process, which is
    # already a driver of the cluster: a new process would import torch again), it says where it
    # ran, and the item tower's vectors from the frozen features are the local run's, bit for bit
    monkeypatch.chdir(root)
    output = run_steps(["--params", str(root / "params.yaml")], ("embed",))["embed"]
    assert re.search(r"embed: the item tower over .* on Ray at [\d.]+:\d+, 2 workers x 1 CPU", output), output
    assert float(np.abs(np.load(bundle / EMBEDDINGS / VECTORS) - vectors).max()) == 0.0


@pytest.mark.parametrize("factory", ["IVF32,PQ16x4fs,RFlat", "IVF32,Flat", "SQ8", "Flat"])
def test_an_index_filled_in_parts_is_the_local_index(make_params, ray_address, tmp_path, factory):
    # Given 6,000 unit vectors and user-like queries
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:300] + 0.3 * rng.standard_normal((300, 16)).astype(np.float32)
    engine = engine_for(ray_params(make_params, ray_address).compute)
    # When the index is built in one process and filled by 2 Ray workers
    local = write_index(vectors, tmp_path / "local", factory, 300, queries)
    sharded = write_index(vectors, tmp_path / "ray", factory, 300, queries, engine)
    # Then recall, search settings and every search result are the same
    assert sharded == local
    a, _ = read_index(tmp_path / "local")
    b, _ = read_index(tmp_path / "ray")
    assert b.ntotal == 6000
    assert np.array_equal(a.search(queries, 10)[1], b.search(queries, 10)[1])


def test_data_parallel_training_follows_the_one_process_run(ddp_runs):
    _, local, distributed, _, _ = ddp_runs
    # Then 2 workers with batch 16 each follow 1 process with batch 32: the epochs, the final
    # validation NDCG@10 within 2 %, and each epoch's loss within 2 % from the second on
    assert [e.epoch for e in distributed.epochs] == [e.epoch for e in local.epochs] == list(range(1, DDP_EPOCHS + 1))
    final_local, final_ray = local.epochs[-1].valid["NDCG@10"], distributed.epochs[-1].valid["NDCG@10"]
    assert abs(final_ray - final_local) <= 0.02 * final_local
    for a, b in zip(local.epochs[1:], distributed.epochs[1:], strict=True):
        assert abs(b.loss - a.loss) <= 0.02 * a.loss, (a, b)
    assert local.best_valid["NDCG@10"] > 0.5  # it learnt the cycle: the comparison is of a real run


def training_workers() -> list[int]:
    """PIDs of the live Ray Train worker processes on this machine (by their process title)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::RayTrainWorker"):
            found.append(int(proc.name))
    return sorted(found)


def recorded_checkpoints(storage: Path) -> list[str]:
    """The checkpoints Ray Train has recorded for the run under ``storage`` (its checkpoint manager's snapshot)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return [c["checkpoint_dir_name"] for c in json.loads(snapshot.read_text())["checkpoint_results"]]
        except (OSError, ValueError, KeyError):
            return []  # being written
    return []


def test_a_training_worker_killed_mid_run_resumes_from_the_last_checkpoint(ddp_runs):
    _, local, resumed, killed, logs = ddp_runs
    # Given the 2-worker run of ddp_runs, one of whose workers was SIGKILLed after a recorded checkpoint
    assert killed, "no training worker was killed: the run ended before its first checkpoint"
    assert killed[0] not in training_workers()
    # Then Ray Train restarted the group, every rank resumed from that checkpoint (not from scratch) ...
    resumes = re.findall(r"resumed from \S+ \(epoch (\d+)\)", logs)
    assert len(resumes) >= 2 and all(1 <= int(e) < DDP_EPOCHS for e in resumes), resumes
    # ... and the run ended as the one-process run did: every epoch, the same best epoch and top-10
    # metrics (ranks 11-20, where the learnt cycle leaves near-ties, may swap), weights equal up to the
    # float rounding that epochs of AdamW accumulate between summing a batch on 1 rank or 2 (8e-4 after 6)
    assert [e.epoch for e in resumed.epochs] == list(range(1, DDP_EPOCHS + 1))
    assert resumed.best_epoch == local.best_epoch
    for metric in ("NDCG@10", "Hit@10", "MRR@10"):
        assert resumed.best_valid[metric] == pytest.approx(local.best_valid[metric], abs=1e-6)
    a, b = local.scorer.state_dict(), resumed.scorer.state_dict()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 2e-3, worst
