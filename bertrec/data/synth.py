"""Synthetic interaction logs of any size, with structure a sequence model can learn and a baseline cannot fake.

``bertrec synth`` writes them in the ``table`` format (Parquet) or in the MovieLens ``ratings.csv`` /
``movies.csv`` format (the ml-25m / ml-latest reader), so every stage can be run and timed at the
scale of real catalogues where the real archives cannot be downloaded.

The generative model (every draw from one seeded generator):

1. **Topics.** ``topics`` latent topics. Each topic owns a vocabulary of ``TOPIC_WORDS`` made-up
   words and two genre names; there is also a shared vocabulary of generic words.
2. **Items.** Each item belongs to one topic (uniformly). Its popularity weight is Zipfian,
   ``w = rank^-item_zipf`` over a random ranking of the whole catalogue. Its title is 2-4 words,
   each from its topic's vocabulary with probability ``topic_word_share`` (else generic), so
   **text predicts topic**; its genres are its topic's two genres, plus a random third sometimes.
3. **Users.** Activity is log-normal (heavy-tailed), scaled so the rows sum to ``rows``, with
   at least ``MIN_ROWS_PER_USER`` per user and at most a quarter of the catalogue. Each user likes
   ``FAVOURITES`` distinct topics, drawn with weight ``(t + 1)^-topic_zipf`` (some topics are
   mainstream), and splits their attention over them with Dirichlet(1) weights.
4. **Sequences.** A user's history is a chain of sessions: a new session starts with probability
   ``new_session``; at a session start the current topic is redrawn from the user's favourites
   with probability ``topic_switch`` (0.05 inside a session). Each interaction picks an item of the
   current topic by popularity. So **order matters**: the recent items say which topic comes next,
   which a sequence model reads and item co-occurrence (``itemknn``) only averages over.
5. **Time.** Gaps are exponential: minutes inside a session, days between sessions, from a
   per-user start date; ratings are 3-5 in the user's first favourite topic, 1-5 otherwise.

Each (user, item) pair appears once: repeats are redrawn (from the topic, then from the catalogue).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bertrec.errors import ConfigError
from bertrec.io import atomic_dir

log = logging.getLogger(__name__)

UNQUOTED = pacsv.WriteOptions(quoting_style="none")  # numbers only, as in ml-25m
QUOTED = pacsv.WriteOptions(quoting_style="needed")

FORMATS = ("table", "movielens")
TOPIC_WORDS = 24
GENERIC_WORDS = 400
FAVOURITES = 3
MIN_ROWS_PER_USER = 5
START = 946_684_800  # 2000-01-01 UTC
SPAN_DAYS = 3 * 365
GENRES = (
    "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Film-Noir Horror IMAX "
    "Musical Mystery Romance Sci-Fi Thriller War Western Biography History Sport Family Music"
).split()
_ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr kr pl sh st th tr".split()
_VOWELS = "a e i o u ai ea io ou".split()
_CODAS = "- n r s l m x nd rk st".split()


@dataclass(frozen=True)
class SynthSpec:
    """Sizes and shape of a synthetic log; see the module docstring for what each knob does."""

    rows: int
    items: int
    users: int
    seed: int = 0
    topics: int = 50
    item_zipf: float = 1.0
    topic_zipf: float = 0.8
    topic_word_share: float = 0.7
    new_session: float = 0.15
    topic_switch: float = 0.7

    @property
    def n_topics(self) -> int:
        """``topics``, but never more than one per ten items."""
        return max(1, min(self.topics, self.items // 10))

    def check(self) -> None:
        if self.items < 10 or self.users < 1:
            raise ConfigError(f"synth needs at least 10 items and 1 user; got items={self.items}, users={self.users}")
        if self.rows < MIN_ROWS_PER_USER * self.users:
            raise ConfigError(
                f"synth: rows={self.rows} is too few for users={self.users} "
                f"(each user needs at least {MIN_ROWS_PER_USER}); lower --users or raise --rows"
            )
        if self.rows > self.users * (self.items // 4):
            raise ConfigError(
                f"synth: rows={self.rows} is more than users x items/4 = {self.users * (self.items // 4)}; "
                "raise --items or --users"
            )


@dataclass(frozen=True)
class SynthLog:
    interactions: pd.DataFrame  # user_id, item_id, timestamp, rating; by user, then time
    items: pd.DataFrame  # item_id, title, year, genres (a list), topic


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct pronounceable made-up words."""
    out: set[str] = set()
    while len(out) < n:
        k = 2 * (n - len(out))
        syllables = [
            rng.choice(_ONSETS, k) + rng.choice(_VOWELS, k) + np.char.replace(rng.choice(_CODAS, k), "-", "")
            for _ in range(2)
        ]
        out.update(np.char.capitalize(syllables[0] + syllables[1]).tolist())
    return np.array(sorted(out)[:n], dtype=object)[rng.permutation(n)]


def _catalogue(spec: SynthSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Items, each item's topic, and its popularity weight."""
    n, k = spec.items, spec.n_topics
    vocab = _words(rng, k * TOPIC_WORDS + GENERIC_WORDS)
    topic_vocab = vocab[: k * TOPIC_WORDS].reshape(k, TOPIC_WORDS)
    generic = vocab[k * TOPIC_WORDS :]
    topic = rng.permutation(n) % k  # every topic has items
    weight = 1.0 / np.power(rng.permutation(n) + 1.0, spec.item_zipf)
    n_words = rng.integers(2, 5, n)
    slots = np.arange(4)[None, :] < n_words[:, None]  # (n, 4)
    from_topic = rng.random((n, 4)) < spec.topic_word_share
    words = np.where(
        from_topic,
        topic_vocab[topic[:, None], rng.integers(0, TOPIC_WORDS, (n, 4))],
        generic[rng.integers(0, len(generic), (n, 4))],
    )
    titles = [" ".join(w[s]) for w, s in zip(words, slots, strict=True)]
    topic_genres = np.stack([rng.choice(len(GENRES), 2, replace=False) for _ in range(k)])  # (k, 2)
    extra = np.where(rng.random(n) < 0.3, rng.integers(0, len(GENRES), n), -1)
    genres = [
        [GENRES[g] for g in dict.fromkeys([*topic_genres[t], e] if e >= 0 else topic_genres[t])]
        for t, e in zip(topic, extra, strict=True)
    ]
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1, dtype=np.int64),
            "title": titles,
            "year": rng.integers(1950, 2024, n),
            "genres": genres,
            "topic": topic,
        }
    )
    return items, topic, weight


def _activity(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Rows per user: log-normal, summing to ``rows`` exactly, within [MIN_ROWS_PER_USER, items / 4]."""
    cap = spec.items // 4
    raw = rng.lognormal(0.0, 1.0, spec.users)
    counts = np.full(spec.users, MIN_ROWS_PER_USER, dtype=np.int64)
    spare = spec.rows - counts.sum()
    for _ in range(20):  # water-filling: share the spare rows by weight, clip at the cap, repeat
        room = counts < cap
        if spare <= 0 or not room.any():
            break
        add = np.minimum(np.floor(spare * raw * room / raw[room].sum()).astype(np.int64), cap - counts)
        if add.sum() == 0:
            break
        counts += add
        spare = spec.rows - counts.sum()
    while spare > 0:  # the rounding remainder: one more row each for the heaviest users with room
        room = np.flatnonzero(counts < cap)
        top = room[np.argsort(-raw[room], kind="stable")[:spare]]
        counts[top] += 1
        spare -= len(top)
    return counts


class _TopicSampler:
    """Draws items of given topics with probability proportional to their popularity weight."""

    def __init__(self, topic: np.ndarray, weight: np.ndarray, n_topics: int) -> None:
        self.order = np.argsort(topic, kind="stable")  # items grouped by topic
        sizes = np.bincount(topic, minlength=n_topics)
        ends = np.cumsum(sizes)
        cw = np.r_[0.0, np.cumsum(weight[self.order])]
        before, total = cw[ends - sizes], cw[ends] - cw[ends - sizes]
        within = cw[1:] - np.repeat(before, sizes)
        self.cum = topic[self.order] + within / np.repeat(total, sizes)  # topic t's items span (t, t + 1]

    def draw(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        at = np.searchsorted(self.cum, topics + (1.0 - rng.random(len(topics))), side="left")
        return self.order[np.minimum(at, len(self.order) - 1)]


def generate(spec: SynthSpec) -> SynthLog:
    """A synthetic log drawn from the model of the module docstring."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    items, item_topic, weight = _catalogue(spec, rng)
    k = spec.n_topics
    counts = _activity(spec, rng)
    user = np.repeat(np.arange(spec.users, dtype=np.int64), counts)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    n = len(user)

    f = min(FAVOURITES, k)
    # Weighted draws without replacement (Gumbel top-f): topic t is liked in proportion to (t + 1)^-topic_zipf.
    keys = -spec.topic_zipf * np.log(np.arange(1, k + 1)) + rng.gumbel(size=(spec.users, k))
    favourites = np.argsort(-keys, axis=1)[:, :f]  # (U, f) distinct topics
    fav_cum = np.cumsum(rng.dirichlet(np.ones(f), spec.users), axis=1)  # (U, f)
    session_start = rng.random(n) < spec.new_session
    session_start[first] = True
    switch = np.where(session_start, rng.random(n) < spec.topic_switch, rng.random(n) < 0.05)
    switch[first] = True
    pick = (rng.random(n)[:, None] > fav_cum[user]).sum(axis=1).clip(max=f - 1)
    drawn = favourites[user, pick]
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n), 0))
    topic = drawn[last_switch]

    sampler = _TopicSampler(item_topic, weight, k)
    item = sampler.draw(topic, rng)
    for attempt in range(30):  # redraw repeated (user, item) pairs: from the topic, then anywhere
        key = user * spec.items + item
        _, first_seen = np.unique(key, return_index=True)
        repeat = np.ones(n, dtype=bool)
        repeat[first_seen] = False
        if not repeat.any():
            break
        if attempt < 10:
            item[repeat] = sampler.draw(topic[repeat], rng)
        else:
            item[repeat] = rng.integers(0, spec.items, int(repeat.sum()))
    else:
        raise RuntimeError("synth: could not draw distinct items per user; raise --items")

    # Between sessions: a mean gap that spreads each user's sessions over about SPAN_DAYS.
    session_gap = np.repeat(SPAN_DAYS * 86_400 / (counts * spec.new_session + 1), counts)
    gaps = np.where(session_start, rng.exponential(session_gap), rng.exponential(300, n)).astype(np.int64) + 1
    gaps[first] = rng.integers(0, SPAN_DAYS * 86_400, spec.users)
    timestamp = START + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], counts)
    liked = topic == favourites[user, 0]
    rating = np.where(liked, rng.integers(3, 6, n), rng.integers(1, 6, n))
    interactions = pd.DataFrame(
        {
            "user_id": user + 1,
            "item_id": item + 1,
            "timestamp": timestamp,
            "rating": rating.astype(np.int8),
        }
    )
    return SynthLog(interactions, items)


def write(synth: SynthLog, out: Path, fmt: str) -> dict[str, Path]:
    """Write ``synth`` into ``out`` atomically; returns the files written by role (``interactions``, ``items``).

    ``table``: ``interactions.parquet`` and ``items.parquet`` (``genres`` joined by ``|``).
    ``movielens``: ``ratings.csv`` (userId, movieId, rating, timestamp) and ``movies.csv``
    (movieId, ``"Title (year)"``, genres joined by ``|``), as in ml-25m.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown synth format {fmt!r}; valid: {', '.join(FORMATS)}")
    items = synth.items
    genres = ["|".join(g) for g in items["genres"]]
    names = {"table": ("interactions.parquet", "items.parquet"), "movielens": ("ratings.csv", "movies.csv")}[fmt]
    with atomic_dir(Path(out)) as tmp:
        if fmt == "table":
            pq.write_table(pa.Table.from_pandas(synth.interactions, preserve_index=False), tmp / names[0])
            table = items[["item_id", "title", "year"]].assign(genres=genres)
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp / names[1])
        else:
            ratings = synth.interactions.rename(columns={"user_id": "userId", "item_id": "movieId"})
            ratings = ratings[["userId", "movieId", "rating", "timestamp"]].assign(
                rating=ratings["rating"].astype(np.float32)
            )
            pacsv.write_csv(pa.Table.from_pandas(ratings, preserve_index=False), tmp / names[0], UNQUOTED)
            movies = pd.DataFrame(
                {
                    "movieId": items["item_id"],
                    "title": items["title"] + " (" + items["year"].astype(str) + ")",
                    "genres": genres,
                }
            )
            pacsv.write_csv(pa.Table.from_pandas(movies, preserve_index=False), tmp / names[1], QUOTED)
    return {"interactions": Path(out) / names[0], "items": Path(out) / names[1]}
