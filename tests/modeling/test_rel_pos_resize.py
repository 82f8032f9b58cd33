"""Resizing BEiT relative-position tables to another window (official bicubic / timm linear)."""
import numpy as np
import pytest
import timm
import torch
from scipy.interpolate import make_interp_spline

from hapnet_d2.modeling.backbone import TimmViT
from hapnet_d2.modeling.backbone.pretrained import (
    geometric_rel_pos_grid,
    load_vfm_weights,
    resize_rel_pos_table,
)


def _separable_not_a_knot(z, ys, xs, dy, dx):
    """Independent bicubic interpolation: 1-D not-a-knot cubic interpolating splines (the
    spline space FITPACK's s=0 interpolation uses) along y, then along x. The tensor-product
    interpolant is unique, so this equals the 2-D bicubic interpolating spline."""
    along_y = make_interp_spline(ys, z, k=3, axis=0)(dy)  # [len(dy), len(xs)]
    return make_interp_spline(xs, along_y, k=3, axis=1)(dx)  # [len(dy), len(dx)]


def test_geometric_grid_224_to_480():
    grid = geometric_rel_pos_grid(27, 59)
    assert grid.shape == (27,)
    np.testing.assert_allclose(grid, -grid[::-1])
    assert grid[13] == 0 and grid[14] == 1.0
    # steps grow geometrically: 1, q, q^2, ... and the outermost lands near 59 // 2 = 29
    steps = np.diff(grid[13:])
    np.testing.assert_allclose(steps[1:] / steps[:-1], steps[1] / steps[0])
    q = steps[1]
    assert (1 - q**13) / (1 - q) == pytest.approx(29, abs=1e-3)


def test_bicubic_resize_equals_independent_spline_on_hand_made_table():
    rng = np.random.default_rng(0)
    src_w, dst_w, heads = (7, 7), (12, 12), 2  # tables 13x13 -> 23x23
    ys = xs = geometric_rel_pos_grid(13, 23)
    z = rng.normal(size=(13, 13, heads))
    table = torch.from_numpy(np.concatenate([z.reshape(-1, heads), rng.normal(size=(3, heads))]))
    resized = resize_rel_pos_table(table, src_w, dst_w, "bicubic")
    assert resized.shape == (23 * 23 + 3, heads) and resized.dtype == table.dtype
    # FITPACK evaluates points beyond the data range at the boundary: clip as it does
    d = np.clip(np.arange(-11, 12, dtype=np.float64), ys[0], ys[-1])
    for h in range(heads):
        expected = _separable_not_a_knot(z[..., h], ys, xs, d, d)
        np.testing.assert_allclose(resized[:-3, h].numpy().reshape(23, 23), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(resized[-3:], table[-3:])  # the cls-token entries are kept


def test_bicubic_reproduces_a_cubic_polynomial_exactly_and_linear_does_not():
    ys = xs = geometric_rel_pos_grid(27, 59)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")

    def poly(y, x):  # bicubic in (y, x), scaled to O(1) on [-29, 29]
        return 0.5 + (y / 29) ** 3 - 0.3 * (x / 29) ** 2 * (y / 29) + 0.2 * (x / 29) ** 3

    table = torch.cat([torch.from_numpy(poly(yy, xx)).reshape(-1, 1).float(), torch.zeros(3, 1)])
    d = np.arange(-29, 30, dtype=np.float64)
    dyy, dxx = np.meshgrid(d, d, indexing="ij")
    truth = poly(dyy, dxx).reshape(-1)
    bicubic = resize_rel_pos_table(table, (14, 14), (30, 30), "bicubic")[:-3, 0].double().numpy()
    linear = resize_rel_pos_table(table, (14, 14), (30, 30), "linear")[:-3, 0].double().numpy()
    np.testing.assert_allclose(bicubic, truth, atol=1e-5)
    assert np.abs(linear - truth).max() > 1e-3
    # grid points of the source are reproduced by both (0 and +-1 map onto themselves)
    centre = 29 * 59 + 29
    assert linear[centre] == pytest.approx(truth[centre], abs=1e-6)


def test_linear_mode_equals_timm():
    from timm.layers import resize_rel_pos_bias_table

    table = torch.randn(27 * 27 + 3, 3)
    ours = resize_rel_pos_table(table, (14, 14), (30, 30), "linear")
    timm_linear = resize_rel_pos_bias_table(table, new_window_size=(30, 30), new_bias_shape=(59 * 59 + 3, 3))
    torch.testing.assert_close(ours, timm_linear, atol=1e-5, rtol=1e-5)


def test_same_window_is_unchanged_and_unknown_mode_is_refused():
    table = torch.randn(27 * 27 + 3, 2)
    assert resize_rel_pos_table(table, (14, 14), (14, 14)) is table
    with pytest.raises(ValueError, match="VFM_REL_POS_RESIZE='nearest'"):
        resize_rel_pos_table(table, (14, 14), (30, 30), "nearest")


@pytest.mark.parametrize("mode", ["bicubic", "linear"])
def test_checkpoint_load_uses_the_configured_resize(tmp_path, mode):
    torch.manual_seed(0)
    kwargs = dict(embed_dim=48, depth=4, num_heads=3)
    src = timm.create_model("beitv2_base_patch16_224", pretrained=False, init_values=0.1, **kwargs)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    for k in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[k] = torch.randn_like(state[k])
    torch.save({"model": state}, tmp_path / "beitv2.pth")
    vfm = TimmViT(name="beitv2_base_patch16_224", img_size=(480, 480), stages=[[0, 0], [1, 1], [2, 2], [3, 3]],
                  layer_scale_init=1e-6, extra_kwargs=kwargs)
    report = load_vfm_weights(vfm, str(tmp_path / "beitv2.pth"), rel_pos_resize=mode)
    assert report.missing == [] and report.unexpected == []
    key = "blocks.1.attn.relative_position_bias_table"
    expected = resize_rel_pos_table(state[key], (14, 14), (30, 30), mode)
    torch.testing.assert_close(vfm.vfm.state_dict()[key], expected)
