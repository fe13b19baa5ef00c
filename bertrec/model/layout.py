"""The folders and files of a trained bundle (see :mod:`bertrec.model.bundle`), named once."""

import os
from pathlib import Path

MODEL = "model"  # the towers, the encoder, the item table: `bertrec train`
EMBEDDINGS = "embeddings"  # the catalogue's vectors: `bertrec embed`
INDEX = "index"  # the FAISS index: `bertrec index`
WEIGHTS = "weights.safetensors"
HISTORIES = "histories.parquet"
TRAINING = "training.json"  # the training record: params, epochs, best epoch, split
ENCODER = "encoder"  # model/encoder: the Hugging Face folder, its tokenizer and bertrec.json
# model/encoder.ref.json replaces model/encoder/ in a registered version whose frozen encoder is
# stored once in MLflow (bertrec.mlops.encoders): its sha256, where it is stored, its size, its source
ENCODER_REF = "encoder.ref.json"
ENCODER_CACHE_ENV = "BERTREC_ENCODER_CACHE"  # where shared encoders are kept locally, one folder per sha256


def encoder_cache() -> Path:
    """The local cache of shared encoders: ``$BERTREC_ENCODER_CACHE``, else ``~/.cache/bertrec/encoders``.

    ``XDG_CACHE_HOME`` replaces ``~/.cache`` when it is set.
    """
    if os.environ.get(ENCODER_CACHE_ENV):
        return Path(os.environ[ENCODER_CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "bertrec" / "encoders"
