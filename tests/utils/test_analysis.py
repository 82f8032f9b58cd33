"""Per-component parameter and FLOP accounting against hand-computed values."""
import pytest
from detectron2.modeling import build_model

from conftest import rgbt_pair
from hapnet_d2.utils.analysis import flop_counter, flops_by_component, parameters_by_component


def test_parameter_components_sum_to_total(tiny_cfg):
    model = build_model(tiny_cfg)
    counts = parameters_by_component(model)
    assert counts["other"] == 0
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    assert counts["aux head (training only)"] == sum(p.numel() for p in model.aux_head.parameters())


def test_vfm_flops_match_transformer_formula(tiny_cfg):
    """fvcore + our attention handle vs. the closed form of a ViT (multiply-adds)."""
    model = build_model(tiny_cfg).eval()
    x = rgbt_pair(64, 64)
    del x["sem_seg"]
    model.test_mode = "whole"
    counts = flops_by_component(flop_counter(model, [x]))
    dim, depth, patches = 192, 4, (64 // 16) ** 2
    tokens = patches + 1  # cls token
    per_block = tokens * 12 * dim * dim + 2 * tokens * tokens * dim  # qkv+proj+mlp(4x), q@k and attn@v
    patch_embed = patches * 3 * 16 * 16 * dim
    assert counts["VFM"] == pytest.approx(depth * per_block + patch_embed, rel=0.01)
    assert counts["aux head (training only)"] == 0  # never run at inference
    assert counts["PHFI (GLCA + CCG)"] > 0 and counts["total"] > counts["VFM"]
