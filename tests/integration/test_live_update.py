"""New items live without retraining: a catalogue update against a real `mlflow server`, served by `bertrec serve`.

The server follows the champion alias (``--poll 1``) while a thread sends requests back to back;
the update registers and promotes a version with a new item, and the server swaps it in.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bertrec.cli import app
from bertrec.errors import DataError, RegistryError
from bertrec.mlops.registry import CHAMPION, PREVIOUS, download_version, versions
from bertrec.model.layout import EMBEDDINGS, INDEX, MODEL, WEIGHTS

from builders import run_steps
from servers import free_port, serving
from traffic import RequestLoop, traffic_report
from versions import HISTORY, aliases, given_champion, overrides, params_of

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
NEW_ITEM = "new-space-robot"
APPEAR_WITHIN_S = 300.0  # the target: a new item is served within 5 minutes of its arrival


def items_file(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A new-items CSV in the format of the project's item table (title and genres, text from the template)."""
    path = folder / "new_items.csv"
    pd.DataFrame(rows, columns=["item_id", "title", "genres"]).to_csv(path, index=False)
    return path


def test_a_catalogue_update_goes_live_without_dropping_a_request(quality_bundles, strong_version, tmp_path):
    _, bundles, uri = quality_bundles
    model = "live"
    given_champion(uri, strong_version, model)  # version 1
    p = params_of(bundles["strong"], model)
    args = [*bundles["strong"], "--set", f"mlflow.registered_model={model}"]
    size = len(pd.read_parquet(p.paths.prepared / "items.parquet"))
    new_items = items_file(tmp_path, [(NEW_ITEM, "space robot", "space robot movie")])
    # Requests that list every item the champion can recommend (k = its catalogue size): valid before and after
    body = {"dataframe_records": [{"history": HISTORY}], "params": {"k": size}}
    port = free_port()
    command = [str(BIN / "bertrec"), "serve", *args, "--port", str(port), "--poll", "1"]
    with serving(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log"):
        with RequestLoop(port, body) as loop:
            while not loop.replies:  # the loop is running before the item arrives
                time.sleep(0.05)
            # When a catalogue update adds a new item while requests keep coming
            began = time.monotonic()
            out = run_steps(args, (f"catalogue add {new_items}",))[f"catalogue add {new_items}"]
            finished = time.monotonic()
            first = loop.wait_for(NEW_ITEM, began, APPEAR_WITHIN_S)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=10) as response:
            served = json.loads(response.read())
    report = traffic_report(loop, NEW_ITEM, began, finished) | {"catalogue_size": size, "poll_seconds": 1}
    (tmp_path / "live_update.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    # Then version 2 is promoted: a copy of version 1 with the new item, tagged as a catalogue update
    assert f"{model} version 2: version 1 with 1 new item(s), PROMOTED to champion" in out
    assert aliases(p)[CHAMPION] == "2" and aliases(p)[PREVIOUS] == "1"
    tags = MlflowClient(uri, uri).get_model_version(model, "2").tags
    parent_tags = MlflowClient(uri, uri).get_model_version(model, "1").tags
    assert tags["bertrec.kind"] == "catalogue-update" and tags["catalogue.added"] == "1"
    assert tags["parent.version"] == "1" and tags["data.end"] == parent_tags["data.end"]
    assert tags["gate.promote"] == "true" and "cold_items/test_all/Hit@10" in tags["gate.reason"]
    # The guardrail of the champion, whose catalogue is the data's, is the figure the gate measured at its registration
    guard = "cold_items/test_all/Hit_at_10"
    assert tags[f"gate.champion.{guard}"] == parent_tags[guard]
    # No request was dropped or refused, and the server moved from version 1 to version 2 once, for good
    assert report["requests"] > 0 and report["errors"] == 0, report["error_examples"]
    served_versions = [r.version for r in loop.replies]
    assert served_versions[0] == "1" and served_versions[-1] == "2" and served["version"] == "2"
    assert served_versions == sorted(served_versions, key=int)
    # The new item is served (within the target), by version 2 only, in every answer version 2 gave
    assert first is not None and first.version == "2", report
    assert all((NEW_ITEM in r.items) == (r.version == "2") for r in loop.replies)
    # And the answers are those of the registered pyfunc model, as `mlflow models serve` gives them
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model}/2")
    expected = pyfunc.predict(pd.DataFrame({"history": [HISTORY]}), params={"k": size})
    assert list(loop.replies[-1].items) == list(expected["item_ids"][0])


def test_the_new_version_keeps_the_weights_and_grows_every_catalogue_part(
    quality_bundles, strong_version, tmp_path, monkeypatch
):
    _, bundles, uri = quality_bundles
    model = "grown"
    given_champion(uri, strong_version, model)
    rows = [("n1", "space robot", "space"), ("n2", "love story", "romance"), ("n3", "ghost city", "horror")]
    run_steps(
        [*bundles["strong"], "--set", f"mlflow.registered_model={model}"],
        (f"catalogue add {items_file(tmp_path, rows)}",),
    )
    client = MlflowClient(uri, uri)
    old = download_version(client, model, "1", tmp_path / "v1")
    new = download_version(client, model, "2", tmp_path / "v2")
    # The towers are the parent's, byte for byte; every part listing the catalogue has three more rows
    assert (new / MODEL / WEIGHTS).read_bytes() == (old / MODEL / WEIGHTS).read_bytes()
    n = len(pd.read_parquet(old / MODEL / "items.parquet"))
    items = pd.read_parquet(new / MODEL / "items.parquet")
    assert items["item_id"].tolist()[n:] == ["n1", "n2", "n3"] and items["title"].tolist()[n:] == [
        "space robot",
        "love story",
        "ghost city",
    ]
    assert items["text"].tolist()[n] == "space robot. Genres: space."
    vectors = np.load(new / EMBEDDINGS / "vectors.npy")
    assert len(vectors) == n + 3 and (vectors[:n] == np.load(old / EMBEDDINGS / "vectors.npy")).all()
    assert len(np.load(new / MODEL / "text_features.npy")) == n + 3
    if (old / MODEL / "penalty.npy").exists():  # new items pay what the re-ranking charges items without interactions
        charge = json.loads((old / MODEL / "training.json").read_text())["rerank"]["new_item_penalty"]
        assert np.allclose(np.load(new / MODEL / "penalty.npy")[n:], charge)
    info = json.loads((new / INDEX / "index.json").read_text())
    assert info["n_items"] == n + 3 and info["recall_at_10"] >= 0.95
    # When the champion moves while an update runs (here: rolled back to 1 as the update decides), no alias moves
    import bertrec.mlops.catalogue as catalogue

    decide = catalogue.decide_catalogue_update

    def decide_while_someone_rolls_back(*args):
        client.set_registered_model_alias(model, CHAMPION, "1")
        return decide(*args)

    monkeypatch.setattr(catalogue, "decide_catalogue_update", decide_while_someone_rolls_back)
    p = params_of(bundles["strong"], model)
    with pytest.raises(
        RegistryError, match=f"the champion of {model} moved from version 2 during the catalogue update"
    ):
        catalogue.update_catalogue(p, items_file(tmp_path, [("n4", "war movie", "war")]))
    assert aliases(p)[CHAMPION] == "1" and client.get_model_version(model, "3").tags["gate.promote"] == "false"


def test_bad_items_change_nothing_and_the_flow_adds_good_ones(
    quality_bundles, strong_version, tmp_path, monkeypatch, prefect_api
):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from bertrec.config import apply_overrides
    from flows.catalogue import catalogue_update

    _, bundles, uri = quality_bundles
    model = "catalogue"
    given_champion(uri, strong_version, model)
    p = params_of(bundles["strong"], model)
    args = [*bundles["strong"], "--set", f"mlflow.registered_model={model}"]
    before = (aliases(p), [v.version for v in versions(p)])
    # Given files that are wrong in each way, each is refused naming file, row, column and value; nothing changes
    bad = {
        "repeated.csv": (
            "item_id,text\nn1,space robot\nn1,love story\n",
            "repeated.csv:3: column 'item_id' is 'n1'; expected each item id once in the file",
        ),
        "known.csv": (
            "item_id,text\nn1,space robot\n7,love story\n",
            f"known.csv:3: column 'item_id' is '7'; expected an id not already in the catalogue of {model} version 1",
        ),
        "empty.csv": ("item_id,text\nn1,\n", "empty.csv:2: column 'text' is ''; expected a non-empty text"),
        "columns.csv": (
            "item_id,name\nn1,space robot\n",
            "columns.csv:1: a new-items file without a 'text' column needs column(s) ['title', 'genres']",
        ),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content)
        refused = CliRunner().invoke(app, ["catalogue", "add", str(tmp_path / name), *args])
        assert refused.exit_code == DataError.exit_code and message in refused.output, (name, refused.output)
    assert (aliases(p), [v.version for v in versions(p)]) == before
    # A model without a champion has no catalogue to add to
    good = items_file(tmp_path, [("n1", "space robot", "space"), ("n2", "war story", "war")])
    orphan = CliRunner().invoke(
        app, ["catalogue", "add", str(good), *bundles["strong"], "--set", "mlflow.registered_model=nobody"]
    )
    assert orphan.exit_code == RegistryError.exit_code and "nobody has no champion at" in orphan.output
    # When good items go through the Prefect flow, they become champion as version 2
    apply_overrides(tmp_path / "params.yaml", [*overrides(bundles["strong"]), f"mlflow.registered_model={model}"])
    monkeypatch.chdir(tmp_path)
    with temporary_settings({PREFECT_API_URL: prefect_api.api, PREFECT_HOME: prefect_api.home}):
        result = catalogue_update(items_path=str(good), project_dir=str(tmp_path))
    assert result["version"] == result["champion"] == "2" and result["parent"] == "1" and result["added"] == 2
    assert result["promote"] and result["reason"].startswith("promote:")
    assert aliases(p)[CHAMPION] == "2" and aliases(p)[PREVIOUS] == "1"
    # Its MLflow run carries the flow run's identity
    client = MlflowClient(uri, uri)
    run_id = client.get_model_version(model, "2").tags["run_id"]
    assert client.get_run(run_id).data.tags["prefect.flow_run_name"]
