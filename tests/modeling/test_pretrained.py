"""Loading published checkpoint layouts (official BEiTv2 / ConvNeXt, timm) from local files."""
import re

import pytest
import timm
import torch

from hapnet_d2.modeling.backbone import CSPD, TimmViT
from hapnet_d2.modeling.backbone.pretrained import load_cspd_weights, load_vfm_weights

TINY_BEIT = dict(embed_dim=96, depth=4, num_heads=3)


def official_beitv2_checkpoint(path):
    """A BEiTv2 checkpoint as the authors publish it: 224x224 (14x14 window), weights under
    "model", per-block relative position tables and indices, cls_token, no pos_embed, plus
    pre-training / classifier keys."""
    torch.manual_seed(1)
    src = timm.create_model("beitv2_base_patch16_224", pretrained=False, init_values=0.1, **TINY_BEIT)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    for name, module in src.named_modules():
        if getattr(module, "relative_position_index", None) is not None:
            state[f"{name}.relative_position_index"] = module.relative_position_index.clone()
    for k in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[k] = torch.randn_like(state[k])
    state["mask_token"] = torch.zeros(1, 1, TINY_BEIT["embed_dim"])
    state["lm_head.weight"] = torch.zeros(8192, TINY_BEIT["embed_dim"])
    assert "pos_embed" not in state and "cls_token" in state
    torch.save({"model": state, "epoch": 299}, path)
    return state


def test_official_beitv2_at_224_loads_into_480_model(tmp_path):
    state = official_beitv2_checkpoint(tmp_path / "beitv2.pth")
    vfm = TimmViT(name="beitv2_base_patch16_224", img_size=(480, 480), stages=[[0, 0], [1, 1], [2, 2], [3, 3]],
                  layer_scale_init=1e-6, extra_kwargs=TINY_BEIT)
    report = load_vfm_weights(vfm, str(tmp_path / "beitv2.pth"))
    assert report.missing == [] and report.unexpected == []
    assert "lm_head.weight" in report.ignored and "mask_token" in report.ignored
    loaded = vfm.vfm.state_dict()
    torch.testing.assert_close(loaded["blocks.2.attn.qkv.weight"], state["blocks.2.attn.qkv.weight"])
    torch.testing.assert_close(loaded["blocks.3.gamma_1"], state["blocks.3.gamma_1"])
    # 224 -> 480: window 14x14 -> 30x30, table (2*14-1)^2+3 -> (2*30-1)^2+3 rows
    old, new = state["blocks.0.attn.relative_position_bias_table"], loaded["blocks.0.attn.relative_position_bias_table"]
    assert old.shape == (27 * 27 + 3, 3) and new.shape == (59 * 59 + 3, 3)
    # the three cls-token entries are copied; offset (0, 0) sits at the centre of both grids
    torch.testing.assert_close(new[-3:], old[-3:])
    torch.testing.assert_close(new[29 * 59 + 29], old[13 * 27 + 13], atol=1e-4, rtol=1e-4)


def test_shared_rel_pos_bias_of_beit_v1_is_copied_per_block(tmp_path):
    official_beitv2_checkpoint(tmp_path / "beit.pth")
    ckpt = torch.load(tmp_path / "beit.pth")
    tables = [k for k in ckpt["model"] if k.endswith("attn.relative_position_bias_table")]
    shared = ckpt["model"][tables[0]]
    for k in tables:
        del ckpt["model"][k]
    ckpt["model"]["rel_pos_bias.relative_position_bias_table"] = shared
    torch.save(ckpt, tmp_path / "beit_v1.pth")
    vfm = TimmViT(name="beitv2_base_patch16_224", img_size=(224, 224), stages=[[0, 0], [1, 1], [2, 2], [3, 3]],
                  extra_kwargs=TINY_BEIT)
    report = load_vfm_weights(vfm, str(tmp_path / "beit_v1.pth"))
    assert report.missing == []
    for i in range(4):
        torch.testing.assert_close(vfm.vfm.blocks[i].attn.relative_position_bias_table, shared)


def official_convnext_checkpoint(path):
    """timm convnext_atto weights renamed to the official facebookresearch/ConvNeXt layout."""
    torch.manual_seed(2)
    src = timm.create_model("convnext_atto", pretrained=False)
    state = {}
    for k, v in src.state_dict().items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
        k = k.replace("head.norm", "norm").replace("head.fc", "head")
        state[k] = v.clone()
    torch.save({"model": state}, path)
    return src.state_dict()


@pytest.mark.parametrize("shared", [True, False])
def test_official_convnext_loads_into_cspd(tmp_path, shared):
    timm_state = official_convnext_checkpoint(tmp_path / "convnext.pth")
    cspd = CSPD(name="convnext_atto", modalities=["rgb", "thermal"], shared_weights=shared)
    report = load_cspd_weights(cspd, str(tmp_path / "convnext.pth"))
    assert report.missing == [] and report.unexpected == []
    for _, net in cspd.networks():
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, timm_state[k], msg=k)


def test_timm_convnext_state_dict_loads(tmp_path):
    src = timm.create_model("convnext_atto", pretrained=False)
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    cspd = CSPD(name="convnext_atto", modalities=["rgb", "thermal"])
    assert load_cspd_weights(cspd, str(tmp_path / "timm.pth")).missing == []


def test_wrong_architecture_is_reported_with_file_name(tmp_path):
    official_convnext_checkpoint(tmp_path / "atto.pth")
    cspd = CSPD(name="convnext_femto", modalities=["rgb"])
    with pytest.raises(ValueError, match="atto.pth: CSPD weights do not fit"):
        load_cspd_weights(cspd, str(tmp_path / "atto.pth"))
