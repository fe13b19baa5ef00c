"""The towers: shapes, unit norm, causality, cold items without an ID part."""

from __future__ import annotations

import pytest
import torch

from bertrec.model.towers import TowerConfig, TwoTower, attention_mask


def config(**kw) -> TowerConfig:
    base = {
        "n_items": 12,
        "text_dim": 8,
        "dim": 16,
        "item_repr": "hybrid",
        "user_encoder": "sequence",
        "max_history": 6,
        "layers": 1,
        "heads": 2,
        "dropout": 0.0,
        "temperature": 0.1,
    }
    return TowerConfig(**(base | kw))


@pytest.mark.parametrize("item_repr", ["text", "id", "hybrid"])
def test_item_tower_shapes_and_unit_norm(item_repr):
    model = TwoTower(config(item_repr=item_repr))
    vectors = model.items(torch.randn(5, 8), torch.arange(5))
    assert vectors.shape == (5, 16)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_hybrid_leaves_the_id_part_out_for_unseen_and_new_items():
    # Given a hybrid tower where item 3 was not seen in training
    torch.manual_seed(0)
    model = TwoTower(config(item_repr="hybrid"))
    model.items.known[3] = False
    text = torch.randn(1, 8)
    text_only = torch.nn.functional.normalize(model.items.project(text), dim=-1)
    # Then item 3 and a new item beyond the catalogue are their text part alone; a seen item is not
    assert torch.allclose(model.items(text, torch.tensor([3])), text_only, atol=1e-6)
    assert torch.allclose(model.items(text, torch.tensor([20])), text_only, atol=1e-6)
    assert not torch.allclose(model.items(text, torch.tensor([4])), text_only, atol=1e-3)


def test_id_dropout_trains_some_warm_items_from_text_alone_and_never_serves_so():
    # Given a hybrid tower with id_dropout 0.5 and one text read for 400 rows of the warm item 4
    torch.manual_seed(0)
    model = TwoTower(config(item_repr="hybrid", id_dropout=0.5))
    text = torch.randn(1, 8).expand(400, 8)
    items = torch.full((400,), 4)
    text_only = torch.nn.functional.normalize(model.items.project(text[:1]), dim=-1)
    # When training: about half the rows are the text part alone, the others keep the ID part
    dropped = torch.isclose(model.items(text, items), text_only, atol=1e-6).all(dim=-1)
    assert 150 < int(dropped.sum()) < 250
    # When serving (eval mode): every row keeps it
    model.eval()
    assert not torch.isclose(model.items(text, items), text_only, atol=1e-3).all(dim=-1).any()


def test_sequence_tower_is_causal_and_handles_padding():
    torch.manual_seed(0)
    model = TwoTower(config()).eval()
    items = torch.randn(2, 6, 16)
    padding = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    out = model.user_vectors(items, padding)
    assert out.shape == (2, 6, 16) and not torch.isnan(out).any()
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 6), atol=1e-5)
    # Changing the last item leaves every earlier position's output unchanged
    changed = items.clone()
    changed[:, -1] = torch.randn(2, 16)
    again = model.user_vectors(changed, padding)
    assert torch.allclose(out[:, :-1], again[:, :-1], atol=1e-5)
    assert not torch.allclose(out[:, -1], again[:, -1], atol=1e-3)
    # What sits in padded positions does not reach the real ones
    noisy = items.clone()
    noisy[0, :2] = torch.randn(2, 16) * 100
    assert torch.allclose(out[0, 2:], model.user_vectors(noisy, padding)[0, 2:], atol=1e-5)


def test_attention_mask_blocks_future_and_padding_but_never_a_whole_row():
    padding = torch.tensor([[True, False, False]])
    mask = attention_mask(padding, heads=2)
    assert mask.shape == (2, 3, 3)
    assert mask[0].tolist() == [[False, True, True], [True, False, True], [True, False, False]]
    assert not mask.all(dim=-1).any()


def test_text_user_tower_shapes():
    model = TwoTower(config(user_encoder="text"))
    users = model.users(torch.randn(4, 8))
    assert users.shape == (4, 16)
    assert torch.allclose(users.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_unknown_choices_are_rejected():
    with pytest.raises(ValueError, match="item_repr"):
        TwoTower(config(item_repr="pixels"))
