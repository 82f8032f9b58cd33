"""The Table-9 VFM loaders (DeiT, AugReg ViT, DINOv2) read files in their published layouts.

Each fake checkpoint is a small model of the family (the published per-tensor shapes, fewer
blocks) saved as the authors / timm distribute it:
- DeiT (facebookresearch/deit ``deit_*_patch16_224-*.pth``): ``{"model": state}``, cls token,
  ``pos_embed`` for 224x224 (197 tokens), ImageNet-1k head, final norm.
- AugReg ViT (timm's ``vit_*_patch16_224.augreg_in21k`` files, ``pytorch_model.bin`` and
  ``model.safetensors``): the flat timm state dict with the 21,843-class ImageNet-21k head.
- DINOv2 (facebookresearch/dinov2 ``dinov2_vit*14_pretrain.pth``): a flat dict, 14x14 patches,
  ``pos_embed`` for 518x518 (37x37 + 1 tokens), ``mask_token``, layer scales ``ls1/ls2.gamma``.
After loading, every tensor that needs no resampling is equal to the file's, no VFM key is
missing, and the resampled ones (position grid, DINOv2's 14 -> 16 patch kernel) are checked
against independent computations.
"""
import pytest
import timm
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone
from safetensors.torch import save_file

from conftest import load_cfg
from hapnet_d2.modeling.backbone import TimmViT
from hapnet_d2.modeling.backbone.pretrained import load_vfm_weights

DEPTH = 4
STAGES = [[0, 0], [1, 1], [2, 2], [3, 3]]
# file name, model the file comes from, model HAPNet builds, layout
FAMILIES = {
    "deit": ("deit_tiny_patch16_224-a1311bcf.pth", "deit_tiny_patch16_224", "deit_tiny_patch16_224", "wrapped"),
    "augreg": ("pytorch_model.bin", "vit_tiny_patch16_224.augreg_in21k",
               "vit_tiny_patch16_224", "flat"),
    "augreg_safetensors": ("model.safetensors", "vit_tiny_patch16_224.augreg_in21k", "vit_tiny_patch16_224",
                           "safetensors"),
    "dinov2": ("dinov2_vits14_pretrain.pth", "vit_small_patch14_dinov2", "vit_small_patch14_dinov2", "flat"),
}


def published_checkpoint(tmp_path, family):
    """Write a fake published checkpoint of ``family`` and return (path, its tensors)."""
    filename, source, _, layout = FAMILIES[family]
    torch.manual_seed(5)
    src = timm.create_model(source, pretrained=False, depth=DEPTH)
    state = {}
    for k, v in src.state_dict().items():
        v = torch.randn_like(v)  # every tensor distinct and non-trivial
        state[k] = v
    if family == "dinov2":
        state["mask_token"] = torch.zeros(1, src.embed_dim)
        assert state["pos_embed"].shape[1] == 37 * 37 + 1 and state["patch_embed.proj.weight"].shape[-1] == 14
        assert "blocks.0.ls1.gamma" in state
    else:
        assert state["pos_embed"].shape[1] == 14 * 14 + 1 and state["head.weight"].shape[0] in (1000, 21843)
    path = tmp_path / filename
    if layout == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state} if layout == "wrapped" else state, path)
    return str(path), state


def hapnet_vfm(family, img_size):
    name = FAMILIES[family][2]
    return TimmViT(name=name, img_size=img_size, stages=STAGES, layer_scale_init=0.0, extra_kwargs=dict(depth=DEPTH))


def resized_grid(pos_embed, old, new):
    """The patch part of ``pos_embed`` [1, 1 + old*old, D] resized bicubically (antialiased) to new x new."""
    grid = pos_embed[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)


def assert_loaded(vfm, state, report, resampled):
    assert report.missing == [] and report.unexpected == []
    loaded = vfm.vfm.state_dict()
    for k, v in loaded.items():
        if k not in resampled:
            torch.testing.assert_close(v, state[k], atol=0, rtol=0, msg=k)
    # the classifier and final norm, which the encoder does not use, are the only keys left out
    # (DINOv2's mask_token is dropped by timm's conversion before)
    assert sorted(report.ignored) == sorted(k for k in state if k.startswith(("head.", "norm.")))


@pytest.mark.parametrize("family", ["deit", "augreg", "augreg_safetensors"])
def test_supervised_vit_at_224_loads_every_tensor_unchanged(tmp_path, family):
    path, state = published_checkpoint(tmp_path, family)
    vfm = hapnet_vfm(family, (224, 224))
    report = load_vfm_weights(vfm, path)
    assert_loaded(vfm, state, report, resampled=())
    assert "head.weight" in report.ignored and "norm.weight" in report.ignored


@pytest.mark.parametrize("family", ["deit", "augreg", "augreg_safetensors"])
def test_supervised_vit_position_grid_is_resized_to_the_crop(tmp_path, family):
    path, state = published_checkpoint(tmp_path, family)
    vfm = hapnet_vfm(family, (64, 64))  # 4x4 tokens
    report = load_vfm_weights(vfm, path)
    assert_loaded(vfm, state, report, resampled=("pos_embed",))
    pos = vfm.vfm.pos_embed
    assert pos.shape == (1, 1 + 16, 192)
    torch.testing.assert_close(pos[:, :1], state["pos_embed"][:, :1], atol=0, rtol=0)  # cls entry kept
    torch.testing.assert_close(pos[:, 1:], resized_grid(state["pos_embed"], 14, 4), atol=1e-5, rtol=1e-5)


def test_dinov2_loads_with_patch_kernel_and_position_grid_resampled(tmp_path):
    path, state = published_checkpoint(tmp_path, "dinov2")
    vfm = hapnet_vfm("dinov2", (64, 64))  # built with 16x16 patches: 4x4 tokens
    report = load_vfm_weights(vfm, path)
    assert_loaded(vfm, state, report, resampled=("pos_embed", "patch_embed.proj.weight"))
    assert "mask_token" not in vfm.vfm.state_dict()
    model = vfm.vfm
    torch.testing.assert_close(model.blocks[1].ls2.gamma, state["blocks.1.ls2.gamma"], atol=0, rtol=0)
    torch.testing.assert_close(model.pos_embed[:, :1], state["pos_embed"][:, :1], atol=0, rtol=0)
    torch.testing.assert_close(model.pos_embed[:, 1:], resized_grid(state["pos_embed"], 37, 4), atol=1e-5, rtol=1e-5)
    # the 16x16 kernel sees a patch upsampled from 14x14 as the published 14x14 kernel sees the
    # original patch (timm's pseudo-inverse resampling)
    kernel16 = model.patch_embed.proj.weight
    assert kernel16.shape == (384, 3, 16, 16)
    patch14 = torch.randn(5, 3, 14, 14, generator=torch.Generator().manual_seed(0))
    patch16 = F.interpolate(patch14, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(
        torch.einsum("bchw,ochw->bo", patch16, kernel16),
        torch.einsum("bchw,ochw->bo", patch14, state["patch_embed.proj.weight"]),
        atol=1e-3, rtol=0,
    )


@pytest.mark.parametrize("family", ["deit", "augreg", "dinov2"])
def test_table9_config_route_loads_the_file(tmp_path, family):
    """MODEL.HAPNET.VFM_NAME / VFM_WEIGHTS as the Table-9 configs set them load the file when the
    backbone is built."""
    path, state = published_checkpoint(tmp_path, family)
    cfg = load_cfg("configs/synth/hapnet_tiny.yaml", ["INPUT.CROP.SIZE", (64, 64)])
    h = cfg.MODEL.HAPNET
    h.VFM_NAME = FAMILIES[family][2]
    h.VFM_LAYER_SCALE_INIT = 0.0
    h.VFM_KWARGS.clear()
    h.VFM_KWARGS.update({"depth": DEPTH})
    h.VFM_STAGES = STAGES
    h.DEFORM_NUM_HEADS = 6
    h.VFM_WEIGHTS = path
    backbone = build_backbone(cfg)
    loaded = backbone.vfm.vfm.state_dict()
    for k in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "patch_embed.proj.bias"):
        torch.testing.assert_close(loaded[k], state[k], atol=0, rtol=0, msg=k)
