"""BEiT's relative position bias cached per token grid: the same tensors as the uncached gather,
recomputed when the weights or the input size change, never cached where it must not be."""

import pytest
import torch
from detectron2.modeling import build_model

from conftest import rgbt_pair
from hapnet_d2.modeling.backbone import timm_vit
from hapnet_d2.modeling.backbone.timm_vit import (
    TimmViT,
    cached_relative_position_bias,
    clear_relative_position_bias_cache,
    relative_position_bias,
    relative_position_bias_cache_of,
)


@pytest.fixture
def beit():
    torch.manual_seed(0)
    vit = TimmViT(
        name="beitv2_base_patch16_224",
        img_size=(64, 64),
        stages=[[0, 0], [1, 1], [2, 2], [3, 3]],
        extra_kwargs={"embed_dim": 48, "depth": 4, "num_heads": 3},
    ).eval()
    for block in vit.vfm.blocks:  # non-zero tables (timm initialises them to zero)
        torch.nn.init.normal_(block.attn.relative_position_bias_table)
    return vit


def _count_gathers(monkeypatch):
    """Count the calls of the uncached gather made through the cached entry point."""
    calls = []
    original = timm_vit.relative_position_bias

    def counting(attn):
        calls.append(attn)
        return original(attn)

    monkeypatch.setattr(timm_vit, "relative_position_bias", counting)
    return calls


def test_cached_bias_is_computed_once_and_equals_the_gather(beit, monkeypatch):
    attn = beit.vfm.blocks[0].attn
    calls = _count_gathers(monkeypatch)
    with torch.no_grad():
        first = cached_relative_position_bias(attn)
        second = cached_relative_position_bias(attn)
    assert len(calls) == 1 and second is first
    assert torch.equal(first, relative_position_bias(attn))
    assert first.shape == (1, 3, 17, 17)


def test_cache_is_invalidated_by_in_place_updates_load_and_dtype(beit, monkeypatch):
    attn = beit.vfm.blocks[0].attn
    calls = _count_gathers(monkeypatch)
    with torch.no_grad():
        before = cached_relative_position_bias(attn)
        attn.relative_position_bias_table.add_(1.0)  # in place: same tensor, new version
        after_add = cached_relative_position_bias(attn)
        torch.testing.assert_close(after_add, before + 1.0)
        state = {k: torch.randn_like(v) if k.endswith("bias_table") else v
                 for k, v in beit.state_dict().items()}
        beit.load_state_dict(state)  # copy_ into the same tensors
        after_load = cached_relative_position_bias(attn)
        table = state["vfm.blocks.0.attn.relative_position_bias_table"]
        expected = table.t()[:, attn.relative_position_index.flatten()]
        assert torch.equal(after_load, expected.view(1, 3, 17, 17))
        attn.relative_position_bias_table = torch.nn.Parameter(torch.randn_like(attn.relative_position_bias_table))
        assert torch.equal(cached_relative_position_bias(attn), relative_position_bias(attn))
        beit.double()
        assert cached_relative_position_bias(attn).dtype == torch.float64
    assert len(calls) == 5


def test_cache_keeps_one_entry_per_token_grid(beit, monkeypatch):
    attn = beit.vfm.blocks[0].attn
    calls = _count_gathers(monkeypatch)
    with torch.no_grad():
        own = cached_relative_position_bias(attn)
        for _ in range(2):  # alternating sizes: each size's bias is gathered once
            with beit.token_grid((3, 5)):
                resized = cached_relative_position_bias(attn)
                assert resized.shape == (1, 3, 16, 16)
                assert torch.equal(resized, relative_position_bias(attn))
            assert cached_relative_position_bias(attn) is own
    assert len(calls) == 2
    clear_relative_position_bias_cache(beit)
    assert not relative_position_bias_cache_of(attn)


def test_no_caching_with_grad_or_under_tracing(beit, monkeypatch):
    attn = beit.vfm.blocks[0].attn
    calls = _count_gathers(monkeypatch)
    bias = cached_relative_position_bias(attn)  # grad enabled: training
    assert bias.requires_grad and not relative_position_bias_cache_of(attn)
    bias.sum().backward()
    assert attn.relative_position_bias_table.grad.abs().sum() > 0
    with torch.no_grad():
        cached_relative_position_bias(attn)  # a cache exists, yet tracing must gather
        traced = torch.jit.trace(beit.vfm.blocks[0], torch.randn(1, 17, 48), check_trace=False)
    assert "aten::index_select" in str(traced.inlined_graph)
    assert len(calls) == 3


def test_cached_model_scores_are_bit_identical_to_uncached(tiny_cfg):
    """The whole tiny HAPNet with the cache (two calls: the second uses it) against the same
    weights built with MODEL.HAPNET.VFM_CACHE_REL_POS_BIAS False, which caches nothing."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    model.test_mode = "whole"
    for block in model.backbone.vfm.vfm.blocks:
        torch.nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    uncached_cfg = tiny_cfg.clone()
    uncached_cfg.MODEL.HAPNET.VFM_CACHE_REL_POS_BIAS = False
    uncached_model = build_model(uncached_cfg).eval()
    uncached_model.test_mode = "whole"
    uncached_model.load_state_dict(model.state_dict())
    x = rgbt_pair(64, 96)
    del x["sem_seg"]
    with torch.no_grad():
        cached = [model([x])[0]["sem_seg"] for _ in range(2)]
        uncached = uncached_model([x])[0]["sem_seg"]
    assert all(relative_position_bias_cache_of(b.attn) for b in model.backbone.vfm.vfm.blocks)
    assert not any(relative_position_bias_cache_of(b.attn) for b in uncached_model.backbone.vfm.vfm.blocks)
    assert torch.equal(cached[0], uncached) and torch.equal(cached[1], uncached)


def test_a_model_with_a_cache_still_pickles_and_copies(beit):
    import copy
    import io
    import pickle

    with torch.no_grad():
        cached_relative_position_bias(beit.vfm.blocks[0].attn)
    clone = copy.deepcopy(beit)
    pickle.dump(beit, io.BytesIO())
    assert not relative_position_bias_cache_of(clone.vfm.blocks[0].attn)
    with torch.no_grad():
        attn = clone.vfm.blocks[0].attn
        assert torch.equal(attn._get_rel_pos_bias(), relative_position_bias(attn))
