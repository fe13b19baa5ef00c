"""compute.engine=ray against the local path: equality of every distributed stage, and throughput.

One run on a private Ray instance (``--address local``, as many CPUs as this machine; or a cluster's address), over a
synthetic log (`bertrec synth`, prepared and split by the stage code into a scratch project):

- **evaluate**: the default model (all-MiniLM-L6-v2, frozen) ranking every loo user on every
  target, in this process and with users sharded over 1 and 2 Ray workers: metrics equal or not,
  users/s of each;
- **embed**: the catalogue read through the encoder (``train.freeze_layers=0``, the path Ray Data
  is for) here and by 1 and 2 Ray Data actors: the largest difference of any vector component
  (float32), items/s of each;
- **features**: the frozen encoder's features of the same texts (the cache `train` and
  `text-zero-shot` read), here and by 1 and 2 actors: largest difference, items/s;
- **train**: the same run in one process (batch B) and on 2 Ray Train workers (B/2 each; full
  softmax, no dropout): relative difference of the final validation NDCG@10, largest relative
  difference of an epoch's loss from the second epoch on;
- **index**: ``IVF,PQ64x4fs,RFlat`` over clustered unit vectors, built in one process and filled by
  2 workers: recall@10 of each against exact search, seconds of each.

The speed-up of 2 workers is bounded by the machine's cores (2 here); the 1-worker figures show
what Ray costs over the local path. Writes ``bench/reports/distributed.json``.

    python bench/distributed.py                      # the committed report (about 10 minutes on 2 cores)
    python bench/distributed.py --rows 20000 --items 1000 --users 500 --epochs 2 --out /tmp/d.json   # a quick look
    python bench/distributed.py --report             # only rewrite distributed.md and the README from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports" / "distributed.json"


def cpu_name() -> str:
    from encode_speed import cpu_name as name  # bench/ is on sys.path when a bench runs

    return name()


def gpu_name() -> str:
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


def prepare(work: Path, rows: int, items: int, users: int, extra: list[str]):
    """Params of a scratch project under ``work`` holding a prepared, split synthetic log."""
    from bertrec.config import PathsParams, load_params
    from bertrec.data.synth import SynthSpec, generate, write
    from bertrec.steps import fetch, prepare, split

    raw = work / "synth"
    write(generate(SynthSpec(rows=rows, items=items, users=users, seed=0)), raw, "movielens")
    sets = [f"paths.{name}={work / name}" for name in PathsParams.model_fields]
    sets += ["data.source=movielens", f"data.path={raw}", "eval.splits=[loo]", *extra]
    params = load_params(work / "absent.yaml", sets)
    fetch.run(params)
    prepare.run(params)
    split.run(params, ["loo"])
    return params


ADDRESS = ["local"]  # --address: the Ray cluster the runs use


def with_compute(params, workers: int):
    from bertrec.config import ComputeParams

    compute = ComputeParams(engine="ray", address=ADDRESS[0], workers=workers)
    return params.model_copy(update={"compute": compute})


def timed(fn):
    began = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - began


def bench_evaluate(params, data, split) -> dict:
    from bertrec.compute.engine import LocalEngine, RayEngine
    from bertrec.model.scorer import build_towers
    from bertrec.ranking.evaluate import build_cases, evaluate_split, targets

    scorer = build_towers(params, split, data.items)  # untrained: ranking costs the same
    users = sum(len(build_cases(split, t).users) for t in targets(split))
    out, results = {"users_ranked": users}, {}
    for label, engine in [
        ("local", LocalEngine()),
        *[(f"ray_{w}", RayEngine(with_compute(params, w).compute)) for w in (1, 2)],
    ]:
        metrics, seconds = timed(lambda e=engine: evaluate_split([scorer], split, data.items, (10, 20), 1024, None, e))
        results[label] = metrics
        out[f"evaluate_users_per_s_{label}"] = round(users / seconds, 1)
        print(f"evaluate {label}: {seconds:.1f}s, {users / seconds:.0f} users/s", flush=True)
    out["eval_metrics_equal"] = results["ray_1"] == results["local"] and results["ray_2"] == results["local"]
    return out


def bench_embed(params, data, split, n_items: int) -> dict:
    from bertrec.compute.engine import RayEngine
    from bertrec.model.embed import embed_catalogue
    from bertrec.model.scorer import build_towers

    tuned = params.model_copy(update={"train": params.train.model_copy(update={"freeze_layers": 0})})
    scorer = build_towers(tuned, split, data.items)
    items = data.items.iloc[:n_items]
    out, vectors = {"embed_items": len(items)}, {}
    (vectors["local"], _), seconds = timed(lambda: embed_catalogue(scorer, items, params.model.encode_batch_size))
    out["embed_items_per_s_local"] = round(len(items) / seconds, 1)
    print(f"embed local: {seconds:.1f}s", flush=True)
    for w in (1, 2):
        engine = RayEngine(with_compute(params, w).compute)
        run = lambda e=engine: embed_catalogue(scorer, items, params.model.encode_batch_size, engine=e)  # noqa: E731
        (vectors[w], _), seconds = timed(run)
        out[f"embed_items_per_s_ray_{w}"] = round(len(items) / seconds, 1)
        print(f"embed ray {w}: {seconds:.1f}s", flush=True)
    out["embed_max_abs_diff"] = float(max(np.abs(vectors[w] - vectors["local"]).max() for w in (1, 2)))
    return out


def bench_train(params, data, split, work: Path) -> dict:
    from bertrec.compute.engine import RayEngine
    from bertrec.compute.train import train_on_ray
    from bertrec.model.train import train

    local, seconds_local = timed(lambda: train(params, split, data.items, work / "train-local"))
    ray_params = with_compute(params, 2)
    run = lambda: train_on_ray(ray_params, split, data.items, work / "train-ray", RayEngine(ray_params.compute))  # noqa: E731
    distributed, seconds_ray = timed(run)
    a, b = local.epochs[-1].valid["NDCG@10"], distributed.epochs[-1].valid["NDCG@10"]
    losses = [abs(y.loss - x.loss) / x.loss for x, y in zip(local.epochs[1:], distributed.epochs[1:], strict=True)]
    print(f"train local {seconds_local:.0f}s, ray 2 workers {seconds_ray:.0f}s; NDCG@10 {a:.4f} vs {b:.4f}", flush=True)
    return {
        "ddp_epochs": len(local.epochs),
        "ddp_final_ndcg_local": a,
        "ddp_final_ndcg_2_workers": b,
        "ddp_final_ndcg_rel_diff": abs(b - a) / a,
        "ddp_loss_local": [e.loss for e in local.epochs],
        "ddp_loss_2_workers": [e.loss for e in distributed.epochs],
        "ddp_loss_max_rel_diff": max(losses) if losses else None,
        "train_seconds_local": round(seconds_local, 1),
        "train_seconds_ray_2": round(seconds_ray, 1),
    }


def bench_features(params, data, n_items: int) -> dict:
    """A frozen encoder's features of ``n_items`` texts (the feature cache `train` and `text-zero-shot` fill)."""
    from bertrec.compute.engine import RayEngine
    from bertrec.model.encoder import TextEncoder
    from bertrec.model.features import catalogue_features

    encoder = TextEncoder.load(params.model.encoder, params.model.max_length, "cpu")
    texts, batch = data.items["text"].tolist()[:n_items], params.model.encode_batch_size
    local, seconds = timed(lambda: catalogue_features(encoder, texts, batch))
    out = {"features_items_per_s_local": round(len(texts) / seconds, 1)}
    diffs = []
    for w in (1, 2):
        engine = RayEngine(with_compute(params, w).compute)
        features, seconds = timed(lambda e=engine: catalogue_features(encoder, texts, batch, engine=e))
        out[f"features_items_per_s_ray_{w}"] = round(len(texts) / seconds, 1)
        diffs.append(float(np.abs(features.astype(np.float32) - local.astype(np.float32)).max()))
        print(f"features ray {w}: {seconds:.1f}s", flush=True)
    out["features_max_abs_diff"] = max(diffs)  # float16 values, as the cache stores them
    return out


def bench_index(params, n: int, dim: int = 64) -> dict:
    from bertrec.compute.engine import RayEngine
    from bertrec.model.index import ivf_pq_factory, write_index

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(n, 1000, replace=False)] + 0.2 * rng.standard_normal((1000, dim)).astype(np.float32)
    factory = ivf_pq_factory(n, dim)
    engine = RayEngine(with_compute(params, 2).compute)
    with tempfile.TemporaryDirectory() as tmp:
        local, seconds_local = timed(lambda: write_index(vectors, Path(tmp) / "a", factory, 1000, queries))
        sharded, seconds_ray = timed(lambda: write_index(vectors, Path(tmp) / "b", factory, 1000, queries, engine))
    print(f"index {factory}: recall {local.recall_at_10:.4f} / {sharded.recall_at_10:.4f}", flush=True)
    return {
        "index_factory": factory,
        "index_items": n,
        "index_recall_local": local.recall_at_10,
        "index_recall_sharded": sharded.recall_at_10,
        "index_search_local": local.search,
        "index_search_sharded": sharded.search,
        "index_seconds_local": round(seconds_local, 1),
        "index_seconds_ray_2": round(seconds_ray, 1),
    }


def markdown(r: dict) -> str:
    """The report as the README's table."""
    d = r["data"]
    address = r.get("address", "local")
    where = "a private Ray instance" if address == "local" else f"the Ray cluster at {address}"
    rate = "{:,.0f}".format
    lines = [
        f"Measured by `{r['command']}` ({r['seconds'] / 60:.0f} min) on {r['machine']}: a synthetic log of "
        f"{d['rows']:,} rows, {d['items']:,} items, {d['users']:,} users, {where}.",
        "",
        "| check | local | Ray, 1 worker | Ray, 2 workers | equal? |",
        "|---|---|---|---|---|",
        f"| evaluate: users ranked/s ({r['users_ranked']:,} users, loo) | {rate(r['evaluate_users_per_s_local'])} | "
        f"{rate(r['evaluate_users_per_s_ray_1'])} | {rate(r['evaluate_users_per_s_ray_2'])} | "
        f"metrics {'identical' if r['eval_metrics_equal'] else 'DIFFERENT'} |",
        f"| embed: items/s through the encoder ({r['embed_items']:,} items) | {rate(r['embed_items_per_s_local'])} | "
        f"{rate(r['embed_items_per_s_ray_1'])} | {rate(r['embed_items_per_s_ray_2'])} | "
        f"max abs diff {r['embed_max_abs_diff']:.1e} |",
        f"| train/text-zero-shot: frozen features, items/s ({r['embed_items']:,} items) | "
        f"{rate(r['features_items_per_s_local'])} | {rate(r['features_items_per_s_ray_1'])} | "
        f"{rate(r['features_items_per_s_ray_2'])} | max abs diff {r['features_max_abs_diff']:.1e} (float16) |",
        f"| index: `{r['index_factory']}` over {r['index_items']:,} vectors, seconds | {r['index_seconds_local']} | | "
        f"{r['index_seconds_ray_2']} | recall@10 {r['index_recall_local']:.4f} / {r['index_recall_sharded']:.4f} |",
        f"| train: {r['ddp_epochs']} epochs, batch 128 / 2 x 64, seconds | {r['train_seconds_local']} | | "
        f"{r['train_seconds_ray_2']} | final NDCG@10 {r['ddp_final_ndcg_local']:.4f} / "
        f"{r['ddp_final_ndcg_2_workers']:.4f}; loss within {r['ddp_loss_max_rel_diff']:.1e} |",
    ]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, json_path: Path) -> None:
    text = markdown(report)
    json_path.with_suffix(".md").write_text(text)
    if json_path.resolve() == OUT.resolve():
        readme = ROOT / "README.md"
        head, rest = readme.read_text().split("<!-- distributed.md -->\n", 1)
        _, tail = rest.split("<!-- /distributed.md -->", 1)
        readme.write_text(f"{head}<!-- distributed.md -->\n{text}<!-- /distributed.md -->{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--embed-items", type=int, default=4_000, help="items read through the encoder")
    parser.add_argument("--index-items", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--address", default="local", help="compute.address: local (a private Ray) or a cluster's")
    parser.add_argument("--report", action="store_true", help="only rewrite the markdown and README from --out")
    args = parser.parse_args()
    if args.report:
        write_markdown(json.loads(args.out.read_text()), args.out)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ADDRESS[0] = args.address
    from bertrec.data.dataset import load_dataset
    from bertrec.data.split import read_split

    train_sets = [f"train.epochs={args.epochs}", "train.patience=100", "train.loss=full", "model.dropout=0.0"]
    report: dict = {
        "command": "python bench/distributed.py",
        "machine": f"{os.cpu_count()} CPUs ({cpu_name()}), {gpu_name()}",
        "address": args.address,
        "data": {"rows": args.rows, "items": args.items, "users": args.users, "split": "loo"},
    }
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bertrec-distributed-") as tmp:
        work = Path(tmp)
        params = prepare(work, args.rows, args.items, args.users, train_sets)
        data = load_dataset(params.paths.prepared)
        split = read_split(params.paths.splits, "loo", data.n_users, data.n_items)
        report |= bench_evaluate(params, data, split)
        report |= bench_embed(params, data, split, args.embed_items)
        report |= bench_features(params, data, args.embed_items)
        report |= bench_index(params, args.index_items)
        report |= bench_train(params, data, split, work)
    for stage, unit in (("evaluate", "users"), ("embed", "items"), ("features", "items")):
        local, one, two = (report[f"{stage}_{unit}_per_s_{k}"] for k in ("local", "ray_1", "ray_2"))
        report[f"{stage}_speedup_2_over_1_workers"] = round(two / one, 2)
        report[f"{stage}_ray_1_worker_over_local"] = round(one / local, 2)
    report["seconds"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out)
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
