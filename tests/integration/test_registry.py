"""The registry against a real `mlflow server` on loopback: register, gate, aliases, rollback, pyfunc, serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertrec.cli import app
from bertrec.config import load_params
from bertrec.errors import RegistryError
from bertrec.mlops.registry import CHALLENGER, CHAMPION, PREVIOUS, alias_version, versions
from bertrec.serve.recommender import Recommender
from bertrec.steps.register import run as register

from builders import project_args, run_steps
from servers import free_port, serving

pytestmark = pytest.mark.integration
HISTORY = ["3", "4", "5", "6"]


def overrides(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def params_of(args: list[str], model: str):
    return load_params(args[1], [*overrides(args), f"mlflow.registered_model={model}"])


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_encoder, mlflow_uri):
    """Prepared data, splits and baselines, and four trained, evaluated bundles of different quality.

    Each bundle has its own outputs and metrics folders (with a copy of the baselines' figures).
    """
    root = tmp_path_factory.mktemp("registry")
    base = project_args(root, tiny_encoder, f"mlflow.tracking_uri={mlflow_uri}", "baselines.models=[popular]")
    run_steps(base, ("prepare", "split", "baselines"))
    bundles = {}
    for label, sets in {
        "weak": ["train.epochs=1"],
        "medium": ["train.epochs=3"],
        "strong": ["train.epochs=10"],
        "strong-seed7": ["train.epochs=10", "train.seed=7"],
    }.items():
        outputs, metrics = root / f"outputs-{label}", root / f"metrics-{label}"
        metrics.mkdir()
        shutil.copy(root / "metrics" / "baselines.json", metrics)
        paths = [f"paths.outputs={outputs}", f"paths.bundle={outputs / 'bundle'}", f"paths.metrics={metrics}"]
        args = [*base, *[x for s in [*paths, *sets] for x in ("--set", s)]]
        run_steps(args, ("train", "embed", "index", "evaluate"))
        bundles[label] = args
    return root, bundles, mlflow_uri


@pytest.fixture(scope="module")
def medium_version(project) -> tuple[str, str]:
    """The medium bundle registered once, through the gate: ``(model, version)`` of the version to copy."""
    _, bundles, _ = project
    return "medium-source", register(params_of(bundles["medium"], "medium-source")).version


@pytest.fixture(scope="module")
def strong_version(project) -> tuple[str, str]:
    """The strong bundle registered once, through the gate: ``(model, version)`` of the version to copy."""
    _, bundles, _ = project
    return "strong-source", register(params_of(bundles["strong"], "strong-source")).version


def given_champion(uri: str, source: tuple[str, str], model: str) -> str:
    """Make a copy of the registered ``source`` version (tags too) the champion of ``model``; returns its version.

    For tests whose subject comes after the registration: the copy is what `register` left for the
    bundle, without its upload and gate being run again.
    """
    client = MlflowClient(uri, uri)
    name, version = source
    copied = client.copy_model_version(f"models:/{name}/{version}", model)
    for key, value in client.get_model_version(name, version).tags.items():
        client.set_model_version_tag(model, copied.version, key, value)
    for alias in (CHAMPION, CHALLENGER):
        client.set_registered_model_alias(model, alias, copied.version)
    return str(copied.version)


def aliases(p) -> dict[str, str | None]:
    client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
    return {a: alias_version(client, p.mlflow.registered_model, a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}


def test_lifecycle_promote_keep_replace_rollback(project):
    _, bundles, uri = project
    name = "lifecycle"

    def cli(label: str, step: str = "register") -> str:
        return run_steps([*bundles[label], "--set", f"mlflow.registered_model={name}"], (step,))[step]

    # Given an empty registry, when a model that beats the baselines is registered, it becomes champion
    out = cli("medium")
    assert "version 1: PROMOTED to champion" in out and "no champion yet" in out
    p = params_of(bundles["medium"], name)
    assert aliases(p) == {CHAMPION: "1", CHALLENGER: "1", PREVIOUS: None}
    # When a worse model is registered, it stays challenger, with a reason naming the numbers
    out = cli("weak")
    assert "version 2: stays challenger" in out
    v2 = next(r for r in versions(p) if r.version == "2")
    assert v2.tags["gate.promote"] == "false" and "vs champion" in v2.tags["gate.reason"]
    ndcg = float(v2.tags["loo/test/NDCG_at_10"])
    assert f"{ndcg:.4f}" in v2.tags["gate.reason"]
    assert aliases(p) == {CHAMPION: "1", CHALLENGER: "2", PREVIOUS: None}
    # When a better model is registered, it becomes champion and the old one previous
    out = cli("strong")
    assert "version 3: PROMOTED to champion" in out
    assert aliases(p) == {CHAMPION: "3", CHALLENGER: "3", PREVIOUS: "1"}
    # When the same bundle is registered again, nothing is registered or promoted
    out = cli("strong")
    assert "already version 3" in out and "nothing registered or promoted" in out
    assert [r.version for r in versions(p)] == ["3", "2", "1"]
    # Rollback moves champion back to previous
    assert "from version 3 back to version 1" in cli("strong", "registry rollback")
    assert aliases(p) == {CHAMPION: "1", CHALLENGER: "3", PREVIOUS: None}
    assert "| 1 | champion |" in cli("strong", "registry status")
    # With no previous version left, a second rollback is refused and changes nothing
    refused = CliRunner().invoke(
        app, ["registry", "rollback", *bundles["strong"], "--set", f"mlflow.registered_model={name}"]
    )
    assert refused.exit_code == RegistryError.exit_code and "no `previous` version" in refused.output
    assert aliases(p)[CHAMPION] == "1"


def test_run_is_tracked_with_params_metrics_curves_plots_and_lineage(project):
    _, bundles, uri = project
    p = params_of(bundles["medium"], "tracked")
    result = register(p, run_name="tracked-run", run_tags={"origin": "test"})
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.dim"] == "16"
    assert run.data.params["mlflow.tracking_uri"] == uri
    metrics = run.data.metrics
    for key in (
        "loo/test/NDCG_at_10",
        "loo/test/Coverage_at_20",
        "loo/valid/TailHit_at_10",
        "baselines/popular/loo/test/NDCG_at_10",
        "baselines/popular/cold_items/test_new/Hit_at_10",
        "gate/cold_items/test_all/Hit_at_10",
    ):
        assert key in metrics, key
    curve = client.get_metric_history(result.run_id, "valid/NDCG_at_10")
    assert sorted(m.step for m in curve) == [1, 2, 3]
    tags = run.data.tags
    assert tags["origin"] == "test" and tags["model.encoder"] == p.model.encoder and len(tags["data.sha256"]) == 64
    assert tags["git.commit"] and tags["registry.version"] == result.version
    files = {
        f.path
        for folder in ("plots", "metrics", "topk/evaluate/loo")
        for f in client.list_artifacts(result.run_id, folder)
    }
    assert {"plots/ndcg_at_k.png", "plots/popularity.png", "plots/training_curve.png"} <= files
    assert {"metrics/evaluate.json", "metrics/baselines.json", "metrics/training.json"} <= files
    assert "topk/evaluate/loo/bertrec.test.parquet" in files
    version = client.get_model_version("tracked", result.version)
    assert version.tags["run_id"] == result.run_id and version.tags["data.sha256"] == tags["data.sha256"]
    assert version.tags["data.window"] == "all"


def test_pyfunc_champion_predicts_like_the_recommender(project, strong_version):
    root, bundles, uri = project
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


def test_versions_are_logged_as_code_and_load_without_unpickling(project, strong_version, monkeypatch):
    _, _, uri = project
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


def test_served_champion_keeps_the_serving_contract(project, strong_version):
    root, bundles, uri = project
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


def _register_in_subprocess(
    args: list[str], model: str, die_at: str | None = None, barrier: tuple[Path, int] | None = None
) -> subprocess.Popen:
    """`register` in a fresh process.

    With ``die_at``, the process SIGKILLs itself at that checkpoint. With ``barrier`` (a folder and a
    count), it stops once its version is registered until that many processes have got there, so
    their gates start together.
    """
    code = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from bertrec.config import load_params\n"
        "from bertrec.steps.register import run as register\n"
        f"p = load_params({args[1]!r}, {[*overrides(args), f'mlflow.registered_model={model}']!r})\n"
        f"die_at, barrier = {die_at!r}, {(str(barrier[0]), barrier[1]) if barrier else None!r}\n"
        "def checkpoint(stage):\n"
        "    if stage == die_at:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    if barrier and stage == 'uploaded':\n"
        "        folder, count = Path(barrier[0]), barrier[1]\n"
        "        (folder / str(os.getpid())).touch()\n"
        "        deadline = time.monotonic() + 300\n"
        "        while len(list(folder.iterdir())) < count:\n"
        "            assert time.monotonic() < deadline, 'the other registration never arrived'\n"
        "            time.sleep(0.05)\n"
        "r = register(p, checkpoint=checkpoint)\n"
        "print('RESULT', r.version, r.decision.promote if r.decision else None)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )


def test_killed_between_upload_and_alias_switch_changes_no_alias(project, medium_version):
    _, bundles, uri = project
    model = "killed"
    given_champion(uri, medium_version, model)
    p = params_of(bundles["strong"], model)
    before = aliases(p)
    assert before[CHAMPION] == "1"
    # When a better model's registration is killed after its upload and the gate's decision, before the aliases move
    process = _register_in_subprocess(bundles["strong"], model, "decided")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == -9, output
    # Then its version exists, with its index, but no alias changed and no gate decision was recorded on it
    assert [r.version for r in versions(p)] == ["2", "1"]
    assert aliases(p) == before
    assert "gate.promote" not in next(r for r in versions(p) if r.version == "2").tags
    # And the next registration of the same bundle finishes the job: version 2 is gated, nothing re-uploaded
    again = register(p)
    assert (again.version, again.registered, again.decision.promote) == ("2", False, True)
    assert "never gated: gated now" in again.summary()
    assert [r.version for r in versions(p)] == ["2", "1"]
    assert aliases(p) == {CHAMPION: "2", CHALLENGER: "2", PREVIOUS: "1"}


def test_two_promotions_that_overlap_leave_one_champion_and_the_loser_names_it(project, medium_version, tmp_path):
    from bertrec.data.dataset import load_dataset
    from bertrec.mlops.gate import gate_scores

    root, bundles, uri = project
    model = "overlap"
    given_champion(uri, medium_version, model)  # v1, the champion both runs face first
    p = params_of(bundles["medium"], model)
    # Given two challengers that both beat the champion, and a rule under which neither beats the other
    data = load_dataset(p.paths.prepared)
    score = {
        label: gate_scores(Recommender(root / f"outputs-{label}" / "bundle"), data, p)[p.promotion.metric]
        for label in ("medium", "strong", "strong-seed7")
    }
    a, b, m = score["strong"], score["strong-seed7"], score["medium"]
    tie, gain = abs(a - b) / min(a, b), (min(a, b) - m) / m
    assert tie < gain, f"the strong bundles no longer beat medium by more than they differ: {score}"
    rule = f"promotion.min_improvement={(tie + gain) / 2}"
    # When both are registered and reach the gate together (a barrier, not luck)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    runs = [
        _register_in_subprocess([*bundles[label], "--set", rule], model, barrier=(barrier, 2))
        for label in ("strong", "strong-seed7")
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert len(list(barrier.iterdir())) == 2
    # Then exactly one is champion, the other's gate ran against it and its reason names it
    rows = {r.version: r for r in versions(p)}
    assert set(rows) == {"1", "2", "3"}
    promoted = [v for v in ("2", "3") if rows[v].tags["gate.promote"] == "true"]
    assert len(promoted) == 1, {v: rows[v].tags["gate.reason"] for v in ("2", "3")}
    winner, loser = promoted[0], ({"2", "3"} - set(promoted)).pop()
    assert aliases(p)[CHAMPION] == winner and aliases(p)[PREVIOUS] == "1"
    assert rows[winner].tags["gate.champion_before"] == "1"
    assert rows[loser].tags["gate.champion_before"] == winner
    assert f"improvement failed: {p.promotion.metric}" in rows[loser].tags["gate.reason"]
    assert f"vs champion (version {winner})" in rows[loser].tags["gate.reason"]


def test_promote_and_rollback_flows_drive_the_registry(project, medium_version, tmp_path, monkeypatch, prefect_api):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from bertrec.config import apply_overrides
    from flows.registry import promote, rollback

    _, bundles, uri = project
    model = "manual"
    given_champion(uri, medium_version, model)  # v1 champion
    register(params_of(bundles["weak"], model))  # v2 stays challenger
    # Given a project folder whose params.yaml is this test's configuration
    apply_overrides(tmp_path / "params.yaml", [*overrides(bundles["weak"]), f"mlflow.registered_model={model}"])
    p = params_of(bundles["weak"], model)
    monkeypatch.chdir(tmp_path)  # the flows run in the project folder
    with temporary_settings({PREFECT_API_URL: prefect_api.api, PREFECT_HOME: prefect_api.home}):  # a real server
        # When the weaker version is put through the gate by hand, it is refused with the numbers
        refused = promote(version="2", project_dir=str(tmp_path))
        assert not refused["promote"] and "improvement failed" in refused["reason"]
        assert aliases(p)[CHAMPION] == "1"
        # When it is forced, it becomes champion and the reason says it was forced
        forced = promote(version="2", force=True, project_dir=str(tmp_path))
        assert forced["promote"] and forced["reason"].startswith("forced promotion")
        assert aliases(p) == {CHAMPION: "2", CHALLENGER: "2", PREVIOUS: "1"}
        # And the rollback flow moves champion back
        assert rollback(project_dir=str(tmp_path)) == {"from": "2", "to": "1"}
        # A rollback with nothing to roll back to fails at once, with the reason: a refusal is not retried
        refused = rollback(project_dir=str(tmp_path), return_state=True)
        assert refused.is_failed() and "no `previous` version" in refused.message
        tasks = _task_runs(prefect_api, refused.state_details.flow_run_id)
        assert [(t.name.split("-")[0], t.run_count) for t in tasks] == [("rollback_task", 1)]
        # Promoting the champion is refused too, with the reason
        again = promote(version="1", project_dir=str(tmp_path), return_state=True)
        assert again.is_failed() and f"version 1 of {model} is already the champion" in again.message
    assert aliases(p)[CHAMPION] == "1"


def _task_runs(server, flow_run_id) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list:
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    with temporary_settings({PREFECT_API_URL: server.api}):
        return asyncio.run(read())


def test_a_version_pickled_before_models_from_code_still_loads(project, monkeypatch):
    """Versions registered before models-from-code pickled their model, as `bertrec.serving.BundleModel`."""
    import bertrec
    import bertrec.serving
    from bertrec.serve import pyfunc

    root, _, uri = project
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
