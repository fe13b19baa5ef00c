"""A file of new catalogue items (CSV/TSV or Parquet), read and checked before anything is changed.

Each row is one item: its id (``data.columns.item_id``), and either a ``text`` column or the
fields of ``data.text_template`` (mapped by ``data.item_fields``), from which the text is built as
`prepare` builds it (:func:`bertrec.data.text.render_texts`). An optional ``title`` column names
the item in explanations; without it the text does. Every refusal names the file, the row, the
column and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bertrec.config import DataParams
from bertrec.data.tables import RawTable, ids, read_table, require_columns
from bertrec.data.text import render_texts, template_fields

TEXT = "text"
TITLE = "title"


@dataclass(frozen=True)
class NewItems:
    """The checked rows of a new-items file: ``items`` has ``item_id``, ``text`` and ``title``."""

    table: RawTable
    id_column: str
    items: pd.DataFrame

    def refuse_known(self, known: set[str], whose: str) -> None:
        """Raise DataError naming the rows whose id is already in the catalogue ``known`` (of ``whose``)."""
        clash = self.items["item_id"].isin(known).to_numpy()
        if clash.any():
            raise self.table.fail(clash, self.id_column, f"an id not already in the catalogue of {whose}")


def read_new_items(path: Path, data: DataParams) -> NewItems:
    """Read and check a new-items file; nothing else is read or changed.

    Raises:
        DataError: a missing column, an empty or repeated id, or an empty text (or, without a
            ``text`` column, a row whose template fields are all empty); the message names the
            file, row, column and value.
    """
    table = read_table(Path(path), data.delimiter, data.encoding)
    id_column = data.columns.item_id
    frame = table.frame
    if TEXT in frame.columns:
        require_columns(table, [id_column, TEXT], "a new-items file")
        item_ids = _unique_ids(table, id_column)
        texts = frame[TEXT].fillna("").astype(str).str.strip()
        empty = (texts == "").to_numpy()
        if empty.any():
            raise table.fail(empty, TEXT, "a non-empty text")
    else:
        fields = template_fields(data.text_template)
        columns = {field: data.item_fields.get(field, field) for field in fields}
        require_columns(table, [id_column, *columns.values()], f"a new-items file without a {TEXT!r} column")
        item_ids = _unique_ids(table, id_column)
        values = pd.DataFrame({field: frame[column] for field, column in columns.items()})
        blank = values.fillna("").astype(str).apply(lambda col: col.str.strip() == "").all(axis=1).to_numpy()
        if blank.any():
            named = list(columns.values())
            raise table.fail(blank, named[0], f"a value in at least one of {named} (the text is built from them)")
        texts = render_texts(values, data.text_template, data.list_fields, data.list_sep)
    titles = frame[TITLE].fillna("").astype(str).str.strip() if TITLE in frame.columns else texts
    titles = np.where(titles.to_numpy() == "", texts.to_numpy(), titles.to_numpy())
    items = pd.DataFrame({"item_id": item_ids, "text": texts.to_numpy(dtype=object), "title": titles.astype(object)})
    return NewItems(table, id_column, items)


def _unique_ids(table: RawTable, column: str) -> np.ndarray:
    """The ids of ``column``: non-empty, each once (the later repeat is the row named)."""
    values = ids(table, column)
    repeated = pd.Series(values).duplicated(keep="first").to_numpy()
    if repeated.any():
        raise table.fail(repeated, column, "each item id once in the file")
    return values
