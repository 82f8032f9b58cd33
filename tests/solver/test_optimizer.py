"""Optimiser parameter groups and lr schedule against DESIGN.md s.3."""

import copy
import math

import pytest
import timm
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.solver import build_lr_scheduler, build_optimizer, get_layer_id, get_optimizer_param_groups

BASE_LR = 1e-3
DECAY = 0.9
DEPTH = 4  # ViT blocks of the stub (L); full-lr id is L + 1 = 5


CONVNEXT_DIMS = (8, 16, 32, 64)


def _small_convnext():
    return timm.create_model(
        "convnext_atto", num_classes=0, dims=CONVNEXT_DIMS, depths=(1, 1, 2, 1)
    )


class WrappedViT(nn.Module):
    """Like hapnet_d2's TimmViT: the timm model kept intact as ``.vfm``."""

    def __init__(self, vit):
        super().__init__()
        self.vfm = vit

    def no_weight_decay(self):
        return ["vfm." + name for name in self.vfm.no_weight_decay()]


class StubHAPNet(nn.Module):
    """Parameter names of the real model (backbone.vfm / cspd / decoder predictor)."""

    def __init__(self, nested_vfm: bool):
        super().__init__()
        vit = timm.create_model(
            "beitv2_base_patch16_224",
            pretrained=False,
            img_size=32,
            embed_dim=16,
            depth=DEPTH,
            num_heads=2,
            num_classes=0,
        )
        self.backbone = nn.Module()
        self.backbone.vfm = WrappedViT(vit) if nested_vfm else vit
        self.backbone.cspd = nn.Module()
        self.backbone.cspd.convnext = _small_convnext()
        self.backbone.cspd.convnext_thermal = _small_convnext()
        self.backbone.cspd.norms_rgb = nn.ModuleList(nn.LayerNorm(c) for c in CONVNEXT_DIMS)
        self.backbone.fc = nn.ModuleList(nn.Conv2d(c, 16, 1) for c in CONVNEXT_DIMS)
        self.backbone.level_embed = nn.Parameter(torch.zeros(3, 16))
        self.backbone.out_norms = nn.ModuleList(nn.BatchNorm2d(16) for _ in range(4))
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.pixel_decoder = nn.Conv2d(16, 8, 1)
        predictor = nn.Module()
        predictor.query_feat = nn.Embedding(4, 8)
        predictor.query_embed = nn.Embedding(4, 8)
        predictor.level_embed = nn.Embedding(3, 8)
        predictor.class_embed = nn.Linear(8, 10)
        predictor.mask_embed = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        predictor.decoder_norm = nn.LayerNorm(8)
        predictor.input_proj = nn.Conv2d(8, 8, 1)
        self.sem_seg_head.predictor = predictor
        self.aux_head = nn.Conv2d(16, 8, 3)


# (parameter name relative to the VFM or to the model, expected layer id)
VFM_IDS = {
    "cls_token": 0,
    "patch_embed.proj.weight": 0,
    "patch_embed.proj.bias": 0,
    "blocks.0.attn.qkv.weight": 1,
    "blocks.0.norm1.weight": 1,
    "blocks.2.attn.relative_position_bias_table": 3,
    "blocks.3.mlp.fc2.weight": 4,
    "blocks.3.gamma_2": 4,
    "fc_norm.weight": DEPTH + 1,
}
MODEL_IDS = {
    "backbone.cspd.convnext.stem.0.weight": 0,
    "backbone.cspd.convnext.stem.1.bias": 0,
    "backbone.cspd.convnext.stages.1.downsample.1.weight": 0,
    "backbone.cspd.convnext_thermal.stages.3.downsample.0.weight": 0,
    "backbone.cspd.convnext.stages.0.blocks.0.conv_dw.weight": 1,
    "backbone.cspd.convnext.stages.2.blocks.1.mlp.fc1.weight": 3,
    "backbone.cspd.convnext_thermal.stages.3.blocks.0.gamma": 4,
    "backbone.cspd.norms_rgb.2.weight": DEPTH + 1,
    "backbone.fc.0.weight": DEPTH + 1,
    "backbone.level_embed": DEPTH + 1,
    "backbone.out_norms.1.weight": DEPTH + 1,
    "sem_seg_head.pixel_decoder.weight": DEPTH + 1,
    "sem_seg_head.predictor.query_feat.weight": 0,
    "sem_seg_head.predictor.query_embed.weight": 0,
    "sem_seg_head.predictor.level_embed.weight": 0,
    "sem_seg_head.predictor.class_embed.weight": 0,
    "sem_seg_head.predictor.class_embed.bias": 0,
    "sem_seg_head.predictor.mask_embed.1.weight": 0,
    "sem_seg_head.predictor.decoder_norm.weight": DEPTH + 1,
    "sem_seg_head.predictor.input_proj.weight": DEPTH + 1,
    "aux_head.weight": DEPTH + 1,
}
# names with weight decay 0 although they are not 1-D or biases: timm's no_weight_decay()
VFM_NO_DECAY_ND = ["cls_token", "blocks.2.attn.relative_position_bias_table"]
DECAYED = [
    "blocks.0.attn.qkv.weight",
    "backbone.level_embed",
    "backbone.fc.0.weight",
    "sem_seg_head.predictor.query_feat.weight",
    "backbone.cspd.convnext.stem.0.weight",
]


def _cfg(**solver):
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.LAYER_DECAY_RATE = DECAY
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _full_names(nested_vfm):
    vfm = "backbone.vfm.vfm." if nested_vfm else "backbone.vfm."
    names = {vfm + name: layer_id for name, layer_id in VFM_IDS.items()}
    names.update(MODEL_IDS)
    return names, vfm


def _group_of(optimizer):
    params = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p not in params, "a parameter is in two groups"
            params[p] = group
    return params


@pytest.mark.parametrize("nested_vfm", [False, True])
def test_lr_scale_and_weight_decay_per_parameter(nested_vfm):
    model = StubHAPNet(nested_vfm)
    optimizer = build_optimizer(_cfg(), model)
    group_of = _group_of(optimizer)
    named = dict(model.named_parameters())
    assert set(group_of) == set(named.values()), "every trainable parameter is optimised once"

    expected_ids, vfm = _full_names(nested_vfm)
    for name, layer_id in expected_ids.items():
        group = group_of[named[name]]
        assert group["layer_id"] == layer_id, name
        assert group["lr"] == pytest.approx(BASE_LR * DECAY ** (DEPTH + 1 - layer_id)), name
        assert group["lr_scale"] == pytest.approx(DECAY ** (DEPTH + 1 - layer_id)), name

    for name, param in named.items():
        if param.ndim == 1 or name.endswith(".bias"):
            assert group_of[param]["weight_decay"] == 0.0, name
    for name in VFM_NO_DECAY_ND:
        assert named[vfm + name].ndim > 1
        assert group_of[named[vfm + name]]["weight_decay"] == 0.0, name
    for name in DECAYED:
        full = name if name.startswith(("backbone.", "sem_seg_head.")) else vfm + name
        assert group_of[named[full]]["weight_decay"] == 0.05, full


def test_one_group_per_lr_scale_and_weight_decay():
    optimizer = build_optimizer(_cfg(), StubHAPNet(nested_vfm=True))
    keys = [(round(g["lr_scale"], 12), g["weight_decay"]) for g in optimizer.param_groups]
    assert len(keys) == len(set(keys))
    # ids 0..L+1, each with and without weight decay
    assert len(keys) == 2 * (DEPTH + 2)


def test_layer_id_needs_no_model():
    assert get_layer_id("backbone.vfm.blocks.11.attn.proj.weight", 12) == 12
    assert get_layer_id("backbone.vfm.patch_embed.proj.weight", 12) == 0
    assert get_layer_id("backbone.glca.0.attn.sampling_offsets.weight", 12) == 13


def test_layer_decay_without_vit_is_a_clear_error():
    with pytest.raises(ValueError, match="LAYER_DECAY_RATE 1.0"):
        build_optimizer(_cfg(), nn.Linear(2, 2))
    optimizer = build_optimizer(_cfg(LAYER_DECAY_RATE=1.0), nn.Linear(2, 2))
    assert [g["lr"] for g in optimizer.param_groups] == [BASE_LR, BASE_LR]


def test_full_model_gradient_clipping():
    model = StubHAPNet(nested_vfm=False)
    optimizer = build_optimizer(_cfg(), model)
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    optimizer.step()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert total.item() == pytest.approx(5.0, rel=1e-4)


def test_warmup_poly_schedule_closed_form():
    max_iter, warmup, factor, power = 200, 20, 0.01, 0.9
    cfg = _cfg(MAX_ITER=max_iter, WARMUP_ITERS=warmup, WARMUP_FACTOR=factor, POLY_LR_POWER=power)
    optimizer = build_optimizer(cfg, StubHAPNet(nested_vfm=False))
    initial = [g["lr"] for g in optimizer.param_groups]  # base lr x layer scale
    scheduler = build_lr_scheduler(cfg, optimizer)

    def multiplier(it):
        if it < warmup:
            end = (1 - warmup / max_iter) ** power
            return factor + (end - factor) * it / warmup
        return (1 - it / max_iter) ** power

    checked = {0, 1, 10, 19, 20, 21, 100, 199}
    for it in range(max_iter):
        if it in checked:
            for group, lr0 in zip(optimizer.param_groups, initial):
                assert group["lr"] == pytest.approx(lr0 * multiplier(it), rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()
    assert multiplier(199) == pytest.approx(math.pow(1 / 200, 0.9))


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), StubHAPNet(nested_vfm=False))


REAL_MODEL_IDS = {
    "backbone.vfm.vfm.cls_token": 0,
    "backbone.vfm.vfm.patch_embed.proj.weight": 0,
    "backbone.vfm.vfm.blocks.0.gamma_1": 1,
    "backbone.vfm.vfm.blocks.3.attn.qkv.weight": 4,
    "backbone.cspd.convnext.stem.0.weight": 0,
    "backbone.cspd.convnext.stages.1.downsample.1.weight": 0,
    "backbone.cspd.convnext.stages.0.blocks.0.gamma": 1,
    "backbone.cspd.convnext_thermal.stages.2.blocks.0.conv_dw.weight": 3,
    "backbone.cspd.norms_thermal.3.weight": 5,
    "backbone.level_embed": 5,
    "backbone.glca.0.attn.sampling_offsets.weight": 5,
    "backbone.ccg.3.ffn.dwconv.weight": 5,
    "backbone.up.weight": 5,
    "sem_seg_head.pixel_decoder.mask_features.weight": 5,
    "sem_seg_head.predictor.query_feat.weight": 0,
    "sem_seg_head.predictor.query_embed.weight": 0,
    "sem_seg_head.predictor.level_embed.weight": 0,
    "sem_seg_head.predictor.class_embed.weight": 0,
    "sem_seg_head.predictor.mask_embed.0.weight": 0,
    "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight": 5,
    "aux_head.classifier.weight": 5,
}


def test_groups_of_the_tiny_hapnet(tiny_cfg):
    tiny_cfg.MODEL.HAPNET.CSPD_SHARED_WEIGHTS = False
    tiny_cfg.SOLVER.LAYER_DECAY_RATE = DECAY
    tiny_cfg.SOLVER.BASE_LR = BASE_LR
    model = build_model(tiny_cfg)
    assert tiny_cfg.MODEL.HAPNET.VFM_KWARGS.depth == DEPTH
    group_of = _group_of(build_optimizer(tiny_cfg, model))
    named = dict(model.named_parameters())
    assert set(group_of) == {p for p in named.values() if p.requires_grad}
    for name, layer_id in REAL_MODEL_IDS.items():
        assert group_of[named[name]]["layer_id"] == layer_id, name
        assert group_of[named[name]]["lr"] == pytest.approx(
            BASE_LR * DECAY ** (DEPTH + 1 - layer_id)
        ), name
    for name, param in named.items():
        no_decay = param.ndim == 1 or name.endswith(".bias") or "relative_position" in name
        no_decay = no_decay or name == "backbone.vfm.vfm.cls_token"
        assert (group_of[param]["weight_decay"] == 0.0) == no_decay, name


def test_adamw_is_fused_and_matches_the_reference_update():
    """The fused AdamW step equals torch's per-tensor AdamW (same groups, clipping off)."""
    torch.manual_seed(0)
    model = StubHAPNet(nested_vfm=False)
    reference = copy.deepcopy(model)
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    fused = build_optimizer(cfg, model)
    assert fused.defaults["fused"] is True
    groups = get_optimizer_param_groups(
        reference, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        layer_decay_rate=cfg.SOLVER.LAYER_DECAY_RATE,
    )
    plain = torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR, foreach=False)
    for step in range(3):
        for m in (model, reference):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.full_like(p, 0.1 * (i + 1) * (step + 1))
        fused.step()
        plain.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)
