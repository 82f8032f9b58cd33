"""DuplexBackbone: the symmetric duplex encoders of the paper's Table 8."""
import time

import pytest
import timm
import torch
from detectron2.modeling import build_backbone, build_model

from conftest import load_cfg, rgbt_pair
from hapnet_d2.modeling.backbone import DuplexBackbone
from hapnet_d2.solver.build import get_layer_id, get_optimizer_param_groups

VIT = "beitv2_base_patch16_224"  # tiny dims from the tiny config's MODEL.HAPNET.VFM_KWARGS
CONVNEXT = "convnext_atto"
CHANNELS = {VIT: [192] * 4, CONVNEXT: [40, 80, 160, 320]}
TABLE8 = {
    "beitv2_concat": (VIT, "concat"),
    "beitv2_sum": (VIT, "sum"),
    "convnext_concat": ("convnext_small", "concat"),
    "convnext_sum": ("convnext_small", "sum"),
}


def duplex_cfg(cfg, encoder, fusion="sum", shared=True):
    """The tiny config (64x64 crops) with the HAPNet encoder swapped for a duplex one."""
    cfg.MODEL.BACKBONE.NAME = "DuplexBackbone"
    cfg.MODEL.DUPLEX.ENCODER = encoder
    cfg.MODEL.DUPLEX.FUSION = fusion
    cfg.MODEL.DUPLEX.SHARED_WEIGHTS = shared
    cfg.MODEL.DUPLEX.DROP_PATH = 0.0
    return cfg


def backbone(cfg, *args, **kwargs) -> DuplexBackbone:
    torch.manual_seed(0)
    return build_backbone(duplex_cfg(cfg, *args, **kwargs)).eval()


def pair(batch=2, height=64, width=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=g), torch.randn(batch, 3, height, width, generator=g)


@pytest.mark.parametrize("encoder", [VIT, CONVNEXT])
@pytest.mark.parametrize("fusion,shared", [("sum", True), ("concat", False)])
def test_outputs_strides_and_channels(tiny_cfg, encoder, fusion, shared):
    bb = backbone(tiny_cfg, encoder, fusion, shared)
    assert isinstance(bb, DuplexBackbone) and bb.size_divisibility == 32
    assert (bb.encoder_thermal is None) == shared
    shapes = bb.output_shape()
    assert [shapes[k].stride for k in ("res2", "res3", "res4", "res5")] == [4, 8, 16, 32]
    assert [shapes[k].channels for k in ("res2", "res3", "res4", "res5")] == CHANNELS[encoder]
    rgb, thermal = pair(height=64, width=96)  # not the 64x64 training window (whole-image inference)
    with torch.no_grad():
        out = bb(rgb, thermal)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, spec in shapes.items():
        assert out[name].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride), name
        assert torch.isfinite(out[name]).all()


def test_convnext_sum_is_the_sum_of_timm_stage_outputs(tiny_cfg):
    bb = backbone(tiny_cfg, CONVNEXT, "sum", shared=False)
    rgb, thermal = pair()
    with torch.no_grad():
        out = bb(rgb, thermal)
        expected = [0, 0, 0, 0]
        for branch, x in ((bb.encoder, rgb), (bb.encoder_thermal, thermal)):
            stages = branch.convnext.forward_intermediates(x, intermediates_only=True)
            expected = [e + norm(s) for e, norm, s in zip(expected, branch.norms_rgb, stages)]
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        torch.testing.assert_close(out[name], expected[i])


def test_vit_sum_is_the_sum_of_the_pyramids_of_blocks_2_5_8_11(tiny_cfg):
    tiny_cfg.MODEL.HAPNET.VFM_KWARGS.depth = 12
    tiny_cfg.MODEL.HAPNET.VFM_STAGES = [[0, 2], [3, 5], [6, 8], [9, 11]]
    bb = backbone(tiny_cfg, VIT, "sum", shared=True)
    rgb, thermal = pair()
    with torch.no_grad():
        out = bb(rgb, thermal)
        expected = [0, 0, 0, 0]
        vit = bb.encoder.vfm.vfm  # the timm Beit
        for x in (rgb, thermal):
            blocks = vit.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)
            assert [b.shape[-1] for b in blocks] == [4] * 4  # all at stride 16
            expected = [e + up(b) for e, up, b in zip(expected, bb.encoder.pyramid, blocks)]
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        torch.testing.assert_close(out[name], expected[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder", [VIT, CONVNEXT])
def test_shared_weights_identical_inputs_sum_twice_one_branch(tiny_cfg, encoder):
    bb = backbone(tiny_cfg, encoder, "sum", shared=True)
    rgb, _ = pair()
    with torch.no_grad():
        out = bb(rgb, rgb.clone())
        single = bb.encoder(rgb)
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        torch.testing.assert_close(out[name], 2 * single[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder", [VIT, CONVNEXT])
def test_concat_fusion_sees_both_modalities(tiny_cfg, encoder):
    bb = backbone(tiny_cfg, encoder, "concat", shared=True)
    assert [f.in_channels for f in bb.fuse] == [2 * c for c in CHANNELS[encoder]]
    assert [f.out_channels for f in bb.fuse] == CHANNELS[encoder]
    assert [f.kernel_size for f in bb.fuse] == [(1, 1)] * 4
    rgb, thermal = pair()
    other_rgb, other_thermal = pair(seed=1)
    with torch.no_grad():
        out = bb(rgb, thermal)
        thermal_changed = bb(rgb, other_thermal)
        rgb_changed = bb(other_rgb, thermal)
        f_rgb, f_thermal = bb.encoder(rgb), bb.encoder(thermal)
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        assert not torch.allclose(out[name], thermal_changed[name], atol=1e-4), name
        assert not torch.allclose(out[name], rgb_changed[name], atol=1e-4), name
        # a 1x1 conv on [RGB features, thermal features], in that order
        expected = bb.fuse[i](torch.cat([f_rgb[i], f_thermal[i]], dim=1))
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-4)


def test_errors_name_the_config_key(tiny_cfg):
    with pytest.raises(ValueError, match="MODEL.DUPLEX.FUSION must be one of"):
        backbone(tiny_cfg.clone(), CONVNEXT, "mean")
    with pytest.raises(ValueError, match="MODEL.DUPLEX.ENCODER='no_such_net' is not a timm model"):
        backbone(tiny_cfg.clone(), "no_such_net")
    with pytest.raises(ValueError, match=r"MODEL.DUPLEX.ENCODER='mixer_s16_224' must have 4 stages at strides \[4, 8, 16, 32\]"):
        backbone(tiny_cfg.clone(), "mixer_s16_224")
    bb = backbone(tiny_cfg, CONVNEXT)
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        bb(*pair(height=48))
    with pytest.raises(ValueError, match="equal shape"):
        bb(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize("encoder,fusion,shared", [(VIT, "concat", False), (CONVNEXT, "sum", True)])
def test_tiny_model_trains_and_infers(tiny_cfg, encoder, fusion, shared):
    torch.manual_seed(0)
    model = build_model(duplex_cfg(tiny_cfg, encoder, fusion, shared)).train()
    assert isinstance(model.backbone, DuplexBackbone)
    losses = model([rgbt_pair(64, 64, seed=s) for s in range(2)])
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_aux"} <= set(losses)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []
    encoder_grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.encoder")]
    assert encoder_grads and any(g.abs().sum() > 0 for g in encoder_grads)

    model.eval()
    x = rgbt_pair(64, 96, seed=5)
    del x["sem_seg"]
    with torch.no_grad():
        sem_seg = model([x])[0]["sem_seg"]
    assert sem_seg.shape == (9, 64, 96)
    assert torch.isfinite(sem_seg).all() and sem_seg.min() >= 0


def _groups_by_name(model, decay=0.9):
    groups = get_optimizer_param_groups(
        model, base_lr=1.0, weight_decay=0.05, weight_decay_norm=0.0, weight_decay_bias=0.0,
        layer_decay_rate=decay,
    )
    return {n: g for g in groups for n in g["param_names"]}


def test_layer_decay_of_a_duplex_vit(tiny_cfg):
    model = build_model(duplex_cfg(tiny_cfg, VIT, "concat", shared=False))
    by_name = _groups_by_name(model)
    L = 4  # tiny ViT depth
    for branch in ("encoder", "encoder_thermal"):
        vit = f"backbone.{branch}.vfm.vfm"
        assert by_name[f"{vit}.blocks.0.attn.qkv.weight"]["layer_id"] == 1
        assert by_name[f"{vit}.blocks.3.mlp.fc2.weight"]["layer_id"] == 4
        assert by_name[f"{vit}.patch_embed.proj.weight"]["layer_id"] == 0
        assert by_name[f"{vit}.cls_token"]["layer_id"] == 0
        # timm's no_weight_decay() names of both branches are found
        assert by_name[f"{vit}.cls_token"]["weight_decay"] == 0.0
        table = f"{vit}.blocks.0.attn.relative_position_bias_table"
        assert by_name[table]["weight_decay"] == 0.0 and by_name[table]["layer_id"] == 1
        assert by_name[f"backbone.{branch}.pyramid.1.weight"]["layer_id"] == L + 1
        assert by_name[f"backbone.{branch}.pyramid.1.weight"]["weight_decay"] == 0.05
    assert by_name["backbone.fuse.0.weight"]["layer_id"] == L + 1
    assert by_name["backbone.fuse.0.weight"]["lr"] == 1.0
    assert by_name["sem_seg_head.predictor.query_feat.weight"]["layer_id"] == 0
    assert by_name["backbone.encoder.vfm.vfm.blocks.3.mlp.fc2.weight"]["lr"] == pytest.approx(0.9)


def test_layer_decay_of_a_duplex_convnext_is_stage_wise(tiny_cfg):
    model = build_model(duplex_cfg(tiny_cfg, CONVNEXT, "sum", shared=True))
    by_name = _groups_by_name(model)
    net = "backbone.encoder.convnext"
    ids = {
        f"{net}.stem.0.weight": 0,
        f"{net}.stages.1.downsample.1.weight": 0,
        f"{net}.stages.0.blocks.0.conv_dw.weight": 1,
        f"{net}.stages.3.blocks.1.mlp.fc1.weight": 4,
        "backbone.encoder.norms_rgb.2.weight": 5,  # L = 4 stages, the rest gets L + 1
        "sem_seg_head.pixel_decoder.mask_features.weight": 5,
        "sem_seg_head.predictor.query_embed.weight": 0,
    }
    assert {n: by_name[n]["layer_id"] for n in ids} == ids
    assert by_name[f"{net}.stem.0.weight"]["lr"] == pytest.approx(0.9**5)
    assert by_name[f"{net}.stages.3.blocks.1.mlp.fc1.weight"]["lr"] == pytest.approx(0.9)
    # the rules need no model; HAPNet's own names keep their ids
    assert get_layer_id("backbone.encoder_thermal.convnext.stages.2.blocks.0.gamma", 4) == 3
    assert get_layer_id("backbone.cspd.convnext.stages.2.blocks.0.gamma", 12) == 3
    assert get_layer_id("backbone.vfm.blocks.11.attn.proj.weight", 12) == 12


def test_local_weights_load_into_both_branches(tiny_cfg, tmp_path):
    torch.manual_seed(3)
    src = timm.create_model(CONVNEXT, pretrained=False)
    torch.save({"model": src.state_dict()}, tmp_path / "convnext_atto.pth")
    tiny_cfg.MODEL.DUPLEX.WEIGHTS = str(tmp_path / "convnext_atto.pth")
    bb = backbone(tiny_cfg, CONVNEXT, "sum", shared=False)
    for branch in (bb.encoder, bb.encoder_thermal):
        loaded = branch.convnext.state_dict()
        for key in ("stem.0.weight", "stages.2.blocks.1.conv_dw.weight", "stages.3.downsample.1.bias"):
            torch.testing.assert_close(loaded[key], src.state_dict()[key])


def test_local_vit_weights_load(tiny_cfg, tmp_path):
    torch.manual_seed(4)
    src = timm.create_model(VIT, pretrained=False, img_size=64, **dict(tiny_cfg.MODEL.HAPNET.VFM_KWARGS))
    torch.save({"model": src.state_dict()}, tmp_path / "beitv2_tiny.pth")
    tiny_cfg.MODEL.DUPLEX.WEIGHTS = str(tmp_path / "beitv2_tiny.pth")
    loaded = backbone(tiny_cfg, VIT, "concat").encoder.vfm.vfm.state_dict()
    for key in ("patch_embed.proj.weight", "cls_token", "blocks.3.attn.qkv.weight", "blocks.1.gamma_1"):
        torch.testing.assert_close(loaded[key], src.state_dict()[key])


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", sorted(TABLE8))
def test_table8_configs_differ_from_hapnet_only_in_the_encoder(name):
    encoder, fusion = TABLE8[name]
    base = _flat(load_cfg("configs/mfnet/hapnet_beitv2_b.yaml"))
    cfg = _flat(load_cfg(f"configs/mfnet/ablations/table8_duplex_{name}.yaml"))
    drop_path = 0.2 if encoder == VIT else 0.3  # the reference's BEiTv2-B / ConvNeXt-S values
    assert (cfg["MODEL.DUPLEX.ENCODER"], cfg["MODEL.DUPLEX.FUSION"]) == (encoder, fusion)
    assert (cfg["MODEL.DUPLEX.SHARED_WEIGHTS"], cfg["MODEL.DUPLEX.DROP_PATH"]) == (True, drop_path)
    expected = {
        "MODEL.BACKBONE.NAME": "DuplexBackbone",
        "MODEL.DUPLEX.ENCODER": encoder,
        "MODEL.DUPLEX.FUSION": fusion,
        "MODEL.DUPLEX.DROP_PATH": drop_path,
        "MODEL.HAPNET.AUX_HEAD.ENABLED": False,  # the paper's ablations omit the auxiliary task
        "OUTPUT_DIR": f"output/mfnet/ablations/table8_duplex_{name}",
    }
    expected = {k: v for k, v in expected.items() if v != base[k]}  # (defaults: convnext_small, sum, 0.3)
    assert {k: cfg[k] for k in cfg if cfg[k] != base[k]} == expected


# Parameters (M) of the reference-size models (no aux head), counted here when written: BEiTv2-B
# 86.16 (as HAPNet's VFM) + pyramid 7.08 (+ concat 1x1 convs 4.72); ConvNeXt-S 49.45 + norms
# (+ 1.57); Mask2Former pixel decoder 5.84 (768-channel inputs) or 5.42 (96-768), decoder 14.46.
REFERENCE_PARAMS = {
    "beitv2_concat": (97.96, 118.26),
    "beitv2_sum": (93.24, 113.54),
    "convnext_concat": (51.02, 70.91),
    "convnext_sum": (49.46, 69.34),
}


@pytest.mark.parametrize("name", sorted(TABLE8))
def test_table8_reference_models_build(name):
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(load_cfg(f"configs/mfnet/ablations/table8_duplex_{name}.yaml"))
    assert model.aux_head is None and model.backbone.encoder_thermal is None

    def count(module):
        return sum(p.numel() for p in module.parameters()) / 1e6

    backbone_m, total = count(model.backbone), count(model)
    print(f"{name}: backbone {backbone_m:.2f}M, total {total:.2f}M, built in {time.perf_counter() - start:.1f}s")
    assert (backbone_m, total) == pytest.approx(REFERENCE_PARAMS[name], abs=0.01)
    if name.startswith("beitv2"):
        assert count(model.backbone.encoder.vfm) == pytest.approx(86.16, abs=0.01)
        assert model.backbone.output_shape()["res2"].channels == 768
    else:
        assert [s.channels for s in model.backbone.output_shape().values()] == [96, 192, 384, 768]
