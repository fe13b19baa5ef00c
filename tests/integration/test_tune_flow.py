"""The tune flow on a real Prefect server: two `bertrec tune` workers share one Optuna study in MLflow's PostgreSQL.

The project is a copy of the session's built DVC project (its data stages are current); trials are
child runs on the session's real MLflow server, under one parent run.
"""

from __future__ import annotations

import pytest
import sqlalchemy
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration


def test_the_tune_flow_runs_one_study_on_two_workers(project_copy, prefect_api, postgres_uris, mlflow_uri):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.tuning import tune

    root = project_copy()
    # Given a search space of two dimensions (overrides merge into params.yaml's space: it is replaced here)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tune"]["space"] = {"model": {"dim": [8, 16]}, "train": {"lr": {"low": 0.001, "high": 0.01, "log": True}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    overrides = {
        "train": {"epochs": 2},
        "tune": {
            "study": "flow-study",
            "storage": postgres_uris["mlflow"],  # the database of the MLflow server's store
            "startup_trials": 2,
            "warmup_epochs": 1,
        },
    }
    # When the flow runs two trials with two workers
    with temporary_settings({PREFECT_API_URL: prefect_api.api, PREFECT_HOME: prefect_api.home}):
        result = tune(trials=2, workers=2, overrides=overrides, project_dir=str(root))
    # Then the study holds two finished trials, in schema optuna of MLflow's database
    assert result["states"] == {"COMPLETE": 2}
    engine = sqlalchemy.create_engine(postgres_uris["mlflow"])
    with engine.connect() as connection:
        count = connection.execute(
            sqlalchemy.text(
                "select count(*) from optuna.trials t join optuna.studies s using (study_id) "
                "where s.study_name = 'flow-study'"
            )
        ).scalar()
    engine.dispose()
    assert count == 2
    # And each trial is a child run of the study's parent run, from both workers
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.run_name == "tune-flow-study" and parent.data.tags["bertrec.kind"] == "tune"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10
    )
    assert len(children) == 2
    assert {c.data.tags["optuna.worker"] for c in children} == {"0", "1"}
    assert all(c.data.tags["optuna.state"] == "complete" for c in children)
    best = max(children, key=lambda c: c.data.metrics["valid/NDCG_at_10_reranked"])
    assert result["best_value"] == pytest.approx(best.data.metrics["valid/NDCG_at_10_reranked"])
    # And the best params are on the parent run and come out as a params.yaml diff
    assert parent.data.tags["best.mlflow_run_id"] == best.info.run_id
    assert parent.data.tags["best.model.dim"] == best.data.params["model.dim"]
    assert result["best_params"]["train.lr"] == float(best.data.params["train.lr"])
    assert result["diff"].startswith("--- ") and f"+  lr: {result['best_params']['train.lr']}" in result["diff"]
    artifact = client.download_artifacts(parent.info.run_id, "best_params.diff", str(root))
    assert open(artifact).read() == result["diff"]
