"""Readers for each supported interaction-log format.

Each reader returns a :class:`Loaded`: interactions (``user_id``, ``item_id``, ``timestamp`` and,
when the format has one, ``rating``) and an item table (``item_id`` plus the fields the text
template uses), both validated, with the raw tables kept so that later checks can name rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bertrec.config import ColumnParams
from bertrec.errors import DataError
from bertrec.data.tables import RawTable, ids, numbers, read_delimited, read_table, require_columns, timestamps

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


@dataclass(frozen=True)
class Loaded:
    """A source's interactions and items, validated; the frames' index is the raw table's row."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    inter_table: RawTable
    item_table: RawTable
    list_sep: str
    columns: dict[str, str]  # canonical interaction column -> its name in the source file
    files: list[Path] = field(default_factory=list)
    format: str = ""


def _columns(user: str, item: str, time: str, rating: str | None) -> dict[str, str]:
    names = {"user_id": user, "item_id": item, "timestamp": time}
    return names | ({"rating": rating} if rating else {})


def _interactions(table: RawTable, user: str, item: str, time: str, rating: str | None) -> pd.DataFrame:
    """Validate and convert the interaction columns of a raw table."""
    wanted = [user, item, time] + ([rating] if rating else [])
    require_columns(table, wanted, "the interaction log")
    frame = pd.DataFrame(
        {
            "user_id": ids(table, user),
            "item_id": ids(table, item),
            "timestamp": timestamps(table, time),
        },
        index=table.frame.index,
    )
    if rating:
        frame["rating"] = numbers(table, rating)
    return frame


def _items(table: RawTable, id_column: str, fields: dict[str, str]) -> pd.DataFrame:
    """The item table: ``item_id`` plus each template field (renamed from its source column)."""
    require_columns(table, [id_column, *fields.values()], "the item table")
    frame = pd.DataFrame({"item_id": ids(table, id_column)}, index=table.frame.index)
    for name, column in fields.items():
        frame[name] = table.frame[column].astype(str).str.strip().replace({"nan": "", "None": ""})
    duplicated = frame["item_id"].duplicated().to_numpy()
    if duplicated.any():
        raise table.fail(duplicated, id_column, "each item id once in the item table")
    return frame


def _split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """MovieLens titles carry the year: ``"Toy Story (1995)"`` -> ("Toy Story", "1995")."""
    parts = titles.str.extract(_TITLE_YEAR)
    title = parts["title"].fillna(titles).str.strip()
    year = parts["year"].fillna("")
    return title, year


def read_ml100k(folder: Path) -> Loaded:
    """GroupLens ml-100k: ``u.data`` (tab, no header) and ``u.item`` (``|``, latin-1, genre flags)."""
    names = ["user_id", "item_id", "rating", "timestamp"]
    inter = read_delimited(folder / "u.data", "\t", names=names)
    genres = list(ML100K_GENRES)
    if (folder / "u.genre").exists():
        table = read_delimited(folder / "u.genre", "|", names=["genre", "index"], encoding="latin-1")
        genres = [g for g in table.frame["genre"] if g]
    columns = ["item_id", "title", "release_date", "video_release_date", "url", *genres]
    item_table = read_delimited(folder / "u.item", "|", names=columns, encoding="latin-1")
    if item_table.frame.shape[1] != len(columns) or item_table.frame[genres[-1]].eq("").all():
        raise DataError(f"{item_table.path}: expected {len(columns)} '|'-separated columns per line")
    items = _items(item_table, "item_id", {"raw_title": "title", "release_date": "release_date"})
    title, year = _split_title(items.pop("raw_title"))
    release_year = items.pop("release_date").str.extract(r"(\d{4})$")[0].fillna("")
    items["title"] = title
    items["year"] = release_year.where(release_year != "", year)
    flags = item_table.frame[genres].apply(lambda col: col.str.strip() == "1")
    items["genres"] = ["|".join(g for g, on in zip(genres, row) if on) for row in flags.to_numpy()]
    return Loaded(
        interactions=_interactions(inter, *names[:2], "timestamp", "rating"),
        columns=_columns(*names[:2], "timestamp", "rating"),
        items=items,
        inter_table=inter,
        item_table=item_table,
        list_sep="|",
        files=[inter.path, item_table.path],
        format="movielens-100k",
    )


def read_ml_dat(folder: Path) -> Loaded:
    """ml-1m / ml-10m: ``ratings.dat`` and ``movies.dat``, ``::``-separated, latin-1."""
    names = ["user_id", "item_id", "rating", "timestamp"]
    inter = read_delimited(folder / "ratings.dat", "::", names=names, encoding="latin-1")
    item_table = read_delimited(folder / "movies.dat", "::", names=["item_id", "title", "genres"], encoding="latin-1")
    items = _items(item_table, "item_id", {"raw_title": "title", "genres": "genres"})
    items["title"], items["year"] = _split_title(items.pop("raw_title"))
    return Loaded(
        interactions=_interactions(inter, *names[:2], "timestamp", "rating"),
        columns=_columns(*names[:2], "timestamp", "rating"),
        items=items[["item_id", "title", "year", "genres"]],
        inter_table=inter,
        item_table=item_table,
        list_sep="|",
        files=[inter.path, item_table.path],
        format="movielens-dat",
    )


def read_ml_csv(folder: Path, max_tags: int = 10) -> Loaded:
    """ml-latest / ml-25m: ``ratings.csv``, ``movies.csv`` and optionally ``tags.csv``.

    Tags become a ``tags`` item field: the item's ``max_tags`` most frequent tags, ``|``-separated.
    """
    inter = read_delimited(folder / "ratings.csv", ",")
    item_table = read_delimited(folder / "movies.csv", ",")
    items = _items(item_table, "movieId", {"raw_title": "title", "genres": "genres"})
    items["title"], items["year"] = _split_title(items.pop("raw_title"))
    items["genres"] = items["genres"].replace("(no genres listed)", "")
    files = [inter.path, item_table.path]
    items["tags"] = ""
    if (folder / "tags.csv").exists():
        tag_table = read_delimited(folder / "tags.csv", ",")
        require_columns(tag_table, ["movieId", "tag"], "the tag table")
        tags = pd.DataFrame({"item_id": ids(tag_table, "movieId"), "tag": tag_table.frame["tag"].str.strip()})
        tags = tags[tags["tag"] != ""]
        counts = tags.groupby(["item_id", "tag"], sort=False).size().rename("n").reset_index()
        counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True], kind="stable")
        top = counts.groupby("item_id", sort=False).head(max_tags).groupby("item_id", sort=False)["tag"].agg("|".join)
        items["tags"] = items["item_id"].map(top).fillna("")
        files.append(tag_table.path)
    return Loaded(
        interactions=_interactions(inter, "userId", "movieId", "timestamp", "rating"),
        columns=_columns("userId", "movieId", "timestamp", "rating"),
        items=items[["item_id", "title", "year", "genres", "tags"]],
        inter_table=inter,
        item_table=item_table,
        list_sep="|",
        files=files,
        format="movielens-csv",
    )


def _strip_atomic_types(table: RawTable) -> RawTable:
    """RecBole headers are ``name:type``; keep the names."""
    table.frame.columns = [c.split(":", 1)[0] for c in table.frame.columns]
    return table


def read_recbole(folder: Path, name: str, columns: ColumnParams, item_fields: dict[str, str]) -> Loaded:
    """RecBole atomic files ``NAME.inter`` and ``NAME.item`` (tab-separated, typed headers).

    ``item_fields`` maps template fields to item columns (identity for unmapped fields of the template).
    ``token_seq`` fields are space-separated lists.
    """
    inter = _strip_atomic_types(read_delimited(folder / f"{name}.inter", "\t"))
    item_table = _strip_atomic_types(read_delimited(folder / f"{name}.item", "\t"))
    return _mapped(inter, item_table, columns, item_fields, " ", "recbole")


def read_tables(
    interactions: Path, items: Path, columns: ColumnParams, item_fields: dict[str, str],
    delimiter: str, encoding: str, list_sep: str,
) -> Loaded:
    """A generic CSV/TSV or Parquet log and item table, with the column mapping of params."""
    inter = read_table(interactions, delimiter, encoding)
    item_table = read_table(items, delimiter, encoding)
    return _mapped(inter, item_table, columns, item_fields, list_sep, "table")


def _mapped(inter: RawTable, item_table: RawTable, columns: ColumnParams, item_fields: dict[str, str],
            list_sep: str, fmt: str) -> Loaded:
    """A log and item table whose columns are named by params (RecBole atomic files, generic tables)."""
    rating = columns.rating if columns.rating in inter.frame.columns else None
    return Loaded(
        interactions=_interactions(inter, columns.user, columns.item, columns.time, rating),
        columns=_columns(columns.user, columns.item, columns.time, rating),
        items=_items(item_table, columns.item_id, item_fields),
        inter_table=inter,
        item_table=item_table,
        list_sep=list_sep,
        files=[inter.path, item_table.path],
        format=fmt,
    )


def detect_movielens(folder: Path) -> str | None:
    """Which MovieLens layout a folder holds: ``100k``, ``dat``, ``csv``, or None."""
    if (folder / "u.data").exists():
        return "100k"
    if (folder / "ratings.dat").exists():
        return "dat"
    if (folder / "ratings.csv").exists():
        return "csv"
    return None


def read_movielens(folder: Path) -> Loaded:
    """Any raw MovieLens release, recognised by its files."""
    layout = detect_movielens(folder)
    if layout == "100k":
        return read_ml100k(folder)
    if layout == "dat":
        return read_ml_dat(folder)
    if layout == "csv":
        return read_ml_csv(folder)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise DataError(
        f"{folder}: no MovieLens files found (expected u.data, ratings.dat or ratings.csv); found {present}"
    )
