import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.modeling.heads import build_pixel_decoder
from hapnet_d2.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from hapnet_d2.modeling.pixel_decoder.msdeformattn import encoder_reference_points
from hapnet_d2.modeling.transformer_decoder import PositionEmbeddingSine
from hapnet_d2.ops import MSDeformAttn, kernel_available

IMPL = "auto" if kernel_available() else "pytorch"


def _shapes(channels):
    return {f"res{i}": ShapeSpec(channels=channels, stride=2**i) for i in range(2, 6)}


def _features(batch, channels, height, width):
    """Backbone-like maps at strides 4..32 with sizes rounded up (as a padded conv net gives)."""
    return {
        f"res{i}": torch.randn(batch, channels, math.ceil(height / 2**i), math.ceil(width / 2**i))
        for i in range(2, 6)
    }


def _tiny_decoder(channels=16):
    return MSDeformAttnPixelDecoder(
        _shapes(channels),
        transformer_dropout=0.0,
        transformer_nheads=4,
        transformer_dim_feedforward=64,
        transformer_enc_layers=2,
        transformer_n_points=2,
        conv_dim=32,
        mask_dim=24,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
        msda_impl=IMPL,
    )


def test_output_shapes_odd_input_size():
    torch.manual_seed(0)
    decoder = _tiny_decoder()
    mask_features, multi_scale = decoder.forward_features(_features(2, 16, 100, 124))
    assert mask_features.shape == (2, 24, 25, 31)
    assert [tuple(f.shape) for f in multi_scale] == [
        (2, 32, 4, 4),  # res5 first
        (2, 32, 7, 8),
        (2, 32, 13, 16),  # res3 last
    ]
    assert torch.isfinite(mask_features).all()


def test_default_config_parameter_count_and_impl():
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.MODEL.HAPNET.MSDA_IMPL = "pytorch"
    decoder = build_pixel_decoder(cfg, _shapes(768))
    assert isinstance(decoder, MSDeformAttnPixelDecoder)
    num_params = sum(p.numel() for p in decoder.parameters())
    # Mask2Former's count with 768-channel inputs, including the 3 x 256 input-projection biases
    assert num_params == 5_839_296
    assert all(proj.bias is not None for proj in decoder.input_proj)
    attns = [m for m in decoder.modules() if isinstance(m, MSDeformAttn)]
    assert len(attns) == 6
    assert {(m.n_levels, m.n_heads, m.n_points, m.impl) for m in attns} == {(3, 8, 4, "pytorch")}
    assert SEM_SEG_HEADS_REGISTRY.get("MSDeformAttnPixelDecoder") is MSDeformAttnPixelDecoder


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    decoder = _tiny_decoder()
    mask_features, multi_scale = decoder.forward_features(_features(1, 16, 64, 64))
    (mask_features.square().mean() + sum(f.square().mean() for f in multi_scale)).backward()
    no_grad = [n for n, p in decoder.named_parameters() if p.grad is None]
    assert no_grad == []


def test_missing_feature_is_a_clear_error():
    decoder = _tiny_decoder()
    features = _features(1, 16, 64, 64)
    del features["res4"]
    with pytest.raises(ValueError, match=r"input features \['res4'\] are missing"):
        decoder.forward_features(features)


def test_unreachable_common_stride_is_a_clear_error():
    shapes = {k: v for k, v in _shapes(16).items() if k != "res2"}
    with pytest.raises(ValueError, match="common_stride=4"):
        MSDeformAttnPixelDecoder(
            shapes,
            transformer_dropout=0.0,
            transformer_nheads=4,
            transformer_dim_feedforward=64,
            transformer_enc_layers=1,
            transformer_n_points=2,
            conv_dim=32,
            mask_dim=32,
            norm="GN",
            transformer_in_features=["res3", "res4", "res5"],
            common_stride=4,
        )


def test_reference_points_are_pixel_centres():
    points = encoder_reference_points([(2, 4), (1, 2)], torch.ones(1, 2, 2))
    assert points.shape == (1, 8 + 2, 2, 2)
    # token (row 1, col 2) of the 2x4 level: centre (2.5 / 4, 1.5 / 2), the same in both levels
    assert torch.allclose(points[0, 6], torch.tensor([[0.625, 0.75], [0.625, 0.75]]))
    assert torch.allclose(points[0, 9, 0], torch.tensor([0.75, 0.5]))


def test_reference_points_scale_with_valid_ratios():
    valid = torch.tensor(
        [[[0.5, 1.0], [1.0, 0.5]]]
    )  # level 0: half width valid; level 1: half height
    points = encoder_reference_points([(2, 4), (2, 2)], valid)
    # token (0, 1) of level 0: x = 1.5 / (0.5 * 4) = 0.75 of the valid area, y = 0.5 / 2
    assert torch.allclose(points[0, 1, 0], torch.tensor([0.75 * 0.5, 0.25 * 1.0]))
    assert torch.allclose(points[0, 1, 1], torch.tensor([0.75 * 1.0, 0.25 * 0.5]))


def test_position_encoding_matches_formula():
    num_feats, height, width = 8, 3, 5
    pos = PositionEmbeddingSine(num_feats)(torch.zeros(2, 1, height, width))
    assert pos.shape == (2, 2 * num_feats, height, width)
    for y, x, k in [(0, 0, 0), (2, 4, 1), (1, 3, 6), (2, 1, 7)]:
        for offset, coord, size in [(0, y, height), (num_feats, x, width)]:
            angle = (coord + 1) / size * 2 * math.pi / 10000 ** (2 * (k // 2) / num_feats)
            expected = math.sin(angle) if k % 2 == 0 else math.cos(angle)
            assert pos[1, offset + k, y, x].item() == pytest.approx(expected, abs=1e-5)
