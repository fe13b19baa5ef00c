"""Every supported source format: small files are written, prepared, and read back."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bertrec.data import load_dataset, prepare

GENRES_100K = "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\n" \
    "Drama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\n" \
    "Thriller|16\nWar|17\nWestern|18\n"  # fmt: skip


def flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("1\t2\t4\t100\n1\t1\t5\t50\n2\t1\t3\t70\n2\t3\t1\t70\n")
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}",
        f"2|Cité des enfants perdus, La (1995)|01-Jan-1995||http://x|{flags(8, 15)}",
        f"3|unknown|||http://x|{flags(0)}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text(GENRES_100K + "\n")
    return folder


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    movies = "10::Heat (1995)::Action|Crime|Thriller\n20::Amélie (2001)::Comedy|Romance\n"
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_ml_latest(folder: Path, tags: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,2.5,964982224\n"
    )
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",'
        "(no genres listed)\n"
    )
    if tags:
        (folder / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,pixar,2\n2,1,fun,3\n1,3,politics,4\n"
        )
    return folder


def write_recbole(folder: Path, name: str = "toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t3\t10\nu1\ti2\t4\t5\nu2\ti2\t5\t7\n"
    )
    (folder / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "i1\tSpace Robot\t1990\tAction Drama\ni2\tGhost City\t2000\tHorror\n"
    )
    return folder


def test_ml100k_raw_layout(make_params, tmp_path):
    # Given GroupLens ml-100k files (latin-1 titles, genre flags, one item without a date)
    folder = write_ml100k(tmp_path / "ml-100k")
    # When it is prepared as the default source from a local path
    manifest = prepare(make_params(f"data.path={folder}"))
    data = load_dataset(tmp_path / "prepared")
    # Then titles, years, genres and the text template come out, and the log is ordered per user by time
    assert data.items["text"].tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "Cité des enfants perdus, La (1995). Genres: Drama, Sci-Fi.",
        "unknown. Genres: unknown.",
    ]
    assert data.interactions["item_id"].tolist() == ["1", "2", "1", "3"]  # user 1 by time; user 2 tie keeps file order
    assert manifest["route"] == "local" and manifest["format"] == "movielens-100k"
    assert manifest["rows"] == {"raw": 4, "kept": 4}


def test_ml1m_dat_layout(make_params, tmp_path):
    # Given ml-1m style files ('::', latin-1)
    folder = write_ml1m(tmp_path / "ml-1m")
    # When prepared as a MovieLens source
    prepare(make_params("data.source=movielens", f"data.path={folder}"))
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
    prepare(params)
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
    prepare(
        make_params(
            "data.source=recbole", f"data.path={folder}",
            "data.item_fields={title: movie_title, year: release_year, genres: class}", "data.list_sep=' '",
        )  # fmt: skip
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
    manifest = prepare(
        make_params(
            "data.source=table", f"data.path={inter_path}", f"data.items_path={items_path}",
            "data.columns={user: who, item: what, time: when, item_id: sku}",
            "data.text_template='{name} ({kind})'",
        )  # fmt: skip
    )
    data = load_dataset(tmp_path / "prepared")
    # Then timestamps are parsed, rows ordered by time, text built, and the manifest hashes the inputs
    assert data.interactions["item_id"].tolist() == ["8", "7", "7"]
    assert data.interactions["timestamp"].tolist() == [1577836800, 1577923200, 1620172800]
    assert data.items["text"].tolist() == ["red shoe (shoes)", "blue hat (hats)"]
    assert "rating" not in data.interactions
    assert len(manifest["inputs"]) == 2 and all(len(h) == 64 for h in manifest["inputs"].values())
    saved = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert saved["outputs"] == manifest["outputs"]
