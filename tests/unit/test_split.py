"""bertrec.data.split on synthetic logs: loo, ratio (RecBole's rounding), cold_items, and IO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bertrec.config import SplitParams
from bertrec.data.dataset import Dataset
from bertrec.data.split import (
    COLUMNS,
    ratio_counts,
    read_split,
    split_cold_items,
    split_loo,
    split_ratio,
    write_split,
)


def make_dataset(lengths: list[int], n_items: int = 40, seed: int = 0) -> Dataset:
    """A log sorted by user then time, with timestamp ties; user u has lengths[u] rows of distinct items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u, n in enumerate(lengths):
        items = rng.choice(n_items, n, replace=False)
        times = np.sort(rng.integers(0, max(2, n // 2), n))  # few distinct values: many ties
        rows += [(f"u{u}", f"i{i}", int(t), u, int(i)) for i, t in zip(items, times, strict=True)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "user_idx", "item_idx"])
    items = pd.DataFrame({"item_idx": range(n_items), "item_id": [f"i{i}" for i in range(n_items)]})
    items["text"] = "item " + items["item_id"]
    return Dataset(inter, items)


def keys(frame: pd.DataFrame) -> set[tuple[int, int]]:
    """Rows as (user, seq): unique within a log."""
    return set(zip(frame["user_idx"].tolist(), frame["seq"].tolist(), strict=True))


def recbole_counts(tot: int, ratios: tuple[float, ...]) -> list[int]:
    """RecBole's ``_calcu_split_ids`` rule, verbatim."""
    cnt = [int(r * tot) for r in ratios]
    cnt[0] = tot - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * tot < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


LENGTHS = [1, 2, 3, 4, 7, 12, 20, 5, 9, 30]


@pytest.fixture
def data() -> Dataset:
    return make_dataset(LENGTHS)


# --- loo -----------------------------------------------------------------------------------------


def test_split_loo_holds_out_last_two_rows(data: Dataset) -> None:
    # When split leave-one-out
    split = split_loo(data)

    # Then, per user, the last row (in row order, so ties keep source order) is test, the one before valid
    inter = data.interactions.reset_index(drop=True)
    expected = {"train": [], "valid": [], "test": []}
    for _, rows in inter.groupby("user_idx", sort=True):
        idx = rows.index.tolist()
        if len(idx) >= 3:
            expected["test"].append(idx[-1])
            expected["valid"].append(idx[-2])
            idx = idx[:-2]
        expected["train"] += idx
    for part in ("train", "valid", "test"):
        got = getattr(split, part)
        assert sorted(got.index.tolist()) == sorted(expected[part]), part
        columns = ["user_idx", "item_idx", "timestamp"]
        pd.testing.assert_frame_equal(got[columns], inter.loc[sorted(expected[part]), columns])
    assert (split.n_users, split.n_items) == (len(LENGTHS), 40)


def test_split_loo_short_users_stay_in_train(data: Dataset) -> None:
    # When split leave-one-out
    split = split_loo(data)

    # Then users 0 and 1 (1 and 2 rows) are only in train; every other user once in valid and test
    held = set(split.valid["user_idx"]) | set(split.test["user_idx"])
    assert held == {u for u, n in enumerate(LENGTHS) if n >= 3}
    assert (split.train["user_idx"] == 0).sum() == 1 and (split.train["user_idx"] == 1).sum() == 2
    assert split.valid["user_idx"].is_unique and split.test["user_idx"].is_unique


def test_split_loo_ties_keep_source_order() -> None:
    # Given one user whose three rows share a timestamp, items in source order 5, 3, 9
    inter = pd.DataFrame(
        {"user_id": ["a"] * 3, "item_id": ["5", "3", "9"], "timestamp": [7, 7, 7], "user_idx": 0, "item_idx": [5, 3, 9]}
    )
    items = pd.DataFrame({"item_idx": range(10), "item_id": [str(i) for i in range(10)], "text": "t"})

    # When split
    split = split_loo(Dataset(inter, items))

    # Then the later source row is held out later
    assert split.train["item_idx"].tolist() == [5]
    assert split.valid["item_idx"].tolist() == [3]
    assert split.test["item_idx"].tolist() == [9]


@pytest.mark.parametrize("which", ["loo", "ratio", "cold_items"])
def test_seq_is_position_in_user_history(data: Dataset, which: str) -> None:
    # When split in any way
    params = SplitParams(seed=3, cold_fraction=0.2)
    if which == "loo":
        split = split_loo(data)
    else:
        split = split_ratio(data, params) if which == "ratio" else split_cold_items(data, params)

    # Then each row's seq is its position in its user's full log, and the item there matches
    inter = data.interactions.reset_index(drop=True)
    position = inter.groupby("user_idx").cumcount()
    for part in (split.train, split.valid, split.test):
        assert part["seq"].tolist() == position[part.index].tolist()
        lookup = inter.set_index([inter["user_idx"], position])["item_idx"]
        assert lookup.loc[list(zip(part["user_idx"], part["seq"], strict=True))].tolist() == part["item_idx"].tolist()


# --- ratio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratios", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.25, 0.25), (0.9, 0.05, 0.05), (0.7, 0.3, 0.0)]
)
def test_ratio_counts_match_recbole(ratios: tuple[float, float, float]) -> None:
    # Given user sizes 0..60
    totals = np.arange(61)

    # When sizes are computed
    train, valid, test = ratio_counts(totals, ratios)

    # Then each equals RecBole's rule
    got = np.stack([train, valid, test], axis=1).tolist()
    assert got == [recbole_counts(int(t), ratios) for t in totals]


def test_ratio_counts_by_hand() -> None:
    # Then 1 and 2 rows stay in train, 3 rows give one each, 10 rows give 8/1/1
    train, valid, test = ratio_counts(np.array([1, 2, 3, 10, 11]), (0.8, 0.1, 0.1))
    assert train.tolist() == [1, 1, 1, 8, 9]
    assert valid.tolist() == [0, 0, 1, 1, 1]
    assert test.tolist() == [0, 1, 1, 1, 1]


def test_split_ratio_is_seeded(data: Dataset) -> None:
    # When split twice with one seed and once with another
    a = split_ratio(data, SplitParams(seed=7))
    b = split_ratio(data, SplitParams(seed=7))
    c = split_ratio(data, SplitParams(seed=8))

    # Then the same seed gives the same split, another seed another one
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(a, part), getattr(b, part))
    assert any(keys(getattr(a, part)) != keys(getattr(c, part)) for part in ("train", "valid", "test"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_ratio_partitions_each_user_by_ratio_counts(data: Dataset, seed: int) -> None:
    # When split 80/10/10
    split = split_ratio(data, SplitParams(seed=seed, ratio=(0.8, 0.1, 0.1)))

    # Then the parts are disjoint and cover the log
    parts = [keys(split.train), keys(split.valid), keys(split.test)]
    assert sum(len(p) for p in parts) == len(data.interactions)
    assert set.union(*parts) == keys(data.interactions.assign(seq=data.interactions.groupby("user_idx").cumcount()))
    # And each user's part sizes are ratio_counts of its length
    expected = ratio_counts(np.array(LENGTHS), (0.8, 0.1, 0.1))
    for frame, sizes in zip((split.train, split.valid, split.test), expected, strict=True):
        assert np.bincount(frame["user_idx"], minlength=len(LENGTHS)).tolist() == sizes.tolist()


# --- cold_items ----------------------------------------------------------------------------------


def test_split_cold_items_puts_every_new_item_row_in_test(data: Dataset) -> None:
    # When 20% of 40 items are made new
    split = split_cold_items(data, SplitParams(seed=11, cold_fraction=0.2))

    # Then 8 distinct new items are drawn
    new = set(split.new_items.tolist())
    assert len(new) == len(split.new_items) == 8
    # And no new item is in train or valid, every row with one is in test, and test holds nothing else
    assert not new & set(split.train["item_idx"]) and not new & set(split.valid["item_idx"])
    is_new = data.interactions["item_idx"].isin(new)
    assert len(split.test) == int(is_new.sum())
    assert set(split.test["item_idx"]) <= new
    assert len(split.train) + len(split.valid) + len(split.test) == len(data.interactions)


def test_split_cold_items_valid_is_last_warm_row(data: Dataset) -> None:
    # When split into cold items
    split = split_cold_items(data, SplitParams(seed=11, cold_fraction=0.2))

    # Then users with >= 3 warm rows have their last warm row as valid, others none
    warm = pd.concat([split.train, split.valid])
    for u, rows in warm.groupby("user_idx"):
        held = split.valid[split.valid["user_idx"] == u]
        if len(rows) >= 3:
            assert held["seq"].tolist() == [rows["seq"].max()]
        else:
            assert held.empty


def test_split_cold_items_is_seeded(data: Dataset) -> None:
    # When drawn twice with one seed and once with another
    a = split_cold_items(data, SplitParams(seed=5))
    b = split_cold_items(data, SplitParams(seed=5))
    c = split_cold_items(data, SplitParams(seed=6))

    # Then the same seed gives the same new items, another seed other ones
    np.testing.assert_array_equal(a.new_items, b.new_items)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert a.new_items.tolist() != c.new_items.tolist()


# --- write / read --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["loo", "cold_items"])
def test_write_read_round_trip(data: Dataset, tmp_path, which: str) -> None:
    # Given a split written to disk
    split = split_loo(data) if which == "loo" else split_cold_items(data, SplitParams(seed=2))
    folder = write_split(split, tmp_path)

    # When read back
    back = read_split(tmp_path, which, data.n_users, data.n_items)

    # Then every part, the sizes and the new items are the same
    assert folder == tmp_path / which
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(
            getattr(back, part).reset_index(drop=True), getattr(split, part)[COLUMNS].reset_index(drop=True)
        )
    assert (back.name, back.n_users, back.n_items) == (which, split.n_users, split.n_items)
    if which == "loo":
        assert back.new_items is None
    else:
        np.testing.assert_array_equal(back.new_items, split.new_items)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_read_split_missing_raises(tmp_path) -> None:
    # Given an empty folder; When a split is read; Then it says what is missing
    with pytest.raises(FileNotFoundError, match="train.parquet"):
        read_split(tmp_path, "loo", 3, 4)
