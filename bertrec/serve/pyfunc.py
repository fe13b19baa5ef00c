"""The bundle as an MLflow pyfunc model: what `models:/NAME@champion` loads and `mlflow models serve` runs.

Input rows carry ``history`` (item ids, oldest first) and, optionally, ``user_id``: a row with an
empty history is answered from the history the bundle knows for that user. Params: ``k`` (10) and
``exclude_history`` (true). Output rows carry ``item_ids`` and ``scores`` (lists, best first), the
same lists as :class:`bertrec.serve.recommender.Recommender` gives for the same inputs.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

BUNDLE_ARTIFACT = "bundle"
DEFAULT_K = 10
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
    inputs=Schema([ColSpec(Array(DataType.string), "history"), ColSpec(DataType.string, "user_id", required=False)]),
    outputs=Schema([ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.double), "scores")]),
    params=ParamSchema(
        [ParamSpec("k", DataType.long, DEFAULT_K), ParamSpec("exclude_history", DataType.boolean, True)]
    ),
)


def input_example(history: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"history": [list(history)]})


def pip_requirements() -> list[str]:
    """The serving packages at the versions installed here (local build tags such as +cpu dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def _history(row: dict[str, Any]) -> list[str]:
    history = row.get("history")
    return [] if history is None else [str(i) for i in history]


class BundleModel(mlflow.pyfunc.PythonModel):
    """A :class:`~bertrec.serve.recommender.Recommender` behind MLflow's pyfunc interface."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from bertrec.serve.recommender import Recommender

        self.recommender = Recommender(Path(context.artifacts[BUNDLE_ARTIFACT]), "auto")

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        k = int(params.get("k", DEFAULT_K))
        exclude = bool(params.get("exclude_history", True))
        histories = []
        for row in model_input.to_dict("records"):
            history = _history(row)
            user = row.get("user_id")
            if not history and user is not None and not pd.isna(user):
                history = self.recommender.history_of(str(user))
            histories.append(history)
        picks = self.recommender.recommend_batch(histories, k, exclude)
        return pd.DataFrame(
            {
                "item_ids": [[p.item_id for p in row] for row in picks],
                "scores": [[p.score for p in row] for row in picks],
            }
        )
