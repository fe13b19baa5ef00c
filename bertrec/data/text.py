"""Item text from item fields, through the template of params (``data.text_template``)."""

from __future__ import annotations

import re
import string

import pandas as pd

LIST_SEP = "|"  # list fields of the prepared item table, whatever separator the source used
_EMPTY_PARENS = re.compile(r"\s*\(\s*\)")
_SPACES = re.compile(r"\s{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:])")


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order of first use: ``"{title} ({year})"`` -> [title, year]."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"data.text_template: field {{{name}}} must be a plain name like {{title}}")
        if name not in names:
            names.append(name)
    return names


def render_texts(items: pd.DataFrame, template: str, list_fields: tuple[str, ...] = (), list_sep: str = "|") -> pd.Series:
    """One text per item row.

    Fields named in ``list_fields`` hold ``list_sep``-separated lists and are written ``"a, b"``.
    A missing value leaves no trace: ``"Heat ()"`` becomes ``"Heat"``.

    Raises:
        ValueError: the template names a field the item table does not have.
    """
    fields = template_fields(template)
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise ValueError(
            f"data.text_template uses field(s) {missing} that the item table lacks; "
            f"its fields are {[c for c in items.columns if c != 'item_id']} (map columns with data.item_fields)"
        )
    columns = {}
    for name in fields:
        values = items[name].fillna("").astype(str).str.strip()
        if name in list_fields:
            parts = values.str.split(list_sep, regex=False)
            values = parts.map(lambda xs: ", ".join(x.strip() for x in xs if x.strip()))
        columns[name] = values.to_numpy()
    texts = [template.format_map({n: columns[n][i] for n in fields}) for i in range(len(items))]
    cleaned = pd.Series(texts, index=items.index, dtype=object)
    cleaned = cleaned.str.replace(_EMPTY_PARENS, "", regex=True)
    cleaned = cleaned.str.replace(_SPACE_BEFORE_PUNCT, r"\1", regex=True)
    return cleaned.str.replace(_SPACES, " ", regex=True).str.strip()


def normalise_lists(items: pd.DataFrame, list_fields: tuple[str, ...], list_sep: str) -> pd.DataFrame:
    """``items`` with each list field present rewritten ``LIST_SEP``-separated, parts stripped, empties dropped.

    Sources separate lists differently (RecBole's ``token_seq`` by spaces, MovieLens by "|"); the
    prepared table always uses ``LIST_SEP``, so readers such as the drift checks need not know the source.
    """
    out = items.copy()
    for name in (f for f in list_fields if f in out.columns):
        values = out[name].fillna("").astype(str).str.split(list_sep, regex=False)
        out[name] = values.map(lambda xs: LIST_SEP.join(x.strip() for x in xs if x.strip()))
    return out
