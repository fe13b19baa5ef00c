"""Every supported source format: small files are written, prepared, and read back."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest

from bertrec.data.dataset import load_dataset
from bertrec.errors import DataError
from bertrec.steps import prepare as prepare_step

from builders import write_ml1m, write_ml100k, write_ml_latest, write_recbole


def test_ml100k_raw_layout(make_params, tmp_path):
    # Given GroupLens ml-100k files (latin-1 titles, genre flags, one item without a date)
    folder = write_ml100k(tmp_path / "ml-100k")
    # When it is prepared as the default source from a local path
    manifest = prepare_step.run(make_params(f"data.path={folder}")).manifest
    data = load_dataset(tmp_path / "prepared")
    # Then titles, years, genres and the text template come out, and the log is ordered per user by time
    assert data.items["text"].tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "Cité des enfants perdus, La (1995). Genres: Drama, Sci-Fi.",
        "unknown. Genres: unknown.",
    ]
    assert data.interactions["item_id"].tolist() == ["1", "2", "1", "3"]  # user 1 by time; user 2 tie keeps file order
    assert manifest["route"] == "local" and manifest["format"] == "movielens-100k"
    assert manifest["rows"] == {"raw": 4, "after_window": 0, "kept": 4}


def test_window_keeps_interactions_up_to_the_cut_off(make_params, tmp_path):
    # Given the ml-100k files, whose interactions happen at epoch seconds 50, 70, 70 and 100
    folder = write_ml100k(tmp_path / "ml-100k")
    # When the data is prepared as of second 70 (a time without a zone is UTC)
    manifest = prepare_step.run(make_params(f"data.path={folder}", "data.window=1970-01-01T00:01:10")).manifest
    # Then the later interaction is selected out, counted apart from drops, and the window recorded
    data = load_dataset(tmp_path / "prepared")
    assert data.interactions["timestamp"].max() == 70 and len(data.interactions) == 3
    assert manifest["rows"] == {"raw": 4, "after_window": 1, "kept": 3} and manifest["dropped"] == {}
    assert manifest["window"] == "1970-01-01T00:01:10"
    # And a window before every interaction is an error that names it
    with pytest.raises(DataError, match="4 after data.window=1970-01-01 00:00:10"):
        prepare_step.run(make_params(f"data.path={folder}", "data.window=1970-01-01T00:00:10"))


def test_ml1m_dat_layout(make_params, tmp_path):
    # Given ml-1m style files ('::', latin-1)
    folder = write_ml1m(tmp_path / "ml-1m")
    # When prepared as a MovieLens source
    prepare_step.run(make_params("data.source=movielens", f"data.path={folder}"))
    data = load_dataset(tmp_path / "prepared")
    # Then the accented title decodes and genres are listed
    assert data.items["text"].tolist() == [
        "Heat (1995). Genres: Action, Crime, Thriller.",
        "Amélie (2001). Genres: Comedy, Romance.",
    ]
    assert data.interactions["rating"].tolist() == [5.0, 3.0, 4.0]


def test_ml_latest_csv_layout_with_tags(make_params, tmp_path):
    # Given ml-latest style CSVs with tags, zipped as GroupLens ships them
    folder = write_ml_latest(tmp_path / "src" / "ml-latest-small")
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"ml-latest-small/{f.name}")
    # When the archive is prepared with a template that uses tags
    params = make_params(
        "data.source=movielens", f"data.path={archive}", "data.text_template='{title} ({year}). Tags: {tags}.'"
    )
    prepare_step.run(params)
    data = load_dataset(tmp_path / "prepared")
    # Then the archive is extracted under paths.raw, tags are ranked by frequency, quoted titles survive
    assert (tmp_path / "raw" / "ml-latest-small" / "ml-latest-small" / "ratings.csv").exists()
    assert data.items["text"].tolist() == [
        "Toy Story (1995). Tags: pixar, fun.",
        "American President, The (1995). Tags: politics.",
    ]


def test_recbole_atomic_files(make_params, tmp_path):
    # Given RecBole atomic files with typed headers
    folder = write_recbole(tmp_path / "toy")
    # When prepared with a field mapping
    prepare_step.run(
        make_params(
            "data.source=recbole",
            f"data.path={folder}",
            "data.item_fields={title: movie_title, year: release_year, genres: class}",
            "data.list_sep=' '",
        )
    )
    data = load_dataset(tmp_path / "prepared")
    # Then token_seq genres become a list in the text; string ids sort lexicographically
    assert data.items["item_id"].tolist() == ["i1", "i2"]
    assert data.items["text"].tolist()[0] == "Space Robot (1990). Genres: Action, Drama."
    assert data.interactions[["user_id", "item_id"]].values.tolist() == [["u1", "i2"], ["u1", "i1"], ["u2", "i2"]]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generic_table(make_params, tmp_path, fmt):
    # Given a log with its own column names and ISO timestamps, and an item table
    log = pd.DataFrame(
        {"who": ["a", "a", "b"], "what": [7, 8, 7], "when": ["2020-01-02T00:00:00Z", "2020-01-01", "2021-05-05"]}
    )
    items = pd.DataFrame({"sku": [7, 8], "name": ["red shoe", "blue hat"], "kind": ["shoes", "hats"]})
    inter_path, items_path = tmp_path / f"log.{fmt}", tmp_path / f"items.{fmt}"
    if fmt == "csv":
        log.to_csv(inter_path, index=False)
        items.to_csv(items_path, index=False)
    else:
        log.to_parquet(inter_path)
        items.to_parquet(items_path)
    # When it is prepared with a column mapping and a template
    manifest = prepare_step.run(
        make_params(
            "data.source=table",
            f"data.path={inter_path}",
            f"data.items_path={items_path}",
            "data.columns={user: who, item: what, time: when, item_id: sku}",
            "data.text_template='{name} ({kind})'",
        )
    ).manifest
    data = load_dataset(tmp_path / "prepared")
    # Then timestamps are parsed, rows ordered by time, text built, and the manifest hashes the inputs
    assert data.interactions["item_id"].tolist() == ["8", "7", "7"]
    assert data.interactions["timestamp"].tolist() == [1577836800, 1577923200, 1620172800]
    assert data.items["text"].tolist() == ["red shoe (shoes)", "blue hat (hats)"]
    assert "rating" not in data.interactions
    assert len(manifest["inputs"]) == 2 and all(len(h) == 64 for h in manifest["inputs"].values())
    saved = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert saved["outputs"] == manifest["outputs"]


def test_the_same_data_in_another_folder_prepares_into_the_same_bytes(make_params, tmp_path, monkeypatch):
    # Given one ml-100k log copied into two folders, named once by an absolute and once by a relative path
    import shutil

    first = write_ml100k(tmp_path / "a" / "ml-100k")
    shutil.copytree(first, tmp_path / "b" / "elsewhere" / "ml-100k")
    monkeypatch.chdir(tmp_path / "b")
    outputs = []
    for path, out in ((str(first), "prepared-a"), ("elsewhere/ml-100k", "prepared-b")):
        # When each is prepared
        prepare_step.run(make_params(f"data.path={path}", f"paths.prepared={tmp_path / out}"))
        outputs.append({f.name: f.read_bytes() for f in sorted((tmp_path / out).iterdir())})
    # Then the prepared tables and the manifest are byte for byte the same: no path of the machine in them
    assert outputs[0] == outputs[1] and set(outputs[0]) == {"interactions.parquet", "items.parquet", "manifest.json"}
    manifest = json.loads(outputs[0]["manifest.json"])
    assert sorted(manifest["inputs"]) == ["u.data", "u.item"] and manifest["detail"] == "ml-100k"
