"""The trained bundle: one directory holding everything needed to serve the model.

```
bundle/
  model/        weights.safetensors (the towers), tower.json, training.json, items.parquet,
                text_features.npy (the catalogue's encoder features, float16), encoder/ (HF folder +
                tokenizer; bertrec.json: max_length and the precision features were read in),
                histories.parquet (each known user's items, oldest first, for queries by user id),
                penalty.npy (re-ranking's penalty per item, when rerank.beta > 0)
  embeddings/   vectors.npy (float16, unit norm), items.parquet (item_idx -> item_id), embeddings.json,
                queries.npy (user vectors of sampled training users: the queries recall is measured on)
  index/        index.faiss, index.json (factory, search settings, recall@10 against exact search)
```
`bertrec train` writes ``model/``, `bertrec embed` writes ``embeddings/``, `bertrec index` writes
``index/``; each part is replaced atomically. Later steps register the whole directory in MLflow,
except a frozen encoder: it is stored there once, and a version carries ``model/encoder.ref.json``
(its sha256 and where it is) instead of ``model/encoder/`` (:mod:`bertrec.mlops.encoders`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import load_file, save_file

from bertrec.errors import MissingInputError
from bertrec.io import atomic_dir, recover_dir
from bertrec.model.encoder import TextEncoder, pick_device
from bertrec.model.features import ItemTextFeatures
from bertrec.model.layout import ENCODER, ENCODER_REF, HISTORIES, MODEL, TRAINING, WEIGHTS, encoder_cache
from bertrec.model.scorer import TowerScorer
from bertrec.model.towers import TowerConfig, make_towers

ITEM_COLUMNS = ["item_idx", "item_id", "text", "title"]
TEXT_FEATURES = "text_features.npy"
PENALTY = "penalty.npy"  # the re-ranking penalty, per catalogue row (bertrec.ranking.rerank)


def save_model(
    scorer: TowerScorer,
    items: pd.DataFrame,
    bundle: Path,
    training: dict[str, Any],
    histories: pd.DataFrame | None = None,
) -> Path:
    """Write ``bundle/model`` atomically: tower weights, configs, the item table, the encoder.

    ``histories`` (``user_id``, ``item_id``; each user's rows oldest first) lets the served model
    answer a query that names only a user.
    """
    target = Path(bundle) / MODEL
    with atomic_dir(target) as tmp:
        weights = {
            k[6:]: v.detach().cpu().contiguous() for k, v in scorer.state_dict().items() if k.startswith("model.")
        }
        save_file(weights, str(tmp / WEIGHTS))
        (tmp / "tower.json").write_text(json.dumps(asdict(scorer.model.config), indent=2) + "\n")
        (tmp / TRAINING).write_text(json.dumps(training, indent=2, default=str) + "\n")
        columns = [c for c in ITEM_COLUMNS if c in items.columns]
        items[columns].to_parquet(tmp / "items.parquet", index=False)
        if histories is not None:
            histories[["user_id", "item_id"]].astype(str).to_parquet(tmp / HISTORIES, index=False)
        if scorer.penalty is not None:
            np.save(tmp / PENALTY, np.asarray(scorer.penalty, dtype=np.float32))
        if scorer.text_features is not None:
            features = scorer.text_features
            save_text_features(features, items["text"].tolist(), tmp / TEXT_FEATURES)
            encoder = features.float_encoder  # float32 weights; an int8 reader is remade from them on load
            encoder.model.save_pretrained(tmp / ENCODER)
            encoder.tokenizer.save_pretrained(tmp / ENCODER)
            settings = {"max_length": encoder.max_length, "precision": features.precision}
            (tmp / ENCODER / "bertrec.json").write_text(json.dumps(settings))
    return target


def save_text_features(features: ItemTextFeatures, texts: list[str], path: Path) -> None:
    """The catalogue's encoder features as float16 ``.npy``: the frozen table as it is, or ``texts`` encoded."""
    if features.table is not None and len(features.table) == len(texts):
        np.save(path, np.asarray(features.table, dtype=np.float16))
        return
    shape = (len(texts), features.encoder.model.config.hidden_size)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    features.encoder.features(texts, features.batch_size, progress=True, out=out)
    out.flush()
    del out


def load_model(bundle: Path, device: str = "auto") -> tuple[TowerScorer, pd.DataFrame]:
    """The trained scorer (eval mode, frozen features) and the item table of ``bundle/model``."""
    folder = Path(bundle) / MODEL
    recover_dir(folder)
    if not (folder / WEIGHTS).exists():
        raise MissingInputError(f"{folder / WEIGHTS} not found; run `bertrec train` first")
    config = TowerConfig(**json.loads((folder / "tower.json").read_text()))
    items = pd.read_parquet(folder / "items.parquet")
    dev = pick_device(device)
    features = None
    if (folder / ENCODER).exists() or (folder / ENCODER_REF).exists():
        encoder_dir = encoder_folder(folder)
        settings = json.loads((encoder_dir / "bertrec.json").read_text())
        encoder = TextEncoder.load(str(encoder_dir), settings["max_length"], str(dev))
        cache = np.load(folder / TEXT_FEATURES, mmap_mode="r")
        precision = settings.get("precision", "fp32")  # bundles written before encode_precision: fp32
        features = ItemTextFeatures(encoder, items["text"].tolist(), "all", 128, cache=cache, precision=precision)
    model = make_towers(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    titles = (items["title"] if "title" in items else items["text"]).to_numpy(dtype=object)
    scorer = TowerScorer(model, features, titles, dev)
    if (folder / PENALTY).exists():
        scorer.penalty = np.load(folder / PENALTY)
        rerank = json.loads((folder / TRAINING).read_text()).get("rerank", {})
        scorer.new_item_penalty = float(rerank.get("new_item_penalty", 0.0))
    scorer.model.eval()
    return scorer, items


def encoder_folder(model: Path) -> Path:
    """The encoder folder of ``bundle/model``: its own ``encoder/``, or the cached copy its ``encoder.ref.json`` names.

    A registered version with a shared encoder carries only the reference; loading it through MLflow
    (:func:`bertrec.mlops.encoders.resolve_encoder`) puts the encoder in :func:`encoder_cache` first.
    Raises MissingInputError when the named encoder is not in the cache.
    """
    if (model / ENCODER).exists():
        return model / ENCODER
    ref = json.loads((model / ENCODER_REF).read_text())
    cached = encoder_cache() / str(ref.get("sha256"))
    if not cached.is_dir():
        raise MissingInputError(
            f"{model / ENCODER_REF}: encoder sha256 {ref.get('sha256')} (stored at {ref.get('uri')}) is not in the "
            f"encoder cache {encoder_cache()}; load the version through MLflow, which downloads it there"
        )
    return cached


def read_training(bundle: Path) -> dict[str, Any]:
    """The training record of ``bundle/model`` (see :func:`training_record`)."""
    path = Path(bundle) / MODEL / TRAINING
    if not path.exists():
        raise MissingInputError(f"{path} not found; run `bertrec train` first")
    return json.loads(path.read_text())


def training_record(result: Any, params: Any, split_name: str) -> dict[str, Any]:
    """What `bertrec train` saves beside the weights: the params, the epochs, the best epoch."""
    return {
        "split": split_name,
        "params": params.flat(),
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "epochs": [asdict(e) for e in result.epochs],
        "members": getattr(result, "members", []),
    }
