"""The search space and the study storage of `bertrec tune` (the study itself: tests/integration/test_tune_flow.py)."""

from __future__ import annotations

import optuna
import pytest

from bertrec.config import SpaceRange
from bertrec.errors import ConfigError
from bertrec.mlops.tune import as_sets, check_space, storage_url, suggest
from flows.tuning import shares


def test_storage_sits_beside_mlflows_database(make_params):
    assert storage_url(make_params("mlflow.tracking_uri=sqlite:///runs/mlflow.db")) == "sqlite:///runs/mlflow-optuna.db"
    postgres = "postgresql://mlflow@db:5432/mlflow"
    assert storage_url(make_params(f"mlflow.tracking_uri={postgres}")) == postgres
    assert storage_url(make_params("tune.storage=sqlite:///s.db")) == "sqlite:///s.db"
    with pytest.raises(ConfigError, match="tune.storage"):
        storage_url(make_params("mlflow.tracking_uri=http://127.0.0.1:5000"))


def test_space_dimensions_are_sampled_with_their_types(make_params):
    p = make_params(
        "tune.space={model: {dim: [8, 16], layers: {low: 1, high: 3}, temperature: {low: 0.05, high: 0.5, log: true}}}"
    )
    dims = p.tune.dimensions()
    assert list(dims) == ["model.dim", "model.layers", "model.temperature"]
    assert dims["model.temperature"] == SpaceRange(low=0.05, high=0.5, log=True)
    trial = optuna.trial.FixedTrial({"model.dim": 16, "model.layers": 2, "model.temperature": 0.1})
    values = suggest(trial, dims)
    assert values == {"model.dim": 16, "model.layers": 2, "model.temperature": 0.1}
    assert isinstance(values["model.layers"], int)
    assert as_sets(values) == ["model.dim=16", "model.layers=2", "model.temperature=0.1"]


def test_a_space_value_that_is_not_a_valid_param_fails_before_any_trial(make_params, tmp_path):
    p = make_params("tune.space={model: {dropout: {low: 0.1, high: 1.5}}}")
    with pytest.raises(ConfigError, match=r"tune.space.model.dropout: the value 1.5 is not valid"):
        check_space(tmp_path / "absent.yaml", [], p)
    with pytest.raises(ConfigError, match="tune.space"):
        make_params("tune.space={data: {window: [null]}}")


def test_trials_are_shared_evenly_by_the_workers():
    assert shares(20, 3) == [7, 7, 6]
    assert shares(2, 4) == [1, 1]
