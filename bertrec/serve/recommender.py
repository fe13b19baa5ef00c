"""Serving: one object that loads a bundle and answers ``recommend(history, k)``.

Candidates come from the FAISS index of the bundle; each recommendation carries the history item
most similar to it ("because you watched X"). ``add_items`` encodes new items from their text alone
and adds them to the index, so they can be recommended before anyone has interacted with them.

:meth:`Recommender.answer_batch` is the serving contract (what the pyfunc model and the CLI call):
it checks ``k`` and the unknown-item policy, drops or refuses unknown history items, falls back to
the user's known history, and gives a row with neither the cold-user answer: the items most
interacted with in training, marked ``basis="popular"``. Error messages name the request field and
value, never a path: they go back to the client as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertrec.errors import ServingError, UnknownItemError, UnknownUserError
from bertrec.model.bundle import load_model
from bertrec.model.embed import encode_items
from bertrec.model.index import read_index
from bertrec.model.layout import HISTORIES, INDEX, MODEL
from bertrec.model.vectors import read_embeddings
from bertrec.ranking.scoring import Histories, Scorer

# What a request may do with history items the catalogue does not know.
UNKNOWN_ITEMS = ("ignore", "fail")


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float  # the model's score; for a popularity answer, the item's share of training interactions
    because: str | None  # the history item most similar to this one (None in a popularity answer)


@dataclass(frozen=True)
class Answer:
    """One request row's answer: the picks, how they were made, the ignored history items."""

    picks: list[Recommendation]
    basis: str  # "history" (the request's), "user" (the bundle's history of user_id) or "popular" (neither)
    ignored: list[str]


class Recommender:
    """A trained bundle (towers, vectors, FAISS index, item table) ready to answer queries."""

    def __init__(self, bundle: Path, device: str = "auto") -> None:
        self.bundle = Path(bundle)
        self.scorer, self.items = load_model(self.bundle, device)
        self.vectors, _ = read_embeddings(self.bundle)  # (n, dim) unit norm
        self.index, self.index_info = read_index(self.bundle / INDEX)
        self._histories: dict[str, list[str]] | None = None
        self._popular: list[Recommendation] | None = None
        self._refresh_ids()

    def history_of(self, user_id: str) -> list[str]:
        """The items of a user known when the bundle was trained, oldest first. Raises UnknownUserError."""
        if self._histories is None:
            path = self.bundle / MODEL / HISTORIES
            frame = pd.read_parquet(path) if path.exists() else pd.DataFrame({"user_id": [], "item_id": []})
            self._histories = frame.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
        if str(user_id) not in self._histories:
            raise UnknownUserError(f"user_id {str(user_id)!r} is not a user this model was trained on")
        return self._histories[str(user_id)]

    def popular(self, k: int) -> list[Recommendation]:
        """The cold-user answer: the ``k`` items most interacted with in training (ties: lower catalogue row)."""
        if self._popular is None:
            path = self.bundle / MODEL / HISTORIES
            seen = pd.read_parquet(path, columns=["item_id"])["item_id"] if path.exists() else pd.Series([], dtype=str)
            counts = seen.map(self.position).dropna().astype(np.int64).value_counts()
            share = np.zeros(len(self.item_ids))
            share[counts.index.to_numpy()] = counts.to_numpy() / max(int(counts.sum()), 1)
            order = np.lexsort((np.arange(len(share)), -share))
            self._popular = [Recommendation(self.item_ids[i], float(share[i]), None) for i in order]
        return self._popular[:k]

    def answer_batch(
        self,
        requests: list[tuple[list[str], str | None]],
        k: int = 10,
        exclude_history: bool = True,
        unknown_items: str = "ignore",
    ) -> list[Answer]:
        """Answer ``(history, user_id)`` rows as the serving contract says (see the module's docstring).

        Raises:
            ServingError: ``k`` outside 1..catalogue size or an unknown ``unknown_items`` policy.
            UnknownItemError: an unknown history item under ``unknown_items="fail"``.
            UnknownUserError: a row with no known history item names a user the model does not know.
        """
        if not 1 <= k <= len(self.item_ids):
            raise ServingError(f"k must be between 1 and {len(self.item_ids)} (the catalogue size); got {k}")
        if unknown_items not in UNKNOWN_ITEMS:
            raise ServingError(f"unknown_items must be one of {list(UNKNOWN_ITEMS)}; got {unknown_items!r}")
        answers: list[Answer] = []
        histories, ignored = [], []
        for history, user_id in requests:
            ids = [str(i) for i in history]
            known = [i for i in ids if i in self.position]
            unknown = [i for i in ids if i not in self.position]
            if unknown and unknown_items == "fail":
                raise UnknownItemError(f"history: item id {unknown[0]!r} is not in the catalogue (unknown_items=fail)")
            ignored.append(unknown)
            if not known and user_id is not None:
                histories.append((self.history_of(user_id), "user"))
            else:
                histories.append((known, "history"))
        batch = [h for h, _ in histories if h]
        picks = iter(self.recommend_batch(batch, k, exclude_history)) if batch else iter(())
        for (history, basis), skipped in zip(histories, ignored, strict=True):
            if history:
                answers.append(Answer(next(picks), basis, skipped))
            else:
                answers.append(Answer(self.popular(k), "popular", skipped))
        return answers

    def _refresh_ids(self) -> None:
        self.item_ids = self.items["item_id"].astype(str).to_numpy()
        self.position = {item: i for i, item in enumerate(self.item_ids)}

    def to_indices(self, history: list[str]) -> np.ndarray:
        """Item ids -> catalogue rows. Raises UnknownItemError naming the id."""
        try:
            return np.array([self.position[str(i)] for i in history], dtype=np.int64)
        except KeyError as exc:
            raise UnknownItemError(f"item id {exc.args[0]!r} is not in the catalogue") from None

    def user_vectors(self, histories: list[list[str]]) -> np.ndarray:
        """(batch, dim) user vectors, computed from the stored item vectors."""
        rows = [self.to_indices(h) for h in histories]
        packed = Histories(
            np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64),
            np.concatenate(rows) if rows else np.empty(0, np.int64),
        )
        return self.user_vectors_of_rows(packed)

    def user_vectors_of_rows(self, histories: Histories) -> np.ndarray:
        """(batch, dim) user vectors of histories given as catalogue rows."""
        vectors = torch.from_numpy(self.vectors).to(self.scorer.device)
        return self.scorer.user_vectors_for(histories, vectors).float().cpu().numpy()

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True) -> list[Recommendation]:
        """Top-``k`` items for one history (oldest first)."""
        return self.recommend_batch([history], k, exclude_history)[0]

    def recommend_batch(
        self, histories: list[list[str]], k: int = 10, exclude_history: bool = True
    ) -> list[list[Recommendation]]:
        """Top-``k`` items for each history; ties in score go to the lower catalogue row.

        Scores are the model's (cosine or dot product / temperature) minus the re-ranking penalty
        when the bundle has one. The index finds the best raw scores; with a penalty
        the search deepens (doubling) until no item beyond it could still enter the top ``k``:
        its raw score is at most the deepest one found, and its penalty at least the smallest.
        """
        users = np.ascontiguousarray(self.user_vectors(histories), dtype=np.float32)
        longest = max((len(h) for h in histories), default=0)
        n_items, temperature = len(self.item_ids), self.scorer.model.config.temperature
        penalty = self.scorer.penalty
        least = float(penalty.min()) if penalty is not None else 0.0  # the smallest penalty of an unseen item
        depth = min(n_items, k + (longest if exclude_history else 0))
        exclude = [set(self.to_indices(h).tolist()) if exclude_history else set() for h in histories]
        results: list[list[Recommendation] | None] = [None] * len(histories)
        todo = np.arange(len(histories))
        while len(todo):
            scores, found = self.index.search(users[todo], depth)
            deeper = []
            for row, row_scores, row_items in zip(todo, scores, found, strict=True):
                picked = [
                    (float(s) / temperature - (float(penalty[i]) if penalty is not None else 0.0), int(i))
                    for s, i in zip(row_scores, row_items, strict=True)
                    if i >= 0 and int(i) not in exclude[row]
                ]
                picked.sort(key=lambda pair: (-pair[0], pair[1]))
                bound = float(row_scores[-1]) / temperature - least
                exact = penalty is None or depth >= n_items or (len(picked) >= k and picked[k - 1][0] > bound)
                if exact:
                    rows = self.to_indices(histories[row])
                    results[row] = [self._explain(i, s, rows) for s, i in picked[:k]]
                else:
                    deeper.append(row)
            todo, depth = np.asarray(deeper, dtype=np.int64), min(n_items, 2 * depth)
        return results

    def _explain(self, item: int, score: float, history_rows: np.ndarray) -> Recommendation:
        """The score (already on the model's scale) and the most similar history item."""
        because = None
        if len(history_rows):
            nearest = int(np.argmax(self.vectors[history_rows] @ self.vectors[item]))
            because = self.item_ids[history_rows[nearest]]
        return Recommendation(self.item_ids[item], score, because)

    def add_items(self, new_items: pd.DataFrame) -> None:
        """Encode ``new_items`` (``item_id``, ``text``) from their text and add them to the index.

        Raises:
            ServingError: an id already in the catalogue or twice in the batch, or a missing/empty text;
                nothing is added then.
        """
        missing = {"item_id", "text"} - set(new_items.columns)
        if missing:
            raise ServingError(f"new items need columns item_id and text; missing {sorted(missing)}")
        ids = new_items["item_id"].astype(str).to_numpy()
        repeated = sorted({i for i in ids if (ids == i).sum() > 1})
        if repeated:
            raise ServingError(f"new items repeat item ids: {repeated[:5]}; each id once per batch")
        clash = [i for i in ids if i in self.position]
        if clash:
            raise ServingError(f"item ids already in the catalogue: {clash[:5]}")
        empty = new_items["text"].fillna("").astype(str).str.strip() == ""
        if empty.any():
            raise ServingError(f"new items without text: {ids[empty.to_numpy()][:5].tolist()}")
        if not self.scorer.model.items.use_text:
            raise ServingError(
                "this bundle's item tower uses ids only (model.item_repr: id); it cannot encode new items"
            )
        start = len(self.item_ids)
        rows = np.arange(start, start + len(ids))
        vectors = encode_items(self.scorer, new_items["text"].tolist(), rows, progress=False)
        self.index.add(np.ascontiguousarray(vectors))
        self.vectors = np.vstack([self.vectors, vectors])
        if self.scorer.penalty is not None:  # no training interaction: what the re-ranking charges such items
            charge = np.full(len(ids), self.scorer.new_item_penalty, np.float32)
            self.scorer.penalty = np.r_[self.scorer.penalty, charge]
        added = pd.DataFrame({"item_idx": rows, "item_id": ids, "text": new_items["text"].to_numpy()})
        titles = new_items["title"] if "title" in new_items else new_items["text"]
        if "title" in self.items:
            added["title"] = titles.to_numpy()
        self.items = pd.concat([self.items, added], ignore_index=True)
        self.scorer.titles = np.concatenate([self.scorer.titles, titles.to_numpy(dtype=object)])
        self._refresh_ids()
        self._popular = None


class CatalogueScorer(Scorer):
    """A loaded bundle scoring another catalogue, matched by item id, through its served vectors.

    This is how a registered model is evaluated on data newer than itself (the promotion gate
    re-evaluates the champion on the current split): items it does not know are encoded from their
    text (:meth:`Recommender.add_items`), and every score is the model's on the stored float16
    vectors, minus its re-ranking penalty, exactly as served.

    Args:
        items: the catalogue to score (``item_idx`` = row, ``item_id``, ``text``).
        text_only: rows of ``items`` whose vector is their text part alone, as for items nobody
            interacted with in training (the cold-start path; zero vectors for an ``id`` model).
    """

    name = "bertrec"

    def __init__(self, recommender: Recommender, items: pd.DataFrame, text_only: np.ndarray | None = None) -> None:
        ids = items["item_id"].astype(str)
        unknown = items.loc[~ids.isin(recommender.position)]
        if len(unknown):
            recommender.add_items(unknown)
        self.recommender = recommender
        self.rows = recommender.to_indices(ids.tolist())  # (n_items,) current row -> recommender row
        self.vectors = recommender.vectors[self.rows].copy()  # (n_items, dim)
        if text_only is not None and len(text_only):
            scorer = recommender.scorer
            if scorer.model.items.use_text:
                beyond = np.full(len(text_only), scorer.n_items)  # no ID embedding: text part only
                texts = items["text"].to_numpy()[text_only].tolist()
                self.vectors[text_only] = encode_items(scorer, texts, beyond, progress=False)
            else:
                self.vectors[text_only] = 0.0

    def fit(self, train) -> CatalogueScorer:  # already trained
        return self

    def score(self, histories: Histories) -> np.ndarray:
        mapped = Histories(histories.indptr, self.rows[histories.items])
        users = self.recommender.user_vectors_of_rows(mapped)  # (batch, dim)
        scores = (users @ self.vectors.T) / self.recommender.scorer.model.config.temperature
        penalty = self.recommender.scorer.penalty
        return scores - penalty[self.rows] if penalty is not None else scores
