"""The bundle end to end on synthetic data: train, save, embed, index, serve, add a new item."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bertrec.data.split import split_loo
from bertrec.errors import ServingError, UnknownItemError, UnknownUserError
from bertrec.model.bundle import load_model, save_model, training_record
from bertrec.model.embed import embed_catalogue
from bertrec.model.index import write_index
from bertrec.model.layout import INDEX
from bertrec.model.train import train
from bertrec.model.vectors import write_embeddings
from bertrec.serve.recommender import Recommender

from builders import cyclic_dataset, tiny_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_encoder):
    from bertrec.config import load_params

    from conftest import paths_under

    root = tmp_path_factory.mktemp("bundle")
    params = load_params(
        root / "absent.yaml",
        [
            *paths_under(root),
            *tiny_model(tiny_encoder),
            "train.epochs=20",
        ],
    )
    data = cyclic_dataset()
    split = split_loo(data)
    result = train(params, split, data.items, root / "work")
    record = training_record(result, params, "loo")
    save_model(result.scorer, data.items, params.paths.bundle, record, data.interactions)
    scorer, items = load_model(params.paths.bundle)
    vectors, stats = embed_catalogue(scorer, items)
    write_embeddings(vectors, items, params.paths.bundle, stats)
    write_index(vectors, params.paths.bundle / INDEX, "Flat")
    return params.paths.bundle, result, data, split


def test_saved_model_scores_like_the_trained_one(bundle):
    path, result, _, split = bundle
    assert result.best_valid["NDCG@10"] > 0.8  # the walk was learned
    loaded, _ = load_model(path)
    from bertrec.ranking.evaluate import build_cases

    context = build_cases(split, "valid").context.slice(0, 8)
    assert np.allclose(loaded.score(context), result.scorer.score(context), atol=1e-4)


def test_recommend_excludes_history_and_explains_from_it(bundle):
    path, _, _, _ = bundle
    recommender = Recommender(path)
    history = ["3", "4", "5", "6"]
    picks = recommender.recommend(history, k=5)
    assert len(picks) == 5
    assert not {p.item_id for p in picks} & set(history)
    assert all(p.because in history for p in picks)
    assert "7" in [p.item_id for p in picks[:2]]  # the learned next step of the walk
    assert [p.score for p in picks] == sorted((p.score for p in picks), reverse=True)


def test_recommend_matches_full_scoring(bundle):
    path, _, _, _ = bundle
    recommender = Recommender(path)
    from bertrec.ranking.scoring import Histories

    history = ["10", "11", "12"]
    rows = recommender.to_indices(history)
    scores = recommender.scorer.score(Histories(np.array([0, 3]), rows))[0]
    scores[rows] = -np.inf
    expected = [recommender.item_ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert [p.item_id for p in recommender.recommend(history, k=5)] == expected


def test_reranked_recommendations_match_penalised_full_scoring(bundle):
    # Given a popularity penalty that reorders the lists (strong on every third item)
    path, _, _, _ = bundle
    recommender = Recommender(path)
    from bertrec.ranking.rerank import popularity_penalty
    from bertrec.ranking.scoring import Histories

    histories = [["10", "11", "12"], ["3", "4"], ["40", "41", "42", "43", "44"]]
    plain = [[p.item_id for p in r] for r in recommender.recommend_batch(histories, k=10)]
    counts = np.where(np.arange(len(recommender.item_ids)) % 3 == 0, 1000, 0)
    recommender.scorer.penalty = popularity_penalty(counts, 2.0)
    # When the served model answers (the index search deepens until its top 10 are certain)
    served = recommender.recommend_batch(histories, k=10)
    # Then each list is the full, penalised scoring's, and the penalty changed them
    for history, answer in zip(histories, served, strict=True):
        rows = recommender.to_indices(history)
        scores = recommender.scorer.score(Histories(np.array([0, len(rows)]), rows))[0]
        scores[rows] = -np.inf
        assert [p.item_id for p in answer] == [recommender.item_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert [[p.item_id for p in r] for r in served] != plain


def test_unknown_history_item_is_named(bundle):
    recommender = Recommender(bundle[0])
    with pytest.raises(UnknownItemError, match="'nope'"):
        recommender.recommend(["1", "nope"])


def test_answers_follow_the_serving_contract(bundle):
    path, _, data, _ = bundle
    recommender = Recommender(path)
    known = ["3", "4", "5", "6"]
    history, cold, ignored, user = recommender.answer_batch(
        [(known, None), ([], None), (["nope", *known], None), (["nope"], "0")], k=3
    )
    # A history is answered from it; unknown items are left out and reported under the default policy
    assert history.basis == "history" and history.picks == recommender.recommend(known, 3)
    assert ignored.basis == "history" and ignored.ignored == ["nope"] and ignored.picks == history.picks
    # A row without a known item falls back to the user's history, then to training popularity
    assert user.basis == "user" and user.picks == recommender.recommend(recommender.history_of("0"), 3)
    counts = data.interactions["item_id"].astype(str).value_counts()
    assert cold.basis == "popular" and all(p.because is None for p in cold.picks)
    assert [p.score for p in cold.picks] == sorted(counts.to_numpy()[:3] / counts.sum(), reverse=True)
    assert {p.item_id for p in cold.picks} <= set(counts.index[counts >= counts.iloc[2]])
    # What cannot be answered as asked names the field and the value
    size = len(recommender.item_ids)
    for k in (0, -1, size + 1):
        with pytest.raises(ServingError, match=rf"k must be between 1 and {size} \(the catalogue size\); got {k}"):
            recommender.answer_batch([(known, None)], k=k)
    with pytest.raises(
        UnknownItemError, match=r"history: item id 'nope' is not in the catalogue \(unknown_items=fail\)"
    ):
        recommender.answer_batch([(["nope", "3"], None)], unknown_items="fail")
    with pytest.raises(UnknownUserError, match="user_id 'ghost' is not a user this model was trained on"):
        recommender.answer_batch([([], "ghost")])
    with pytest.raises(ServingError, match="unknown_items must be one of"):
        recommender.answer_batch([(known, None)], unknown_items="skip")


def test_add_items_makes_a_new_item_retrievable_by_its_text(bundle):
    # Given a new item whose text is identical to item 7's, which nobody has interacted with
    recommender = Recommender(bundle[0])
    text7 = recommender.items.loc[recommender.items["item_id"] == "7", "text"].item()
    before = recommender.index.ntotal
    recommender.add_items(pd.DataFrame({"item_id": ["new-1"], "text": [text7]}))
    # Then the index grows, the new item's vector is item 7's text part, and it can be recommended
    assert recommender.index.ntotal == before + 1
    query = recommender.vectors[-1:]
    _, found = recommender.index.search(query, 1)
    assert recommender.item_ids[found[0, 0]] == "new-1"
    picks = recommender.recommend(["3", "4", "5", "6"], k=recommender.index.ntotal - 4)
    assert "new-1" in {p.item_id for p in picks}
    with pytest.raises(ServingError, match="already in the catalogue"):
        recommender.add_items(pd.DataFrame({"item_id": ["new-1"], "text": ["x"]}))
    # A batch that names one new id twice is refused whole, naming the id
    with pytest.raises(ServingError, match=r"new items repeat item ids: \['new-2'\]"):
        recommender.add_items(pd.DataFrame({"item_id": ["new-2", "new-3", "new-2"], "text": ["a", "b", "c"]}))
    assert recommender.index.ntotal == before + 1 and "new-2" not in set(recommender.item_ids)
