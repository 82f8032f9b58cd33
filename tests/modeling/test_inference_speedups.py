"""Inference speed-ups keep the model's values: BEiT's relative position bias, float32 scores."""

import pytest
import torch

from conftest import rgbt_pair
from hapnet_d2.modeling.backbone.timm_vit import TimmViT, relative_position_bias


@pytest.fixture(scope="module")
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


def _timm_bias(attn):
    """timm's own implementation, bypassing the instance override."""
    return type(attn)._get_rel_pos_bias(attn)


def test_relative_position_bias_equals_timm(beit):
    for block in beit.vfm.blocks:
        ours = relative_position_bias(block.attn)
        assert ours.shape == (1, 3, 17, 17)  # 4x4 tokens + cls
        assert torch.equal(ours, _timm_bias(block.attn))
        assert torch.equal(block.attn._get_rel_pos_bias(), ours)  # the blocks use it


def test_relative_position_bias_follows_a_resized_token_grid(beit):
    attn = beit.vfm.blocks[0].attn
    with beit.token_grid((3, 5)):
        resized = attn._get_rel_pos_bias()
        assert resized.shape == (1, 3, 16, 16)
        assert torch.equal(resized, _timm_bias(attn))
    assert attn._get_rel_pos_bias().shape == (1, 3, 17, 17)


def test_blocks_match_the_explicit_attention_formula(beit):
    """A block's output against softmax(q k^T * scale + bias) v written out by hand."""
    block = beit.vfm.blocks[1]
    attn = block.attn
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        y = block.norm1(x)
        qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = torch.nn.functional.linear(y, attn.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(2, 17, 3, 3, 16).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * attn.scale + _timm_bias(attn)).softmax(-1)
        attended = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, 48))
        expected = block.attn(y)
    torch.testing.assert_close(expected, attended, rtol=1e-5, atol=1e-5)


def test_scores_are_float32_under_bf16_autocast(tiny_cfg):
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg).eval()
    model.test_mode = "whole"
    x = rgbt_pair(64, 64)
    del x["sem_seg"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model([x])[0]["sem_seg"]
    assert scores.dtype == torch.float32 and scores.shape == (9, 64, 64)
