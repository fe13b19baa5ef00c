"""Cleaning and indexing: a source's log and items become a clean, indexed Dataset.

The policies (minimum rating, unknown items, duplicates, the time window) follow PROTOCOL.md and the
``data`` section of params; every drop is counted. See :mod:`bertrec.data.dataset` for the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bertrec.config import DataParams
from bertrec.data.dataset import Dataset
from bertrec.data.formats import Loaded
from bertrec.data.tables import id_order
from bertrec.data.text import normalise_lists, render_texts
from bertrec.errors import DataError


@dataclass(frozen=True)
class Cleaned:
    dataset: Dataset
    dropped: dict[str, int]
    raw_rows: int
    after_window: int = 0  # rows later than data.window: selected out, not dropped


def clean(loaded: Loaded, params: DataParams) -> Cleaned:
    """Apply the data policy of params: minimum rating, unknown items, duplicates; index and order.

    Raises:
        DataError: a policy says ``fail``, or more than ``max_drop_fraction`` of the rows would be
            dropped; the message names file, row, column and value.
    """
    inter, table = loaded.interactions, loaded.inter_table
    raw_rows = len(inter)
    dropped: dict[str, int] = {}
    keep = np.ones(raw_rows, dtype=bool)
    end = params.window_end()
    after_window = int((inter["timestamp"].to_numpy() > end).sum()) if end is not None else 0
    if after_window:
        keep &= inter["timestamp"].to_numpy() <= end
    in_window = raw_rows - after_window

    if params.min_rating is not None:
        if "rating" not in inter:
            raise DataError(f"{table.path}: data.min_rating is set but the log has no rating column")
        low = inter["rating"].to_numpy() < params.min_rating
        dropped["below_min_rating"] = int(low.sum())
        keep &= ~low

    known = inter["item_id"].isin(loaded.items["item_id"]).to_numpy()
    if not known.all():
        if params.unknown_items == "fail":
            raise table.fail(~known, loaded.columns["item_id"], f"an item id listed in {loaded.item_table.path}")
        dropped["unknown_item"] = int((~known & keep).sum())
        keep &= known

    # Stable sort by timestamp: ties keep the order of the source file.
    order = np.argsort(inter["timestamp"].to_numpy(), kind="stable")
    order = order[keep[order]]
    pairs = inter.iloc[order][["user_id", "item_id"]]
    later = pairs.duplicated(keep="first").to_numpy()
    if later.any():
        if params.duplicates == "fail":
            mask = np.zeros(raw_rows, dtype=bool)
            mask[order[later]] = True
            raise table.fail(mask, loaded.columns["item_id"], "each (user, item) pair once (data.duplicates: fail)")
        dropped["duplicate"] = int(later.sum())
        order = order[~later]

    total_dropped = in_window - len(order)
    if len(order) == 0:
        window = f", {after_window} after data.window={params.window}" if after_window else ""
        raise DataError(f"{table.path}: no interactions left after cleaning (dropped: {dropped}{window})")
    if total_dropped > params.max_drop_fraction * in_window:
        raise DataError(
            f"{table.path}: cleaning would drop {total_dropped} of {in_window} rows ({dropped}), more than "
            f"data.max_drop_fraction={params.max_drop_fraction}"
        )
    kept = inter.iloc[order].reset_index(drop=True)
    kept.insert(0, "source_row", order)
    return Cleaned(_index(kept, loaded, params), dropped, raw_rows, after_window)


def _index(kept: pd.DataFrame, loaded: Loaded, params: DataParams) -> Dataset:
    items = loaded.items.iloc[id_order(loaded.items["item_id"].to_numpy())].reset_index(drop=True)
    try:
        text = render_texts(items, params.text_template, params.list_fields, loaded.list_sep)
    except ValueError as exc:
        raise DataError(f"{loaded.item_table.path}: {exc}") from None
    items = normalise_lists(items, params.list_fields, loaded.list_sep)
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int32))
    items.insert(2, "text", text)

    # Each distinct id is hashed once (factorize), then only the distinct ids are ordered and looked up.
    user_codes, users = pd.factorize(kept["user_id"])
    rank = np.empty(len(users), dtype=np.int32)
    rank[id_order(np.asarray(users))] = np.arange(len(users), dtype=np.int32)
    kept["user_idx"] = rank[user_codes]
    item_codes, seen = pd.factorize(kept["item_id"])
    kept["item_idx"] = pd.Index(items["item_id"]).get_indexer(seen).astype(np.int32)[item_codes]
    # kept is already in (timestamp, source order); a stable sort by user keeps that within each user.
    kept = kept.sort_values("user_idx", kind="stable").reset_index(drop=True)
    return Dataset(kept.drop(columns="source_row"), items)
