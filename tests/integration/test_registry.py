"""The registry against a real `mlflow server` on loopback: register, gate, aliases, rollback, crashes, overlaps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertrec.cli import app
from bertrec.errors import RegistryError
from bertrec.mlops.registry import CHALLENGER, CHAMPION, PREVIOUS, versions
from bertrec.serve.recommender import Recommender
from bertrec.steps.register import run as register

from builders import run_steps
from versions import aliases, given_champion, overrides, params_of

pytestmark = pytest.mark.integration


def test_lifecycle_promote_keep_replace_rollback(quality_bundles):
    _, bundles, uri = quality_bundles
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


def test_run_is_tracked_with_params_metrics_curves_plots_and_lineage(quality_bundles):
    _, bundles, uri = quality_bundles
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


def test_killed_between_upload_and_alias_switch_changes_no_alias(quality_bundles, medium_version):
    _, bundles, uri = quality_bundles
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


def test_two_promotions_that_overlap_leave_one_champion_and_the_loser_names_it(
    quality_bundles, medium_version, tmp_path
):
    from bertrec.data.dataset import load_dataset
    from bertrec.mlops.gate import gate_scores

    root, bundles, uri = quality_bundles
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


def test_promote_and_rollback_flows_drive_the_registry(
    quality_bundles, medium_version, tmp_path, monkeypatch, prefect_api
):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from bertrec.config import apply_overrides
    from flows.registry import promote, rollback

    _, bundles, uri = quality_bundles
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
