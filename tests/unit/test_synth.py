"""`bertrec synth`: the generative model's promises, and its files through the real readers."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from bertrec.cli import app
from bertrec.config import ColumnParams
from bertrec.data.formats import read_movielens, read_tables
from bertrec.data.synth import MIN_ROWS_PER_USER, TOPIC_WORDS, SynthSpec, generate
from bertrec.errors import ConfigError

SPEC = SynthSpec(rows=60_000, items=3_000, users=600, seed=5, topics=20)


@pytest.fixture(scope="module")
def synth():
    return generate(SPEC)


def test_sizes_and_one_row_per_pair(synth):
    log = synth.interactions
    assert len(log) == SPEC.rows and len(synth.items) == SPEC.items
    assert log["user_id"].nunique() == SPEC.users
    assert not log.duplicated(["user_id", "item_id"]).any()
    assert log.groupby("user_id").size().min() >= MIN_ROWS_PER_USER
    assert log.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


def test_popularity_and_activity_are_heavy_tailed(synth):
    counts = synth.interactions["item_id"].value_counts().to_numpy()
    assert counts[: SPEC.items // 100].sum() > 0.05 * SPEC.rows  # the top 1% of items: 5x their uniform share
    activity = synth.interactions.groupby("user_id").size()
    assert activity.max() > 5 * activity.median()


def test_text_predicts_topic(synth):
    # Items of one topic share its vocabulary: a title word names the item's topic far above chance
    items = synth.items
    word_topics: dict[str, set[int]] = {}
    for title, topic in zip(items["title"], items["topic"], strict=True):
        for word in title.split():
            word_topics.setdefault(word, set()).add(topic)
    topical = [w for w, topics in word_topics.items() if len(topics) == 1]
    assert len(topical) >= SPEC.topics * TOPIC_WORDS * 0.9
    genres = items.groupby("topic")["genres"].apply(lambda g: set(g.iloc[0][:2]))
    assert genres.map(len).eq(2).all()


def test_order_matters_within_sessions(synth):
    # Consecutive items of a user share a topic much more often than two random items of that user
    topic = synth.items.set_index("item_id")["topic"]
    log = synth.interactions
    t = topic.loc[log["item_id"]].to_numpy()
    same_user = log["user_id"].to_numpy()[1:] == log["user_id"].to_numpy()[:-1]
    consecutive = (t[1:] == t[:-1])[same_user].mean()
    shuffled = log.assign(t=t).groupby("user_id")["t"].transform(lambda s: s.sample(frac=1, random_state=0).to_numpy())
    random_pairs = (shuffled.to_numpy()[1:] == shuffled.to_numpy()[:-1])[same_user].mean()
    assert consecutive > random_pairs + 0.25


def test_seeded():
    small = SynthSpec(rows=2_000, items=200, users=50, seed=1)
    assert generate(small).interactions.equals(generate(small).interactions)
    other = SynthSpec(rows=2_000, items=200, users=50, seed=2)
    assert not generate(small).interactions.equals(generate(other).interactions)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SynthSpec(rows=100, items=50, users=30), "rows=100 is too few for users=30"),
        (SynthSpec(rows=10_000, items=40, users=20), "more than users x items/4"),
    ],
)
def test_impossible_sizes_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        generate(spec)


@pytest.mark.parametrize("fmt", ["movielens", "table"])
def test_files_read_back_through_the_product_readers(tmp_path, fmt):
    # Given a synthetic log written by the CLI
    out = tmp_path / fmt
    args = ["synth", "--out", str(out), "--rows", "3000", "--items", "300", "--users", "100", "--format", fmt]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # When the reader of that format loads it
    if fmt == "movielens":
        loaded = read_movielens(out)
    else:
        fields = {"title": "title", "year": "year", "genres": "genres"}
        loaded = read_tables(
            out / "interactions.parquet", out / "items.parquet", ColumnParams(), fields, ",", "utf-8", "|"
        )
    # Then every row and item is there, with the title, year and genres that were drawn
    expected = generate(SynthSpec(rows=3000, items=300, users=100))
    assert len(loaded.interactions) == 3000 and len(loaded.items) == 300
    got = loaded.interactions["timestamp"].astype(np.int64).to_numpy()
    assert np.array_equal(got, expected.interactions["timestamp"].to_numpy())
    items = loaded.items.set_index(loaded.items["item_id"].astype(np.int64)).sort_index()
    assert items["title"].tolist() == expected.items["title"].tolist()
    assert items["year"].astype(int).tolist() == expected.items["year"].tolist()
    assert items["genres"].tolist() == ["|".join(g) for g in expected.items["genres"]]
