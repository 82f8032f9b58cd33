import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.modeling.heads import HAPNetMaskFormerHead
from hapnet_d2.modeling.transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)
from hapnet_d2.ops import kernel_available


def _tiny_decoder(dec_layers=3, num_classes=5, dropout=0.0, pre_norm=False):
    return MultiScaleMaskedTransformerDecoder(
        in_channels=32,
        num_classes=num_classes,
        hidden_dim=32,
        num_queries=8,
        nheads=4,
        dim_feedforward=64,
        dec_layers=dec_layers,
        pre_norm=pre_norm,
        mask_dim=16,
        enforce_input_project=False,
        dropout=dropout,
    )


def _inputs(batch=2):
    """Multi-scale maps of a 100x124 image (res5, res4, res3) and stride-4 mask features."""
    sizes = [(4, 4), (7, 8), (13, 16)]
    multi_scale = [torch.randn(batch, 32, h, w) for h, w in sizes]
    return multi_scale, torch.randn(batch, 16, 25, 31)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_training_outputs_with_deep_supervision(pre_norm):
    torch.manual_seed(0)
    decoder = _tiny_decoder(dec_layers=3, pre_norm=pre_norm).train()
    out = decoder(*_inputs())
    assert out["pred_logits"].shape == (2, 8, 6)
    assert out["pred_masks"].shape == (2, 8, 25, 31)
    assert len(out["aux_outputs"]) == 3  # initial queries + layers 1..2
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 8, 6)
        assert aux["pred_masks"].shape == (2, 8, 25, 31)


def test_eval_returns_only_the_final_prediction_equal_to_training():
    torch.manual_seed(0)
    decoder = _tiny_decoder(dec_layers=4)
    inputs = _inputs()
    train_out = decoder.train()(*inputs)
    with torch.no_grad():
        eval_out = decoder.eval()(*inputs)
    assert set(eval_out) == {"pred_logits", "pred_masks"}
    assert torch.allclose(eval_out["pred_logits"], train_out["pred_logits"], atol=1e-5)
    assert torch.allclose(eval_out["pred_masks"], train_out["pred_masks"], atol=1e-4)


def test_attention_mask_matches_resized_mask_logits():
    """Resizing the mask features equals resizing the full-resolution mask logits."""
    torch.manual_seed(0)
    decoder = _tiny_decoder()
    queries = torch.randn(2, 8, 32)
    mask_features = torch.randn(2, 16, 25, 31)
    size = (7, 8)
    small = F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        attn_mask = decoder._attention_mask(queries, small)
        logits = torch.einsum(
            "bqc,bchw->bqhw", decoder.mask_embed(decoder.decoder_norm(queries)), mask_features
        )
    reference = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    reference = reference.flatten(2).sigmoid() < 0.5
    reference[reference.all(-1)] = False
    assert attn_mask.shape == (2 * 4, 8, 56)
    assert attn_mask.dtype == torch.bool
    assert torch.equal(attn_mask[::4], reference)  # heads of image b at rows 4b .. 4b+3
    assert torch.equal(attn_mask[3::4], reference)


def test_fully_masked_rows_are_unmasked():
    decoder = _tiny_decoder()
    with torch.no_grad():
        decoder.mask_embed[-2].weight.zero_()  # last Linear of the MLP
        decoder.mask_embed[-2].bias.fill_(-1.0)
    attn_mask = decoder._attention_mask(torch.randn(1, 8, 32), torch.ones(1, 16, 3, 3))
    assert not attn_mask.any()


def test_default_config_parameter_count_and_names():
    cfg = get_cfg()
    add_hapnet_config(cfg)
    decoder = build_transformer_decoder(cfg, in_channels=256)
    assert isinstance(decoder, MultiScaleMaskedTransformerDecoder)
    assert TRANSFORMER_DECODER_REGISTRY.get("MultiScaleMaskedTransformerDecoder") is type(decoder)
    assert sum(p.numel() for p in decoder.parameters()) == pytest.approx(14.46e6, rel=0.01)
    names = dict(decoder.named_parameters())
    assert names["query_feat.weight"].shape == (100, 256)
    assert names["query_embed.weight"].shape == (100, 256)
    assert names["level_embed.weight"].shape == (3, 256)
    assert names["class_embed.weight"].shape == (10, 256)
    assert sum(n.startswith("mask_embed.") and n.endswith(".weight") for n in names) == 3
    assert len(decoder.transformer_cross_attention_layers) == 9


def test_wrong_number_of_scales_is_a_clear_error():
    multi_scale, mask_features = _inputs()
    with pytest.raises(ValueError, match="expects 3 feature maps, got 2"):
        _tiny_decoder()(multi_scale[:2], mask_features)


def _tiny_head_cfg():
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.MODEL.HAPNET.MSDA_IMPL = "auto" if kernel_available() else "pytorch"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 2
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    return cfg


def test_head_from_config_on_odd_input_size():
    torch.manual_seed(0)
    shapes = {f"res{i}": ShapeSpec(channels=24, stride=2**i) for i in range(2, 6)}
    head = build_sem_seg_head(_tiny_head_cfg(), shapes)
    assert isinstance(head, HAPNetMaskFormerHead)
    features = {
        f"res{i}": torch.randn(2, 24, math.ceil(100 / 2**i), math.ceil(124 / 2**i))
        for i in range(2, 6)
    }
    out = head.train()(features)
    assert out["pred_logits"].shape == (2, 8, 5)
    assert out["pred_masks"].shape == (2, 8, 25, 31)
    assert len(out["aux_outputs"]) == 3
    with torch.no_grad():
        assert "aux_outputs" not in head.eval()(features)


def test_head_reports_missing_backbone_features():
    shapes = {f"res{i}": ShapeSpec(channels=24, stride=2**i) for i in range(3, 6)}
    with pytest.raises(ValueError, match=r"lists \['res2'\], which the backbone does not output"):
        build_sem_seg_head(_tiny_head_cfg(), shapes)
