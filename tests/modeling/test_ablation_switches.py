"""Every ablation switch of the paper (Tables 5-7, 9) builds and runs."""
import pytest
import torch
from detectron2.modeling import build_model

from conftest import rgbt_pair
from hapnet_d2.modeling.backbone import INPUT_STRATEGIES

SWITCHES = [[("MODEL.HAPNET.INPUT_STRATEGY", s)] for s in INPUT_STRATEGIES] + [
    [("MODEL.HAPNET.CSPD_SHARED_WEIGHTS", False)],
    [("MODEL.HAPNET.USE_GLCA", False)],
    [("MODEL.HAPNET.USE_CCG", False)],
    [("MODEL.HAPNET.USE_GLCA", False), ("MODEL.HAPNET.USE_CCG", False)],
    [("MODEL.HAPNET.VFM_NAME", "deit_tiny_patch16_224"), ("MODEL.HAPNET.VFM_LAYER_SCALE_INIT", 0.0),
     ("MODEL.HAPNET.VFM_KWARGS", {"depth": 4})],
    [("MODEL.HAPNET.VFM_NAME", "vit_small_patch14_dinov2"), ("MODEL.HAPNET.VFM_KWARGS", {"depth": 4})],
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k.split('.')[-1]}={v}" for k, v in s))
def test_switch_builds_trains_and_infers(tiny_cfg, switch):
    for key, value in switch:
        node, name = tiny_cfg, key.split(".")
        for part in name[:-1]:
            node = getattr(node, part)
        if isinstance(value, dict):
            getattr(node, name[-1]).clear()
            getattr(node, name[-1]).update(value)
        else:
            setattr(node, name[-1], value)
    torch.manual_seed(0)
    model = build_model(tiny_cfg).train()
    losses = model([rgbt_pair(64, 64)])
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
    model.eval()
    with torch.no_grad():
        out = model([rgbt_pair(64, 64)])[0]["sem_seg"]
    assert out.shape == (9, 64, 64) and torch.isfinite(out).all()


def test_strategy_inputs_follow_table5(tiny_cfg):
    tiny_cfg.MODEL.HAPNET.INPUT_STRATEGY = "F"  # VFM: RGB, CSPD: thermal
    model = build_model(tiny_cfg).eval()
    x = rgbt_pair(64, 64)
    with torch.no_grad():
        base = model([x])[0]["sem_seg"]
        # changing RGB changes the output; the CSPD never sees RGB, so it has no RGB norms
        other_rgb = model([dict(x, image=255 - x["image"])])[0]["sem_seg"]
    assert not torch.allclose(base, other_rgb)
    assert model.backbone.cspd.modalities == ["thermal"]
    assert not hasattr(model.backbone.cspd, "norms_rgb")


def test_unknown_strategy_and_names_are_rejected(tiny_cfg):
    tiny_cfg.MODEL.HAPNET.INPUT_STRATEGY = "Z"
    with pytest.raises(ValueError, match="INPUT_STRATEGY='Z'"):
        build_model(tiny_cfg)
    tiny_cfg.MODEL.HAPNET.INPUT_STRATEGY = "D"
    tiny_cfg.MODEL.HAPNET.VFM_STAGES = [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="VFM_STAGES"):
        build_model(tiny_cfg)
