"""Serving against a real `mlflow server` on loopback: the pyfunc model, models-from-code, `mlflow models serve`."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from bertrec.serve.recommender import Recommender

from servers import free_port, serving
from versions import HISTORY, given_champion

pytestmark = pytest.mark.integration


def test_pyfunc_champion_predicts_like_the_recommender(quality_bundles, strong_version):
    root, bundles, uri = quality_bundles
    given_champion(uri, strong_version, "pyfunc")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/pyfunc@champion")
    recommender = Recommender(root / "outputs-strong" / "bundle")
    # Given a history, a history without exclusion, and a known user named without a history
    frame = pd.DataFrame({"history": [HISTORY, ["10", "11"], []], "user_id": [None, None, "3"]})
    got = model.predict(frame, params={"k": 5})
    expected = recommender.recommend_batch([HISTORY, ["10", "11"], recommender.history_of("3")], 5)
    assert [list(r) for r in got["item_ids"]] == [[x.item_id for x in row] for row in expected]
    assert [list(r) for r in got["because"]] == [[x.because for x in row] for row in expected]
    assert list(got["basis"]) == ["history", "history", "user"]
    assert all(
        abs(a - b.score) < 1e-5
        for r, row in zip(got["scores"], expected, strict=True)
        for a, b in zip(r, row, strict=True)
    )
    kept = model.predict(pd.DataFrame({"history": [HISTORY]}), params={"k": 3, "exclude_history": False})
    assert [list(r) for r in kept["item_ids"]] == [[x.item_id for x in recommender.recommend(HISTORY, 3, False)]]


def test_versions_are_logged_as_code_and_load_without_unpickling(quality_bundles, strong_version, monkeypatch):
    _, _, uri = quality_bundles
    name, version = strong_version
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", tracking_uri=uri))
    # The version carries the code that builds the model, and no pickle
    assert (folder / "model_code.py").exists() and not (folder / "python_model.pkl").exists()
    # It loads where MLflow refuses to unpickle
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    assert len(model.predict(pd.DataFrame({"history": [HISTORY]}), params={"k": 2})["item_ids"][0]) == 2


def post(port: int, body: dict) -> tuple[int, dict]:
    """POST ``body`` to /invocations; the status and the JSON answer (of an error too)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_served_champion_keeps_the_serving_contract(quality_bundles, strong_version):
    root, bundles, uri = quality_bundles
    given_champion(uri, strong_version, "served")
    port = free_port()
    command = [str(Path(sys.executable).parent / "bertrec"), "serve", *bundles["strong"]]
    command += ["--set", "mlflow.registered_model=served", "--port", str(port)]
    recommender = Recommender(root / "outputs-strong" / "bundle")
    size = len(recommender.item_ids)
    with serving(command, f"http://127.0.0.1:{port}/ping", root / "serve.log"):
        answers = {
            "history": post(port, {"dataframe_records": [{"history": HISTORY}], "params": {"k": 4}}),
            "cold": post(port, {"dataframe_records": [{"history": []}], "params": {"k": 3}}),
            "user": post(port, {"dataframe_records": [{"user_id": "3"}], "params": {"k": 3}}),
            "ignored": post(port, {"dataframe_records": [{"history": ["nope", *HISTORY]}], "params": {"k": 4}}),
        }
        refusals = {
            "k: 0": ({"dataframe_records": [{"history": HISTORY}], "params": {"k": 0}}, "k must be between 1 and"),
            "k: -1": ({"dataframe_records": [{"history": HISTORY}], "params": {"k": -1}}, "got -1"),
            "k too big": (
                {"dataframe_records": [{"history": HISTORY}], "params": {"k": size + 1}},
                f"k must be between 1 and {size} (the catalogue size); got {size + 1}",
            ),
            "unknown item": (
                {"dataframe_records": [{"history": ["nope", "3"]}], "params": {"unknown_items": "fail"}},
                "history: item id 'nope' is not in the catalogue (unknown_items=fail)",
            ),
            "unknown user": (
                {"dataframe_records": [{"user_id": "ghost"}]},
                "user_id 'ghost' is not a user this model was trained on",
            ),
            "bad policy": (
                {"dataframe_records": [{"history": HISTORY}], "params": {"unknown_items": "skip"}},
                "unknown_items must be one of ['ignore', 'fail']; got 'skip'",
            ),
        }
        refused = {case: post(port, body) for case, (body, _) in refusals.items()}
        mistyped = post(port, {"dataframe_records": [{"history": HISTORY}], "params": {"k": "ten"}})
    # A history: the recommender's picks, each with the history item behind it
    expected = recommender.recommend(HISTORY, 4)
    status, body = answers["history"]
    row = body["predictions"][0]
    assert status == 200 and row["item_ids"] == [x.item_id for x in expected]
    assert row["because"] == [x.because for x in expected] and set(row["because"]) <= set(HISTORY)
    assert row["basis"] == "history" and row["ignored"] == []
    # No history and no user: the cold-user answer, training popularity, marked as such
    status, body = answers["cold"]
    row = body["predictions"][0]
    assert status == 200 and row["basis"] == "popular" and row["because"] == [None] * 3
    assert row["item_ids"] == [x.item_id for x in recommender.popular(3)]
    # A known user alone: their history as the model knows it
    status, body = answers["user"]
    assert status == 200 and body["predictions"][0]["basis"] == "user"
    assert body["predictions"][0]["item_ids"] == [
        x.item_id for x in recommender.recommend(recommender.history_of("3"), 3)
    ]
    # An unknown item under the default policy: left out, and said so
    status, body = answers["ignored"]
    assert status == 200 and body["predictions"][0]["ignored"] == ["nope"]
    assert body["predictions"][0]["item_ids"] == [x.item_id for x in expected]
    # What a client can fix: 400, the field and value named, no trace, no server path
    for case, (_, message) in refusals.items():
        status, body = refused[case]
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", (case, body)
        assert message in body["message"], (case, body["message"])
        text = json.dumps(body)
        assert "Traceback" not in text and "stack_trace" not in body and str(root) not in text, (case, text)
        assert "site-packages" not in text and ".py" not in text, (case, text)
    # A parameter of the wrong type is refused by MLflow's own schema check, which names it too
    status, body = mistyped
    assert status == 400 and "Failed to validate type and shape for 'k'" in body["message"]
    assert "for value `ten`" in body["message"] and "stack_trace" not in body


def test_a_version_pickled_before_models_from_code_still_loads(quality_bundles, monkeypatch):
    """Versions registered before models-from-code pickled their model, as `bertrec.serving.BundleModel`."""
    import bertrec
    import bertrec.serving
    from bertrec.serve import pyfunc

    root, _, uri = quality_bundles
    name = "pickled-the-old-way"

    # Given a version logged the old way: a cloudpickled model object naming the old module path
    class OldPath(pyfunc.BundleModel):
        pass

    OldPath.__module__, OldPath.__qualname__ = "bertrec.serving", "BundleModel"
    mlflow.set_tracking_uri(uri)
    with monkeypatch.context() as patch, mlflow.start_run(run_name=name):
        patch.setattr(bertrec.serving, "BundleModel", OldPath)  # cloudpickle then pickles it by that name
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=OldPath(),
            artifacts={pyfunc.BUNDLE_ARTIFACT: str(root / "outputs-strong" / "bundle")},
            signature=pyfunc.SIGNATURE,
            code_paths=[str(Path(bertrec.__file__).parent)],
        )
    version = mlflow.register_model(logged.model_uri, name).version
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", tracking_uri=uri))
    pickled = (folder / "python_model.pkl").read_bytes()
    assert b"bertrec.serving" in pickled and not (folder / "model_code.py").exists()
    # When it is loaded with today's package, the old path resolves and it predicts as the recommender does
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    assert type(model.unwrap_python_model()) is pyfunc.BundleModel
    got = model.predict(pd.DataFrame({"history": [HISTORY]}), params={"k": 5})
    expected = Recommender(root / "outputs-strong" / "bundle").recommend(HISTORY, 5)
    assert list(got["item_ids"][0]) == [x.item_id for x in expected]
