"""The bundle as an MLflow pyfunc model: what `models:/NAME@champion` loads and `mlflow models serve` runs.

The serving contract. Input rows: ``history`` (item ids, oldest first) and ``user_id``, both
optional. Params: ``k`` (1 to the catalogue size; 10), ``exclude_history`` (true) and
``unknown_items``: ``ignore`` (the default: unknown history items are left out and reported back)
or ``fail``. A row whose history has no known item is answered from the history the model knows
for ``user_id``; a row with neither gets the cold-user answer, the items most interacted with in
training. Output rows: ``item_ids`` and ``scores`` (best first), ``because`` (the history item
behind each pick; null in a popularity answer), ``basis`` (``history``, ``user`` or ``popular``)
and ``ignored`` (the history items left out).

A request a client can fix is answered 400 with a message naming the field and value; nothing the
server sends carries a path or a trace (an unexpected failure is logged in full on the server and
answered with a generic message).

Versions are logged as models-from-code (:data:`MODEL_CODE`): the registry holds no pickle.
Versions logged before as a cloudpickled :class:`BundleModel` keep loading (see
:mod:`bertrec.serving`).
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from bertrec.errors import BertrecError

BUNDLE_ARTIFACT = "bundle"
DEFAULT_K = 10
# The file MLflow runs to build the served model (models-from-code).
MODEL_CODE = Path(__file__).with_name("model_code.py")
# What the model needs at serving time (pinned to the versions it was logged with).
SERVING_PACKAGES = (
    "torch",
    "transformers",
    "safetensors",
    "faiss-cpu",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "pydantic",
    "pyyaml",
    "tqdm",
    "mlflow",
)

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(Array(DataType.string), "history", required=False),
            ColSpec(DataType.string, "user_id", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec(Array(DataType.string), "item_ids"),
            ColSpec(Array(DataType.double), "scores"),
            ColSpec(Array(DataType.string), "because"),
            ColSpec(DataType.string, "basis"),
            ColSpec(Array(DataType.string), "ignored"),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("k", DataType.long, DEFAULT_K),
            ParamSpec("exclude_history", DataType.boolean, True),
            ParamSpec("unknown_items", DataType.string, "ignore"),
        ]
    ),
)
log = logging.getLogger(__name__)


def input_example(history: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"history": [list(history)]})


def pip_requirements() -> list[str]:
    """The serving packages at the versions installed here (local build tags such as +cpu dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def _missing(value: Any) -> bool:
    """An absent optional column: None, or NaN where pandas filled the gap."""
    return value is None or (isinstance(value, float) and value != value)


def _request(row: dict[str, Any]) -> tuple[list[str], str | None]:
    history, user = row.get("history"), row.get("user_id")
    return ([] if _missing(history) else [str(i) for i in history]), (None if _missing(user) else str(user))


class BundleModel(mlflow.pyfunc.PythonModel):
    """A :class:`~bertrec.serve.recommender.Recommender` behind MLflow's pyfunc interface."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from bertrec.mlops.encoders import resolve_encoder
        from bertrec.serve.recommender import Recommender

        bundle = Path(context.artifacts[BUNDLE_ARTIFACT])
        resolve_encoder(bundle)  # a shared encoder: into the local cache, its sha256 checked
        self.recommender = Recommender(bundle, "auto")

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        try:
            answers = self.recommender.answer_batch(
                [_request(row) for row in model_input.to_dict("records")],
                int(params.get("k", DEFAULT_K)),
                bool(params.get("exclude_history", True)),
                str(params.get("unknown_items", "ignore")),
            )
        except BertrecError as exc:  # the client's to fix: the message names the field and value
            raise MlflowException(str(exc), INVALID_PARAMETER_VALUE) from None
        except Exception:
            log.exception("recommendation failed")  # the trace stays in the server's log
            raise MlflowException(
                "the model failed to answer this request; see the server log", INTERNAL_ERROR
            ) from None
        return pd.DataFrame(
            {
                "item_ids": [[p.item_id for p in a.picks] for a in answers],
                "scores": [[p.score for p in a.picks] for a in answers],
                "because": [[p.because for p in a.picks] for a in answers],
                "basis": [a.basis for a in answers],
                "ignored": [a.ignored for a in answers],
            }
        )
