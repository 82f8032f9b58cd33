"""End-to-end behaviour of the HAPNet model: parameter count, losses, gradients, inference."""
import pytest
import torch
from detectron2.modeling import build_model

from conftest import load_cfg, rgbt_pair


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    return build_model(load_cfg("configs/mfnet/hapnet_beitv2_b.yaml")).eval()


def test_reference_parameter_count(reference_model):
    m = reference_model
    without_aux = count(m) - count(m.aux_head)
    # paper: 169.1M without the training-only auxiliary head; the official model counts
    # 169,126,410 (with the pixel decoder's 3 x 256 input-projection biases)
    assert sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in m.aux_head.parameters()) == 169_126_410
    assert without_aux == pytest.approx(169.1, abs=0.05)
    assert count(m.sem_seg_head.pixel_decoder) == pytest.approx(5.839, abs=0.0005)
    assert count(m.aux_head) == pytest.approx(1.77, abs=0.01)
    assert count(m.backbone.vfm) == pytest.approx(86.16, abs=0.01)
    phfi = count(m.backbone.glca) + count(m.backbone.ccg) + count(m.backbone.extra_ccg)
    assert phfi == pytest.approx(9.73, abs=0.01)
    assert len(m.backbone.extra_ccg) == 2
    assert float(m.backbone.glca[0].gamma.detach().abs().max()) == pytest.approx(1e-6)


@pytest.mark.slow
def test_reference_inference_480x640(reference_model):
    torch.manual_seed(0)
    x = rgbt_pair(480, 640)
    del x["sem_seg"]
    with torch.no_grad():
        out = reference_model([x])
    sem_seg = out[0]["sem_seg"]
    assert sem_seg.shape == (9, 480, 640)
    assert torch.isfinite(sem_seg).all()
    # scores are sums over queries of class probability x mask probability: non-negative
    assert sem_seg.min() >= 0


def test_training_losses_and_gradients(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg).train()
    losses = model([rgbt_pair(64, 64, seed=s) for s in range(2)])
    dec_layers = tiny_cfg.MODEL.MASK_FORMER.DEC_LAYERS
    expected = {"loss_ce", "loss_mask", "loss_dice", "loss_aux"}
    expected |= {f"loss_{k}_{i}" for k in ("ce", "mask", "dice") for i in range(dec_layers)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    # (some grads are exactly zero at init by design: deformable attention starts query-independent)
    without_grad = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert without_grad == []
    for component in ("backbone.vfm.", "backbone.cspd.", "backbone.glca.", "backbone.ccg.", "backbone.extra_ccg.",
                      "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.", "aux_head."):
        assert any(n.startswith(component) for n in params), component


def _pattern_pair(size: int = 64):
    """A label of blocks and stripes; RGB and thermal are functions of it (learnable)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = ((yy // 16) * 2 + (xx // 32)) % 5
    palette = torch.tensor([[20, 20, 20], [200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]])
    image = palette[label].permute(2, 0, 1).to(torch.uint8)
    thermal = (label * 50).float()[None]
    return {"image": image, "thermal": thermal, "sem_seg": label, "height": size, "width": size}


@pytest.mark.slow
def test_overfits_one_pair(tiny_cfg):
    torch.manual_seed(0)
    tiny_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    tiny_cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 1024
    model = build_model(tiny_cfg).train()
    pair = _pattern_pair()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(100):
        loss = sum(model([pair]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < first / 5, (first, last)
    model.eval()
    with torch.no_grad():
        pred = model([{k: v for k, v in pair.items() if k != "sem_seg"}])[0]["sem_seg"].argmax(0)
    assert (pred == pair["sem_seg"]).float().mean() > 0.9


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_inference_any_size(tiny_cfg, mode):
    tiny_cfg.TEST.MODE = mode
    tiny_cfg.TEST.SLIDE_CROP = (64, 64)
    tiny_cfg.TEST.SLIDE_STRIDE = (48, 48)
    model = build_model(tiny_cfg).eval()
    x = rgbt_pair(70, 90)
    with torch.no_grad():
        same = model([x])[0]["sem_seg"]
        resized = model([dict(x, height=140, width=180)])[0]["sem_seg"]
    assert same.shape == (9, 70, 90) and resized.shape == (9, 140, 180)
    assert torch.isfinite(same).all()
    # the relative-position tables are restored after whole-image inference on another grid
    assert model.backbone.vfm.vfm.blocks[0].attn.window_size == (4, 4)


def test_slide_equals_whole_when_one_window(tiny_cfg):
    tiny_cfg.TEST.SLIDE_CROP = (64, 64)
    model = build_model(tiny_cfg).eval()
    x = rgbt_pair(64, 64)
    with torch.no_grad():
        model.test_mode = "whole"
        whole = model([x])[0]["sem_seg"]
        model.test_mode = "slide"
        slide = model([x])[0]["sem_seg"]
    torch.testing.assert_close(whole, slide)


def test_bgr_input_format_is_flipped(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    x = rgbt_pair(64, 64)
    with torch.no_grad():
        rgb_out = model([x])[0]["sem_seg"]
        model.input_format = "BGR"
        bgr_out = model([dict(x, image=x["image"].flip(0))])[0]["sem_seg"]
    torch.testing.assert_close(rgb_out, bgr_out)


def test_bad_inputs_raise_clear_errors(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    x = rgbt_pair(64, 64)
    with pytest.raises(ValueError, match="a.png: RGB is \\(64, 64\\) but thermal is \\(32, 64\\)"):
        model([dict(x, thermal=torch.zeros(1, 32, 64), file_name="a.png")])
    with pytest.raises(ValueError, match="'thermal' must be"):
        model([dict(x, thermal=torch.zeros(2, 64, 64))])
    with pytest.raises(KeyError, match="'thermal'"):
        model([{"image": x["image"]}])
    model.train()
    with pytest.raises(KeyError, match="sem_seg"):
        model([{k: v for k, v in x.items() if k != "sem_seg"}])


def test_resized_position_tables_are_cached_until_weights_change(tiny_cfg):
    vfm = build_model(tiny_cfg).eval().backbone.vfm
    attn = vfm.vfm.blocks[0].attn
    own = attn.relative_position_bias_table
    with torch.no_grad():
        own.copy_(torch.randn_like(own))
        with vfm.token_grid((6, 8)):  # another grid than the 4x4 training window
            first = attn.relative_position_bias_table
            assert first.shape == (11 * 15 + 3, 3) and attn.relative_position_index.shape == (49, 49)
        with vfm.token_grid((6, 8)):
            assert attn.relative_position_bias_table is first  # cached
        own.add_(1.0)
        with vfm.token_grid((6, 8)):
            # recomputed from the new weights: the cls-token entries are copied as they are
            torch.testing.assert_close(attn.relative_position_bias_table[-3:], own[-3:])
    assert attn.relative_position_bias_table is own and attn.window_size == (4, 4)
