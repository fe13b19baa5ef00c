"""FAISS index types at catalogue scale: build seconds, recall@10 on user queries, QPS against exact search, peak RSS.

The catalogue is synthetic and seeded: 64-dim unit vectors from a mixture of Gaussian clusters on the
sphere, grouped under topics (clusters of one topic lie near each other), with Zipfian cluster sizes
and per-cluster spreads. A user query is the normalised, noisy mean of 3-6 items of one cluster
(``--tastes N``: of N clusters), clusters drawn by size: the shape of a two-tower user vector.
Ground truth is exact inner-product top-10 (``bertrec.model.index.exact_top``).

Each measurement runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own: the vectors,
the queries and the index. ``sweep`` rows build one factory and, at each step of its search ladder,
measure recall and throughput (:class:`Meter`: batched wall-clock QPS on all threads, alternating
with exact brute-force search, and the same per CPU-second on one thread); ``stage`` rows run the
index stage's own ``write_index`` (exact truth, build, tuning to recall@10 >= 0.95, write) and then
measure the tuned index read back.

    python bench/index_scale.py                    # sweeps at 30k, 100k, 300k, 1M + the stage at 1M
    python bench/index_scale.py --items 30000 100000 --factories Flat HNSW32 'IVF{lists},Flat' --no-stage
    python bench/index_scale.py --items 100000 300000 --tastes 2 --no-stage --out bench/reports/index_scale_tastes2.json

Writes ``bench/reports/index_scale.json`` and ``.md``. :func:`tier_b` is what bench/scale.py calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports"
sys.path.insert(0, str(ROOT))
from bertrec.model.index import (  # noqa: E402
    RECALL_TARGET,
    K,
    apply_search,
    build_index,
    choose_factory,
    exact_top,
    ivf_lists,
    ivf_pq_factory,
    read_index,
    recall_at_k,
    search_ladder,
    write_index,
)

DIM = 64
QUERIES = 1000
ITEMS_PER_CLUSTER = 200
ITEMS_PER_TOPIC = 20_000
MIN_SEARCH_S = 0.2  # each timed round repeats the batch for at least this long
ROUNDS = 5
EXACT_QUERIES = QUERIES  # queries per timed exact search: the same batch as the index's
SIZES = (30_000, 100_000, 300_000, 1_000_000)
TARGET_SPEEDUP = 10.0  # tier B: >= 10x exact QPS
TARGET_RSS_MB = 4096.0  # tier B: <= 4 GB


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalogue(n_items: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (n_items, dim) from clusters under topics, and each item's cluster (n_items,)."""
    rng = np.random.default_rng(seed)
    n_topics = max(4, n_items // ITEMS_PER_TOPIC)
    n_clusters = max(8, n_items // ITEMS_PER_CLUSTER)
    topics = unit(rng.standard_normal((n_topics, dim), dtype=np.float32))
    centres = unit(topics[rng.integers(n_topics, size=n_clusters)] + 0.9 * noise(rng, n_clusters, dim))
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    labels = rng.choice(n_clusters, size=n_items, p=sizes / sizes.sum())
    spread = rng.uniform(0.7, 1.3, size=n_clusters).astype(np.float32)
    vectors = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 1 << 18):
        part = labels[start : start + (1 << 18)]
        vectors[start : start + len(part)] = unit(centres[part] + spread[part, None] * noise(rng, len(part), dim))
    return vectors, labels


def noise(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Gaussian noise of expected norm 1: (n, dim)."""
    return rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))


def user_queries(
    vectors: np.ndarray, labels: np.ndarray, n: int = QUERIES, seed: int = 1, clusters: int = 1
) -> np.ndarray:
    """(n, dim) user vectors: the normalised noisy mean of 3-6 items of ``clusters`` clusters drawn by size.

    ``clusters`` 1 is a user of one taste; 2 or more puts the query between clusters (a harder case
    for an IVF index, whose lists follow the clusters).
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    for i in range(n):
        tastes = labels[rng.choice(len(vectors), size=clusters, replace=False)]
        members = np.concatenate([order[starts[c] : starts[c + 1]] for c in np.unique(tastes)])
        picked = rng.choice(members, size=min(len(members), int(rng.integers(3, 7))), replace=False)
        out[i] = vectors[picked].mean(axis=0)
    return unit(out + 0.3 * noise(rng, n, vectors.shape[1]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_round(search, n_queries: int) -> float:
    """Queries per second of ``search()`` (``n_queries`` per call) repeated for ``MIN_SEARCH_S`` at least."""
    done, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < MIN_SEARCH_S or done == 0:
        search()
        done += n_queries
    return done / elapsed


class Meter:
    """Throughput of an index and of exact search, two ways, for a machine shared with other work.

    ``qps``: batched searches on all faiss threads, wall clock; rounds of the index and of exact
    search alternate and each figure is its best round (the one least disturbed by other work).
    ``core_qps``: the same searches on one thread, per second of the process's CPU time: the work a
    query takes, which other processes do not change. Exact search is faiss's brute force over the
    raw vectors (what a ``Flat`` index does), ``ROUNDS`` rounds at most per process.
    """

    def __init__(self, vectors: np.ndarray, queries: np.ndarray) -> None:
        self.vectors, self.queries = vectors, queries
        self.exact_queries = queries[:EXACT_QUERIES]
        self.exact = self.exact_core = 0.0
        self.exact_rounds = 0
        self.threads = faiss.omp_get_max_threads()

    def _exact(self) -> None:
        faiss.knn(self.exact_queries, self.vectors, K, faiss.METRIC_INNER_PRODUCT)

    def per_core(self, search, n_queries: int) -> float:
        """Queries per CPU-second of ``search()`` (``n_queries`` per call) on one thread."""
        faiss.omp_set_num_threads(1)
        try:
            done, began = 0, cpu_s()
            while (used := cpu_s() - began) < MIN_SEARCH_S or done == 0:
                search()
                done += n_queries
            return done / used
        finally:
            faiss.omp_set_num_threads(self.threads)

    def qps(self, index: faiss.Index, rounds: int = ROUNDS) -> tuple[float, float]:
        """``(qps, core_qps)`` of ``index``; exact search's best figures are kept in ``exact``/``exact_core``."""
        search = lambda: index.search(self.queries, K)  # noqa: E731
        index.search(self.queries[:64], K)  # warm-up: threads and caches
        best = 0.0
        for _ in range(rounds):
            best = max(best, timed_round(search, len(self.queries)))
            if self.exact_rounds < ROUNDS:  # enough of them, spread over the first steps
                self.exact = max(self.exact, timed_round(self._exact, len(self.exact_queries)))
                self.exact_rounds += 1
        if not self.exact_core:
            self.exact_core = self.per_core(self._exact, len(self.exact_queries))
        return best, self.per_core(search, len(self.queries))


def load(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(data) as f:
        return f["vectors"], f["queries"], f["truth"]


def worker_sweep(data: Path, factory: str) -> dict:
    """Build ``factory``; recall and QPS at each step of its ladder, up to 3 steps at the target or recall 0.999."""
    vectors, queries, truth = load(data)
    meter = Meter(vectors, queries)
    began, cpu = time.perf_counter(), cpu_s()
    index = build_index(vectors, factory)
    build_s, build_cpu_s = time.perf_counter() - began, cpu_s() - cpu
    steps = []
    for search in search_ladder(index):
        apply_search(index, search)
        _, found = index.search(queries, K)
        qps, core_qps = meter.qps(index)
        steps.append({"search": search, "recall_at_10": recall_at_k(found, truth), "qps": qps, "core_qps": core_qps})
        reached = [s for s in steps if s["recall_at_10"] >= RECALL_TARGET]
        if steps[-1]["recall_at_10"] >= 0.999 or len(reached) >= 3:
            break
    return {
        "factory": factory,
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "steps": steps,
        "exact_qps": meter.exact,
        "exact_core_qps": meter.exact_core,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_stage(data: Path, factory: str) -> dict:
    """The index stage's ``write_index`` (truth, build, tuning, write), then QPS of the index read back."""
    vectors, queries, _ = load(data)
    with tempfile.TemporaryDirectory() as tmp:
        began, cpu = time.perf_counter(), cpu_s()
        info = write_index(vectors, Path(tmp) / "index", factory, len(queries), queries)
        seconds, seconds_cpu = time.perf_counter() - began, cpu_s() - cpu
        index, _ = read_index(Path(tmp) / "index")
        meter = Meter(vectors, queries)
        speed, core = meter.qps(index, rounds=2 * ROUNDS)
    return {
        "factory": info.factory,
        "seconds": seconds,
        "cpu_s": seconds_cpu,
        "search": info.search,
        "recall_at_10": info.recall_at_10,
        "qps": speed,
        "exact_qps": meter.exact,
        "core_qps": core,
        "exact_core_qps": meter.exact_core,
        "peak_rss_mb": peak_rss_mb(),
    }


def in_subprocess(mode: str, data: Path, factory: str) -> dict:
    """Run a worker in a fresh interpreter; its JSON result."""
    command = [sys.executable, __file__, "--worker", mode, "--data", str(data), "--factory", factory]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(n_items: int, folder: Path, clusters: int = 1) -> Path:
    """Catalogue, user queries (of ``clusters`` clusters each) and their exact top-10, saved for the workers."""
    vectors, labels = catalogue(n_items)
    queries = user_queries(vectors, labels, clusters=clusters)
    path = folder / f"data-{n_items}.npz"
    np.savez(path, vectors=vectors, queries=queries, truth=exact_top(vectors, queries, K))
    return path


def candidates(n_items: int) -> list[str]:
    """Flat, HNSW32, and IVF with full vectors, 8-bit scalar codes or fast-scan PQ codes (the last two re-ranked)."""
    lists = ivf_lists(n_items)
    return ["Flat", "HNSW32", f"IVF{lists},Flat", f"IVF{lists},SQ8,RFlat", ivf_pq_factory(n_items, DIM)]


def at_target(steps: list[dict]) -> dict | None:
    """The first (cheapest) step at recall@10 >= the target, as the stage's tuning picks it; None when none is."""
    return next((s for s in steps if s["recall_at_10"] >= RECALL_TARGET), None)


def stage_row(n_items: int, result: dict) -> dict:
    """A row in bench/scale.py's shape: stage ``index``, CPU, with recall and QPS beside the time and memory."""
    return {
        "rows": None,
        "items": n_items,
        "users": None,
        "stage": "index",
        "seconds": round(result["seconds"], 2),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "device": "cpu",
        "cpu_s": round(result["cpu_s"], 1),
        "factory": result["factory"],
        "search": result["search"],
        "recall_at_10": round(result["recall_at_10"], 4),
        "qps": round(result["qps"], 1),
        "exact_qps": round(result["exact_qps"], 1),
        "speedup": round(result["qps"] / result["exact_qps"], 2),
        "core_speedup": round(result["core_qps"] / result["exact_core_qps"], 2),
        "threads": faiss.omp_get_max_threads(),
    }


def tier_b(n_items: int = 1_000_000, factories: tuple[str, ...] = ("auto",)) -> list[dict]:
    """The index stage at ``n_items`` synthetic items: one row per factory (``auto``: the stage's own choice).

    ``seconds`` is the whole of ``write_index`` (exact truth, build, tuning, write); ``peak_rss_mb``
    that of the process, vectors and queries included. Targets (tier B, at 1M items): recall@10 >=
    0.95 on user queries, >= 10x exact QPS, <= 4 GB peak RSS.
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(n_items, Path(tmp))
        return [stage_row(n_items, in_subprocess("stage", data, f)) for f in factories]


def markdown(report: dict) -> str:
    tastes = "one cluster" if report["tastes"] == 1 else f"{report['tastes']} clusters"
    lines = [
        "# FAISS index types at catalogue scale",
        "",
        f"`{report['command']}` (faiss {report['faiss']}, {report['machine']}, shared with other work).",
        "",
        f"{DIM}-dim unit vectors (clusters under topics, seeded); {QUERIES} user queries (noisy means of 3-6 items",
        f"of {tastes}); recall@10 against exact top-10. **QPS**: batched searches of all the queries on all",
        "faiss threads, wall clock, the best of several rounds alternating with rounds of exact brute-force search",
        "in the same process; **x exact** is their ratio. **x exact, CPU**: the same ratio on one thread per second",
        "of CPU time, the work per query, which other work on the machine does not change (the steadier figure",
        "here). **Build**: wall seconds (CPU seconds). **Peak RSS**: a fresh process holding the vectors, the",
        "queries and the index. Per factory: the first setting of its search ladder at recall@10 >=",
        f"{RECALL_TARGET}, as the index stage's tuning picks it.",
        "",
        "| items | factory | build s (CPU s) | search | recall@10 | QPS | x exact | x exact, CPU | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in report["sweeps"]:
        for c in size["candidates"]:
            step = at_target(c["steps"])
            below = step is None
            step = max(c["steps"], key=lambda s: s["recall_at_10"]) if below else step
            recall = f"{step['recall_at_10']:.4f}" + (" (below)" if below else "")
            lines.append(
                f"| {size['items']:,} | {c['factory']} | {c['build_s']:.1f} ({c['build_cpu_s']:.0f}) | "
                f"{step['search'] or '-'} | {recall} | {step['qps']:,.0f} | {step['qps'] / c['exact_qps']:.1f} | "
                f"{step['core_qps'] / c['exact_core_qps']:.1f} | {c['peak_rss_mb']:,.0f} |"
            )
    if report["stage"]:
        lines += [
            "",
            "## The index stage (`write_index`, `index.factory: auto`): tier B",
            "",
            "Seconds: the whole of `write_index` (exact top-10 of the queries, build, tuning, write).",
            "",
            "| items | factory | seconds (CPU s) | search | recall@10 | QPS | exact QPS | x exact | x exact, CPU |"
            " peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["stage"]:
            lines.append(
                f"| {r['items']:,} | {r['factory']} | {r['seconds']:.1f} ({r['cpu_s']:.0f}) | {r['search']} | "
                f"{r['recall_at_10']:.4f} | {r['qps']:,.0f} | {r['exact_qps']:,.0f} | {r['speedup']:.1f} | "
                f"{r['core_speedup']:.1f} | {r['peak_rss_mb']:,.0f} |"
            )
        lines += [
            "",
            f"Targets: recall@10 >= {RECALL_TARGET}, >= {TARGET_SPEEDUP:.0f}x exact QPS, "
            f"<= {TARGET_RSS_MB:,.0f} MB peak RSS.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=list(SIZES), help="catalogue sizes to sweep")
    parser.add_argument(
        "--factories", nargs="+", help="factory strings to sweep, {lists} and {dim} filled in (default: a set per size)"
    )
    parser.add_argument("--stage-items", type=int, default=1_000_000, help="catalogue size of the stage (tier B) run")
    parser.add_argument("--tastes", type=int, default=1, help="sweeps: clusters behind each user query")
    parser.add_argument("--no-stage", action="store_true", help="sweeps only")
    parser.add_argument("--no-sweep", action="store_true", help="the stage run only")
    parser.add_argument("--out", type=Path, default=OUT / "index_scale.json")
    parser.add_argument("--worker", choices=["sweep", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--factory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({"sweep": worker_sweep, "stage": worker_stage}[args.worker](args.data, args.factory)))
        return
    report = {
        "command": " ".join(["python bench/index_scale.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {faiss.omp_get_max_threads()} threads",
        "threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "recall_target": RECALL_TARGET,
        "tastes": args.tastes,
        "sweeps": [],
        "stage": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n_items in [] if args.no_sweep else args.items:
            data = prepare(n_items, Path(tmp), args.tastes)
            size = {
                "items": n_items,
                "tastes": args.tastes,
                "auto": choose_factory("auto", n_items, DIM),
                "candidates": [],
            }
            for factory in [f.format(lists=ivf_lists(n_items), dim=DIM) for f in args.factories or candidates(n_items)]:
                result = in_subprocess("sweep", data, factory)
                size["candidates"].append(result)
                step = at_target(result["steps"]) or {}
                print(
                    f"{n_items} {factory}: build {result['build_s']:.1f}s, {step.get('search')} recall "
                    f"{step.get('recall_at_10', float('nan')):.4f} qps {step.get('qps', 0):,.0f} "
                    f"(exact {result['exact_qps']:,.0f}), rss {result['peak_rss_mb']:,.0f} MB",
                    flush=True,
                )
            report["sweeps"].append(size)
            data.unlink()
    if not args.no_stage:
        report["stage"] = tier_b(args.stage_items)
        print(json.dumps(report["stage"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
