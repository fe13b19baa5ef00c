"""The folders and files of a trained bundle (see :mod:`bertrec.model.bundle`), named once."""

MODEL = "model"  # the towers, the encoder, the item table: `bertrec train`
EMBEDDINGS = "embeddings"  # the catalogue's vectors: `bertrec embed`
INDEX = "index"  # the FAISS index: `bertrec index`
WEIGHTS = "weights.safetensors"
HISTORIES = "histories.parquet"
TRAINING = "training.json"  # the training record: params, epochs, best epoch, split
