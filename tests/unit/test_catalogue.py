"""Catalogue updates without servers: the new-items file, the guardrail decision, the alias-following server."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from bertrec.config import DataParams, Params
from bertrec.data.new_items import read_new_items
from bertrec.data.text import render_texts
from bertrec.errors import DataError
from bertrec.mlops.catalogue import decide_catalogue_update
from bertrec.serve.live import VERSION_HEADER, AliasServer

TEMPLATE = DataParams(text_template="{title}. Genres: {genres}.")


def write(path, text: str):
    path.write_text(text)
    return path


def test_new_items_get_their_text_as_prepare_builds_it(tmp_path):
    # Given a file with the template's fields, as the item table has them
    path = write(tmp_path / "new.csv", "item_id,title,genres\nn1,Space Robot,Action|War\nn2,Ghost City,\n")
    items = read_new_items(path, TEMPLATE).items
    # Then the text is the template's, exactly as prepare renders it, and the title names the item
    expected = render_texts(
        pd.DataFrame({"title": ["Space Robot", "Ghost City"], "genres": ["Action|War", ""]}),
        TEMPLATE.text_template,
        TEMPLATE.list_fields,
    )
    assert items["item_id"].tolist() == ["n1", "n2"]
    assert items["text"].tolist() == expected.tolist() == ["Space Robot. Genres: Action, War.", "Ghost City. Genres:."]
    assert items["title"].tolist() == ["Space Robot", "Ghost City"]
    # A text column is taken as it is, from Parquet too, and names the item when there is no title
    pd.DataFrame({"item_id": [7, 8], "text": ["love story", "war movie"]}).to_parquet(tmp_path / "new.parquet")
    items = read_new_items(tmp_path / "new.parquet", TEMPLATE).items
    assert items.to_dict("list") == {
        "item_id": ["7", "8"],
        "text": ["love story", "war movie"],
        "title": ["love story", "war movie"],
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "item_id,title\nn1,Space\n",
            "new.csv:1: a new-items file without a 'text' column needs column(s) ['genres'], found",
        ),
        (
            "item_id,text\nn1,love\nn2,war\nn1,space\n",
            "new.csv:4: column 'item_id' is 'n1'; expected each item id once in the file",
        ),
        ("item_id,text\nn1,love\nn2,  \n", "new.csv:3: column 'text' is '  '; expected a non-empty text"),
        ("item_id,text\n,love\n", "new.csv:2: column 'item_id' is ''; expected a non-empty id"),
        (
            "item_id,title,genres\nn1,,\n",
            "new.csv:2: column 'title' is ''; expected a value in at least one of ['title', 'genres']",
        ),
    ],
    ids=["missing column", "repeated id", "empty text", "empty id", "no field for the template"],
)
def test_a_bad_new_items_file_is_refused_naming_file_row_column_value(tmp_path, content, message):
    with pytest.raises(DataError) as caught:
        read_new_items(write(tmp_path / "new.csv", content), TEMPLATE)
    assert message in str(caught.value)


def test_ids_already_in_the_catalogue_are_refused_by_row(tmp_path):
    new = read_new_items(write(tmp_path / "new.csv", "item_id,text\nn1,love\n7,war\n"), TEMPLATE)
    new.refuse_known({"n9"}, "m version 1")  # nothing known: nothing refused
    with pytest.raises(
        DataError,
        match=r"new.csv:3: column 'item_id' is '7'; expected an id not already in the catalogue of m version 1",
    ):
        new.refuse_known({"7", "8"}, "m version 1")


def test_the_guardrail_decision_states_values_delta_and_threshold():
    # Within the tolerance: promoted, the reason names both values, the change and the limit
    kept = decide_catalogue_update(0.290, 0.300, "cold_items/test_all/Hit@10", 0.05, 3, "4")
    assert kept.promote and kept.reason.startswith("promote:")
    assert (
        "0.2900 with the 3 new item(s) vs champion (version 4) 0.3000 without (-3.33%; may drop at most 5%)"
        in kept.reason
    )
    # Beyond it: the champion stays
    refused = decide_catalogue_update(0.280, 0.300, "cold_items/test_all/Hit@10", 0.05, 3, "4")
    assert not refused.promote and refused.reason.startswith("keep the champion:") and "-6.67%" in refused.reason
    # A champion at zero: equal is no drop
    assert decide_catalogue_update(0.0, 0.0, "cold_items/test_all/Hit@10", 0.0, 1, "1").promote


def fake_app(name: str):
    """A scoring app that answers every request with ``name``."""

    async def app(scope, receive, send):
        body = f'{{"predictions": [{{"item_ids": ["{name}"]}}]}}'.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_the_alias_server_swaps_to_a_new_version_and_keeps_the_old_one_when_loading_fails(caplog):
    from starlette.testclient import TestClient

    alias = {"version": "1"}
    loads = []

    def load(version: str):
        loads.append(version)
        if version == "3":
            raise OSError("artifact store unreachable")
        return fake_app(f"from-{version}")

    server = AliasServer("models:/m@champion", lambda: alias["version"], load, poll=0)
    assert server.look().swapped and server.served.version == "1"
    with TestClient(server) as client:
        # Given version 1 served, when the alias does not move, nothing is loaded again
        assert not server.look().swapped and loads == ["1"]
        first = client.post("/invocations", json={})
        assert first.json()["predictions"][0]["item_ids"] == ["from-1"] and first.headers[VERSION_HEADER] == "1"
        # When it moves to version 2, version 2 answers the next request, and /version says so
        alias["version"] = "2"
        assert server.look().swapped
        second = client.post("/invocations", json={})
        assert second.json()["predictions"][0]["item_ids"] == ["from-2"] and second.headers[VERSION_HEADER] == "2"
        assert client.get("/version").json()["version"] == "2"
        # When version 3 fails to load, version 2 keeps answering, the failure is logged, and not retried at once
        alias["version"] = "3"
        with caplog.at_level(logging.ERROR, logger="bertrec.serve.live"):
            look = server.look()
        assert (
            not look.swapped
            and "loading version 3 failed (artifact store unreachable); still serving version 2" in look.reason
        )
        assert any("loading version 3 of models:/m@champion failed" in r.getMessage() for r in caplog.records)
        assert client.post("/invocations", json={}).headers[VERSION_HEADER] == "2"
        assert not server.look().swapped and loads == ["1", "2", "3"]
        # When the alias cannot be read, the served version stays
        server.resolve = lambda: (_ for _ in ()).throw(ConnectionError("registry down"))
        assert server.look().reason.startswith("cannot read models:/m@champion") and server.served.version == "2"


def test_serve_follows_the_alias_unless_poll_is_zero(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import bertrec.mlops.stack
    import bertrec.serve.live
    from bertrec.cli import app

    calls = []
    monkeypatch.setattr(bertrec.serve.live, "serve", lambda p, alias, host, port, poll: calls.append(("live", poll)))
    monkeypatch.setattr(bertrec.mlops.stack, "serve", lambda p, alias, host, port: calls.append(("mlflow", None)))
    params = ["--params", str(tmp_path / "absent.yaml")]
    # By default the server follows the alias every serving.poll_seconds; --poll sets it; 0 is `mlflow models serve`
    for extra in ([], ["--poll", "2"], ["--poll", "0"]):
        result = CliRunner().invoke(app, ["serve", *params, *extra])
        assert result.exit_code == 0, result.output
    assert calls == [("live", Params().serving.poll_seconds), ("live", 2.0), ("mlflow", None)]
    assert "following the alias every 2s" in CliRunner().invoke(app, ["serve", *params, "--poll", "2"]).output
