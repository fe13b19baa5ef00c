"""Text encoding on CPU: fp32 against int8 (``model.encode_precision``), and what the float16 cache costs.

On the real encoder (params.yaml ``model.encoder``, all-MiniLM-L6-v2 by default) and the prepared
catalogue's item texts (ml-100k after `bertrec fetch && bertrec prepare`):

- speed: texts/second of each precision over the catalogue, and over synthetic catalogues of longer
  texts (each item text with a varied suffix of words drawn from other texts, ~24 and ~64 tokens), so
  that a larger catalogue's encoding time can be extrapolated. Passes alternate between precisions
  (the machine may be shared) and the median is kept, after a warm-up pass;
- agreement: cosine between the int8 and fp32 vectors of every item (mean, 1st percentile, min), and
  the same for ``torch.ao.quantization.quantize_dynamic`` (7-bit activations) for reference;
- the float16 feature cache: largest absolute difference and smallest cosine between the fp32
  features and their float16 copy;
- ranking: NDCG@10 and Hit@10 of the ``text-zero-shot`` baseline on the ``loo`` split with item
  vectors from each (fp32, int8, fp32 through float16), with the standard error of the per-user
  NDCG@10 difference to fp32 (paired over the same users);
- the cache at work: seconds to encode the catalogue into ``.cache`` and to read it back.

    python bench/encode_speed.py        # writes bench/reports/encode_speed.json and .md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import Linear

from bertrec.config import load_params
from bertrec.data.dataset import load_dataset
from bertrec.data.split import read_split
from bertrec.model.encoder import Int8Linear, TextEncoder
from bertrec.model.features import FEATURE_DTYPE, ItemTextFeatures, row_cosines
from bertrec.ranking.baselines import TextZeroShot
from bertrec.ranking.evaluate import build_cases, evaluate, reference_of, train_set
from bertrec.ranking.scoring import TrainSet

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "reports"
K = 10
ALL_LAYERS = "int8-all-layers"  # the feed-forward outputs in int8 too: faster, further from fp32
INT8 = "int8 (bertrec: to_int8, feed-forward outputs in fp32)"


class FixedZeroShot(TextZeroShot):
    """``text-zero-shot`` scoring with item vectors computed outside (by one precision or another)."""

    def __init__(self, name: str, vectors: np.ndarray, history: int) -> None:
        super().__init__("unused", history)
        self.name = name
        self.vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def fit(self, train: TrainSet) -> FixedZeroShot:
        return self


def all_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every ``nn.Linear`` of ``model`` as :class:`Int8Linear`, the narrowing ones too (in place)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Linear):
                setattr(module, name, Int8Linear(child))
    return model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def longer_texts(texts: list[str], n: int, words: int, seed: int = 0) -> list[str]:
    """``n`` texts: catalogue texts in turn, each with a suffix of about ``words`` words drawn from all texts."""
    rng = np.random.default_rng(seed)
    vocab = sorted({w for t in texts for w in t.replace(".", " ").replace(",", " ").split()})
    out = []
    for i in range(n):
        k = int(rng.integers(words // 2, words + words // 2 + 1))
        out.append(f"{texts[i % len(texts)]} Tags: {' '.join(rng.choice(vocab, size=k))}.")
    return out


def tokens(encoder: TextEncoder, texts: list[str]) -> float:
    """Mean tokens per text after truncation at ``max_length``."""
    ids = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    return float(np.mean([len(x) for x in ids]))


def timed(encoders: dict[str, TextEncoder], texts: list[str], batch_size: int, repeats: int) -> dict:
    """Median texts/second of each encoder over ``texts``, passes alternating; plus the last pass's features."""
    for encoder in encoders.values():
        encoder.features(texts[:batch_size], batch_size)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    features: dict[str, np.ndarray] = {}
    for rep in range(repeats):
        names = list(encoders) if rep % 2 == 0 else list(reversed(encoders))
        for name in names:
            began = time.perf_counter()
            features[name] = encoders[name].features(texts, batch_size)
            seconds[name].append(time.perf_counter() - began)
    rates = {name: len(texts) / statistics.median(s) for name, s in seconds.items()}
    return {"texts_per_second": rates, "seconds": seconds, "features": features}


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    cos = row_cosines(reference, other)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_p01": float(np.quantile(cos, 0.01)),
        "cosine_min": float(cos.min()),
    }


def per_user_ndcg(topk: np.ndarray, positives, k: int = K) -> np.ndarray:
    """NDCG@k of each case from its top-K list and its positives (CSR rows)."""
    hits = np.asarray(positives[np.arange(len(topk))[:, None], np.maximum(topk[:, :k], 0)].todense()) > 0
    hits &= topk[:, :k] >= 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.array([discounts[: min(int(n), k)].sum() for n in np.diff(positives.indptr)])
    return (hits * discounts).sum(1) / np.maximum(ideal, 1e-12)


def ranking(features: dict[str, np.ndarray], p, data) -> dict:
    """text-zero-shot on loo: NDCG@10 and Hit@10 per item-vector source, with the paired difference to fp32."""
    split = read_split(p.paths.splits, "loo", data.n_users, data.n_items)
    train = train_set(split, data.items)
    reference = reference_of(train)
    out: dict[str, dict] = {}
    for target in ("valid", "test"):
        cases = build_cases(split, target)
        per_user: dict[str, np.ndarray] = {}
        rows = {}
        for name, vectors in features.items():
            scorer = FixedZeroShot(f"text-zero-shot-{name}", vectors, p.baselines.zero_shot.history)
            result = evaluate(scorer, cases, reference, (K,), p.eval.batch_size)
            per_user[name] = per_user_ndcg(result.topk, cases.positives)
            rows[name] = {"NDCG@10": result.metrics[f"NDCG@{K}"], "Hit@10": result.metrics[f"Hit@{K}"]}
            assert abs(per_user[name].mean() - rows[name]["NDCG@10"]) < 1e-6, "per-user NDCG disagrees with metrics"
        for name in features:
            diff = per_user[name] - per_user["fp32"]
            rows[name]["NDCG@10_diff"] = float(diff.mean())
            rows[name]["NDCG@10_diff_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            rows[name]["users_changed"] = int((diff != 0).sum())
        out[target] = {"users": len(cases.users), "by_source": rows}
    return out


def cache_seconds(encoder: TextEncoder, texts: list[str], batch_size: int, precision: str) -> dict:
    """Seconds to build the frozen features through the disk cache (cold), then to read them back (warm)."""
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        ItemTextFeatures(encoder, texts, "all", batch_size, cache_dir=Path(folder), precision=precision)
        cold = time.perf_counter() - began
        began = time.perf_counter()
        warm = ItemTextFeatures(encoder, texts, "all", batch_size, cache_dir=Path(folder), precision=precision)
        seconds = time.perf_counter() - began
        size = sum(f.stat().st_size for f in Path(folder).rglob("*.npy"))
        return {"precision": warm.precision, "cold_seconds": cold, "warm_seconds": seconds, "file_bytes": size}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Text encoding on CPU: fp32 against int8\n",
        f"`python bench/encode_speed.py` on {m['platform']} ({m['cpu']}), {m['torch_threads']} torch threads, "
        f"load average {m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} after (a shared machine: "
        f"passes alternate, median of {r['repeats']}). Encoder `{r['encoder']}`, max_length {r['max_length']}, "
        f"batch {r['batch_size']}.\n",
        "## Speed (texts/second)\n",
        f"| texts | n | tokens/text | fp32 | int8 | {ALL_LAYERS} | int8 / fp32 | 200k items fp32 | 200k items int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in r["speed"].items():
        f, i, a = (s["texts_per_second"][k] for k in ("fp32", "int8", ALL_LAYERS))
        lines.append(
            f"| {label} | {s['n']} | {s['tokens_per_text']:.1f} | {f:.0f} | {i:.0f} | {a:.0f} | {i / f:.2f} | "
            f"{200_000 / f / 60:.1f} min | {200_000 / i / 60:.1f} min |"
        )
    lines += ["", "## Agreement with fp32 (cosine of each item's vector)\n", "| vectors | mean | 1st pct | min |"]
    lines.append("|---|---|---|---|")
    for label, a in r["agreement"].items():
        lines.append(f"| {label} | {a['cosine_mean']:.4f} | {a['cosine_p01']:.4f} | {a['cosine_min']:.4f} |")
    h = r["float16_cache"]
    lines += [
        "",
        f"float16 cache: largest absolute difference {h['max_abs_diff']:.2e} on features of magnitude up to "
        f"{h['max_abs_value']:.2f}; smallest cosine {h['cosine_min']:.7f}.\n",
        "## text-zero-shot on loo\n",
        "| item vectors | target | NDCG@10 | Hit@10 | NDCG@10 - fp32 | s.e. | users changed |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, t in r["ranking"].items():
        for name, row in t["by_source"].items():
            lines.append(
                f"| {name} | {target} | {row['NDCG@10']:.4f} | {row['Hit@10']:.4f} | {row['NDCG@10_diff']:+.4f} | "
                f"{row['NDCG@10_diff_se']:.4f} | {row['users_changed']} / {t['users']} |"
            )
    c = r["cache"]
    lines += [
        "",
        f"The cache at work ({c['precision']}, {r['n_items']} items): encoded into `.cache` in "
        f"{c['cold_seconds']:.1f}s, read back in {c['warm_seconds']:.2f}s ({c['file_bytes'] / 1e6:.1f} MB).",
        "",
        r["verdict"],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per precision (median kept)")
    parser.add_argument("--synthetic", type=int, default=2000, help="texts in each synthetic longer catalogue")
    parser.add_argument("--set", dest="set_", action="append", default=[], help="params override")
    args = parser.parse_args()
    load_before = os.getloadavg()
    p = load_params(ROOT / "params.yaml", args.set_)
    if not (p.paths.splits / "loo").exists():
        sys.exit(f"{p.paths.splits / 'loo'} not found: run `bertrec fetch && bertrec prepare && bertrec split`")
    data = load_dataset(p.paths.prepared)
    texts = data.items["text"].tolist()
    batch = p.model.encode_batch_size
    fp32 = TextEncoder.load(p.model.encoder, p.model.max_length, "cpu")
    every_layer = TextEncoder(fp32.tokenizer, all_int8(copy.deepcopy(fp32.model)), fp32.device, fp32.max_length)
    encoders = {"fp32": fp32, "int8": fp32.to_int8(), ALL_LAYERS: every_layer}

    speed, features = {}, {}
    catalogues = {
        "catalogue": texts,
        "+~16 words": longer_texts(texts, args.synthetic, 16),
        "+~48 words": longer_texts(texts, args.synthetic, 48),
    }
    for label, sample in catalogues.items():
        run = timed(encoders, sample, batch, args.repeats)
        speed[label] = {"n": len(sample), "tokens_per_text": tokens(fp32, sample), **run}
        if label == "catalogue":
            features = speed[label].pop("features")
        else:
            longer = speed[label].pop("features")
            speed[label]["agreement"] = {name: agreement(longer["fp32"], longer[name]) for name in ("int8", ALL_LAYERS)}
        print(label, {k: round(v) for k, v in run["texts_per_second"].items()}, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; kept here as the reference only
        ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32.model), {torch.nn.Linear}, dtype=torch.qint8)
    ao_features = TextEncoder(fp32.tokenizer, ao, fp32.device, fp32.max_length).features(texts, batch)
    half = features["fp32"].astype(FEATURE_DTYPE)
    agree = {
        INT8: agreement(features["fp32"], features["int8"]),
        "int8 (Int8Linear on every linear layer)": agreement(features["fp32"], features[ALL_LAYERS]),
        "int8 (torch.ao quantize_dynamic, 7-bit activations)": agreement(features["fp32"], ao_features),
        "fp32 stored as float16": agreement(features["fp32"], half),
    }
    float16 = {
        "max_abs_diff": float(np.abs(half.astype(np.float32) - features["fp32"]).max()),
        "max_abs_value": float(np.abs(features["fp32"]).max()),
        "cosine_min": agree["fp32 stored as float16"]["cosine_min"],
    }
    sources = {
        "fp32": features["fp32"],
        "int8": features["int8"],
        ALL_LAYERS: features[ALL_LAYERS],
        "fp32 via float16": half.astype(np.float32),
    }
    ranked = ranking(sources, p, data)
    cache = cache_seconds(fp32, texts, batch, p.model.encode_precision)

    test = ranked["test"]["by_source"]["int8"]
    rate = speed["catalogue"]["texts_per_second"]
    verdict = (
        f"int8 encodes the catalogue {rate['int8'] / rate['fp32']:.2f}x as fast as fp32 with a mean cosine of "
        f"{agree[INT8]['cosine_mean']:.4f} to its vectors; text-zero-shot NDCG@10 on loo/test "
        f"moves by {test['NDCG@10_diff']:+.4f} (s.e. {test['NDCG@10_diff_se']:.4f})."
    )
    results = {
        "encoder": p.model.encoder,
        "max_length": p.model.max_length,
        "batch_size": batch,
        "repeats": args.repeats,
        "n_items": len(texts),
        "machine": {
            "platform": platform.machine(),
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine,
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "speed": speed,
        "agreement": agree,
        "float16_cache": float16,
        "ranking": ranked,
        "cache": cache,
        "verdict": verdict,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "encode_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "encode_speed.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
