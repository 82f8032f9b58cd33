"""Initialisation of the parts trained from scratch (official HAPNet rules) and of Mask2Former's.

Each named group's mean and std after ``build_model`` are compared with its rule within the
sampling error of its size (5 standard errors), zeros and ones exactly.
"""
import math

import pytest
import torch
from detectron2.modeling import build_model

from conftest import load_cfg


def _flat(tensors):
    return torch.cat([t.detach().double().reshape(-1) for t in tensors])


def assert_normal_like(tensors, std, what):
    """Mean 0 and standard deviation ``std`` within 5 standard errors of the sample."""
    x = _flat(tensors)
    n = x.numel()
    assert abs(float(x.mean())) < 5 * std / math.sqrt(n), f"{what}: mean {float(x.mean()):.3g}"
    assert float(x.std()) == pytest.approx(std, rel=5 / math.sqrt(2 * n)), f"{what}: std {float(x.std()):.4g} vs {std:.4g}"


def assert_const(tensors, value, what):
    x = torch.cat([t.detach().reshape(-1) for t in tensors])  # exact in the parameter dtype
    assert torch.all(x == torch.tensor(value, dtype=x.dtype)), f"{what}: not all {value} (range {float(x.min())}..{float(x.max())})"


def xavier_std(weight):
    fan_out, fan_in = weight.shape[0] * weight[0][0].numel(), weight.shape[1] * weight[0][0].numel()
    return math.sqrt(2.0 / (fan_in + fan_out))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_cfg("configs/mfnet/hapnet_beitv2_b.yaml"))


def _extractors(model):
    return list(model.backbone.ccg) + list(model.backbone.extra_ccg)


def test_adapter_linear_and_conv_init(model):
    ffns = [e.ffn for e in _extractors(model)]
    assert_normal_like([f.fc1.weight for f in ffns] + [f.fc2.weight for f in ffns], 0.02, "ConvFFN fc1/fc2")
    # truncated at +-2 (100 std): effectively untruncated, but never beyond
    assert float(_flat([f.fc1.weight for f in ffns]).abs().max()) <= 2.0
    assert_const([f.fc1.bias for f in ffns] + [f.fc2.bias for f in ffns], 0.0, "ConvFFN biases")
    # depth-wise 3x3 conv, 192 channels, groups 192: fan_out = 3*3*192/192 = 9
    assert_normal_like([f.dwconv.weight for f in ffns], math.sqrt(2 / 9), "ConvFFN dwconv")
    assert_const([f.dwconv.bias for f in ffns], 0.0, "ConvFFN dwconv bias")
    # up-convolution 768 -> 768, 2x2: fan_out = 2*2*768
    up = model.backbone.up
    assert_normal_like([up.weight], math.sqrt(2 / (4 * 768)), "up-conv")
    assert_const([up.bias], 0.0, "up-conv bias")


def test_adapter_layer_norms_and_gamma(model):
    norms = [m for part in (model.backbone.glca, model.backbone.ccg, model.backbone.extra_ccg)
             for m in part.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 4 * 2 + 6 * 3
    assert_const([n.weight for n in norms], 1.0, "adapter LayerNorm weight")
    assert_const([n.bias for n in norms], 0.0, "adapter LayerNorm bias")
    assert_const([g.gamma for g in model.backbone.glca], 1e-6, "GLCA gamma")


def test_adapter_deformable_attention_keeps_its_own_init(model):
    attns = [g.attn for g in model.backbone.glca] + [e.attn for e in _extractors(model)]
    assert_const([a.sampling_offsets.weight for a in attns], 0.0, "MSDA sampling offsets weight")
    assert_const([a.attention_weights.weight for a in attns] + [a.attention_weights.bias for a in attns], 0.0,
                 "MSDA attention weights")
    # radial grid: head 0 looks along +x, point p at distance p + 1
    bias = attns[0].sampling_offsets.bias.view(12, 3, 4, 2)
    torch.testing.assert_close(bias[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    for a in attns[:1] + attns[-1:]:
        for proj in (a.value_proj, a.output_proj):  # Xavier-uniform, not the Linear rule
            assert_normal_like([proj.weight], xavier_std(proj.weight), "MSDA projection")
            assert_const([proj.bias], 0.0, "MSDA projection bias")


def test_aux_head_init(model):
    aux = model.aux_head
    assert_normal_like([aux.classifier.weight], 0.01, "aux classifier")
    assert_const([aux.classifier.bias], 0.0, "aux classifier bias")
    assert_normal_like([aux.conv.weight], math.sqrt(2 / (9 * 256)), "aux 3x3 conv (He, fan-out)")


def test_mask2former_parts_keep_their_init(model):
    pd = model.sem_seg_head.pixel_decoder
    for proj in pd.input_proj:  # Xavier-uniform weight, bias present and zero
        assert proj.bias is not None and proj.bias.shape == (256,)
        assert_normal_like([proj.weight], xavier_std(proj.weight), "pixel decoder input_proj")
        assert_const([proj.bias], 0.0, "pixel decoder input_proj bias")
    for conv in list(pd.lateral_convs) + list(pd.output_convs) + [pd.mask_features]:
        fan_in = conv.weight[0].numel()  # c2_xavier_fill: Kaiming-uniform a=1, std 1/sqrt(fan_in)
        assert_normal_like([conv.weight], 1 / math.sqrt(fan_in), "pixel decoder FPN conv")
    for layer in pd.encoder.layers:
        for lin in (layer.linear1, layer.linear2):
            assert_normal_like([lin.weight], xavier_std(lin.weight), "pixel decoder encoder FFN")
    predictor = model.sem_seg_head.predictor
    ffn = predictor.transformer_ffn_layers[0]
    matrices = [p for p in ffn.parameters() if p.dim() > 1]
    for w in matrices:
        assert_normal_like([w], xavier_std(w), "transformer decoder FFN")
    assert_normal_like([predictor.query_feat.weight], 1.0, "query features (nn.Embedding)")
