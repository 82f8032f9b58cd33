"""The paper's encoder core checked on values against hand computations on small tensors.

Every reference below is written out in the test (layer norm, softmax, bilinear sampling with
zero padding, depth-wise 3x3 conv, transposed 2x2 conv, 1x1 conv, batch norm in eval mode) and
uses the modules' own weights, randomised so that every term matters:
- GLCA, Eq. (1): ``x + gamma * MSDA(LN(x), LN(c))`` over the three prior levels; ``gamma = 0``
  is the identity.
- CCG, Eq. (2) + FFN: ``c + MSDA(LN(c), LN(x))`` on the ViT grid, then ``c + ConvFFN(LN(c))``,
  the FFN's depth-wise conv run on each scale segment's own 2-D grid (no mixing between them).
- Table 7 "element-wise summation" (no GLCA, no CCG): outputs = BN(CSPD maps + ViT stage maps).
- The two extra extractors run after the last stage's CCG only.
- ``c1 = up(c2) + fc1(CSPD stride-4 map)``, with c2 the final spatial prior's stride-8 part.

Shapes are non-square (input 64x32: ViT grid 4x2, prior grids 8x4, 4x2, 2x1) so that a swapped
height and width cannot pass.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import load_cfg
from hapnet_d2.modeling.backbone import CSPD, TimmViT
from hapnet_d2.modeling.backbone.fusion import CCG, GLCA, ConvFFN, reference_points
from hapnet_d2.modeling.backbone.hapnet_backbone import HAPNetBackbone
from hapnet_d2.ops import level_start_index

DIM, HEADS, POINTS = 12, 2, 2
VIT_GRID = (4, 2)
PRIOR_GRIDS = [(8, 4), (4, 2), (2, 1)]
TOL = dict(atol=1e-10, rtol=1e-10)  # float64 module tests


# ----------------------------------------------------------------------------- hand references
def hand_layer_norm(x, ln):
    """LayerNorm over the last axis, written out."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def hand_linear(x, linear):
    return x @ linear.weight.t() + linear.bias


def hand_centres(grids):
    """Normalised (x, y) centres of every cell, grid after grid, row-major: ``[S, 2]``."""
    return torch.tensor(
        [[(j + 0.5) / w, (i + 0.5) / h] for h, w in grids for i in range(h) for j in range(w)],
        dtype=torch.float64,
    )


def hand_bilinear(level, x, y):
    """Sample ``level`` [H, W, C] at normalised (x, y) (pixel centres at (j+0.5)/W), bilinear,
    zero outside the map."""
    h, w = level.shape[:2]
    u, v = float(x) * w - 0.5, float(y) * h - 0.5
    u0, v0 = math.floor(u), math.floor(v)
    out = level.new_zeros(level.shape[-1])
    for yi in (v0, v0 + 1):
        for xi in (u0, u0 + 1):
            if 0 <= xi < w and 0 <= yi < h:
                out = out + (1 - abs(u - xi)) * (1 - abs(v - yi)) * level[yi, xi]
    return out


def hand_msda(attn, query, ref, value_in, grids):
    """Multi-scale deformable attention (paper Eq. (A.5)) with explicit loops.

    Args:
        attn: the module whose weights are used.
        query: ``[N, Lq, C]`` (already layer-normed); ref: ``[Lq, 2]`` (x, y) in [0, 1].
        value_in: ``[N, S, C]`` (already layer-normed); grids: (h, w) of each value level.
    Returns:
        ``[N, Lq, C]``.
    """
    m_heads, levels, points = attn.n_heads, attn.n_levels, attn.n_points
    n, lq, _ = query.shape
    value = hand_linear(value_in, attn.value_proj)
    head_dim = value.shape[-1] // m_heads
    offsets = hand_linear(query, attn.sampling_offsets).view(n, lq, m_heads, levels, points, 2)
    logits = hand_linear(query, attn.attention_weights).view(n, lq, m_heads, levels * points)
    exp = torch.exp(logits - logits.max(-1, keepdim=True).values)
    weights = (exp / exp.sum(-1, keepdim=True)).view(n, lq, m_heads, levels, points)
    starts = [0]
    for h, w in grids:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(n, lq, m_heads * head_dim)
    for b in range(n):
        for q in range(lq):
            for m in range(m_heads):
                acc = value.new_zeros(head_dim)
                for lvl, (h, w) in enumerate(grids):
                    level = value[b, starts[lvl]:starts[lvl + 1], m * head_dim:(m + 1) * head_dim].reshape(h, w, -1)
                    for p in range(points):
                        dx, dy = offsets[b, q, m, lvl, p]
                        x, y = ref[q, 0] + dx / w, ref[q, 1] + dy / h
                        acc = acc + weights[b, q, m, lvl, p] * hand_bilinear(level, x, y)
                out[b, q, m * head_dim:(m + 1) * head_dim] = acc
    return hand_linear(out, attn.output_proj)


def hand_depthwise3x3(grid, conv):
    """``grid`` [B, C, H, W]; per channel 3x3 correlation with zero padding, plus bias."""
    padded = F.pad(grid, (1, 1, 1, 1))
    h, w = grid.shape[-2:]
    out = conv.bias.view(1, -1, 1, 1).expand_as(grid).clone()
    for a in range(3):
        for b in range(3):
            out = out + conv.weight[:, 0, a, b].view(1, -1, 1, 1) * padded[..., a:a + h, b:b + w]
    return out


def hand_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def hand_conv_ffn(ffn, c, grids):
    """fc1 -> depth-wise 3x3 per scale segment (on its own h x w grid) -> GELU -> fc2."""
    y = hand_linear(c, ffn.fc1)
    parts, start = [], 0
    for h, w in grids:
        seg = y[:, start:start + h * w]  # [B, h*w, C], row-major
        grid = seg.permute(0, 2, 1).reshape(seg.shape[0], -1, h, w)
        parts.append(hand_depthwise3x3(grid, ffn.dwconv).reshape(seg.shape[0], seg.shape[2], -1).permute(0, 2, 1))
        start += h * w
    return hand_linear(hand_gelu(torch.cat(parts, dim=1)), ffn.fc2)


def hand_conv1x1(x, conv):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias.view(1, -1, 1, 1)


def hand_up2x2(x, up):
    """ConvTranspose2d(k=2, s=2): out[b, o, 2i+a, 2j+d] = sum_c x[b, c, i, j] W[c, o, a, d] + bias[o]."""
    b, _, h, w = x.shape
    out = torch.einsum("bcij,coad->boiajd", x, up.weight).reshape(b, up.weight.shape[1], 2 * h, 2 * w)
    return out + up.bias.view(1, -1, 1, 1)


def hand_batch_norm_eval(x, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def randomise_(module, generator):
    """Every parameter and BN statistic random: norm scales around 1, everything else
    N(0, 0.5^2) (so sampling offsets reach a few cells, some outside the maps)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
            is_norm_scale = p.dim() == 1 and name.endswith("weight")
            p.copy_(1 + 0.3 * noise if is_norm_scale else 0.5 * noise)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.2 * torch.randn(buf.shape, generator=generator, dtype=torch.float64).to(buf.dtype))
            elif name.endswith("running_var"):
                buf.copy_((0.5 + torch.rand(buf.shape, generator=generator, dtype=torch.float64)).to(buf.dtype))


def prior_tensors():
    shapes = torch.tensor(PRIOR_GRIDS, dtype=torch.long)
    return shapes, level_start_index(shapes)


def seg_sizes():
    return [h * w for h, w in PRIOR_GRIDS]


# ----------------------------------------------------------------------------- GLCA, CCG, ConvFFN
def test_reference_points_are_the_cell_centres():
    ref = reference_points(torch.tensor(PRIOR_GRIDS))
    assert ref.shape == (1, sum(seg_sizes()), 1, 2)
    torch.testing.assert_close(ref[0, :, 0].double(), hand_centres(PRIOR_GRIDS), atol=1e-7, rtol=0)
    # (x, y) order: the second cell of the 8x4 grid is one column to the right
    assert ref[0, 1, 0].tolist() == [pytest.approx(3 / 8), pytest.approx(1 / 16)]


@pytest.mark.parametrize("impl", ["pytorch", "auto"])
def test_glca_with_zero_gamma_is_the_identity(impl):
    torch.manual_seed(0)
    glca = GLCA(DIM, num_heads=HEADS, num_points=POINTS, ratio=0.5, gamma_init=0.0, impl=impl)
    randomise_(glca.attn, torch.Generator().manual_seed(1))
    with torch.no_grad():
        glca.gamma.zero_()
    x = torch.randn(2, VIT_GRID[0] * VIT_GRID[1], DIM)
    c = torch.randn(2, sum(seg_sizes()), DIM)
    shapes, start = prior_tensors()
    ref = hand_centres([VIT_GRID]).float()[None, :, None]
    with torch.no_grad():
        out = glca(x, c, ref, shapes, start)
    assert torch.equal(out, x)


@pytest.mark.parametrize("impl", ["pytorch", "auto"])
def test_glca_equals_eq1_by_hand(impl):
    g = torch.Generator().manual_seed(2)
    glca = GLCA(DIM, num_heads=HEADS, num_points=POINTS, ratio=0.5, gamma_init=1e-6, impl=impl).double()
    randomise_(glca, g)
    x = torch.randn(2, VIT_GRID[0] * VIT_GRID[1], DIM, generator=g, dtype=torch.float64)
    c = torch.randn(2, sum(seg_sizes()), DIM, generator=g, dtype=torch.float64)
    shapes, start = prior_tensors()
    ref = hand_centres([VIT_GRID])
    with torch.no_grad():
        out = glca(x, c, ref[None, :, None], shapes, start)
        attended = hand_msda(glca.attn, hand_layer_norm(x, glca.query_norm), ref,
                             hand_layer_norm(c, glca.feat_norm), PRIOR_GRIDS)
        expected = x + glca.gamma * attended
    assert attended.abs().mean() > 0.1  # the attention term is not negligible
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("impl", ["pytorch", "auto"])
def test_ccg_equals_eq2_plus_conv_ffn_by_hand(impl):
    g = torch.Generator().manual_seed(3)
    ccg = CCG(DIM, num_heads=HEADS, num_points=POINTS, ratio=0.5, ffn_ratio=0.5, impl=impl).double().eval()
    randomise_(ccg, g)
    c = torch.randn(2, sum(seg_sizes()), DIM, generator=g, dtype=torch.float64)
    x = torch.randn(2, VIT_GRID[0] * VIT_GRID[1], DIM, generator=g, dtype=torch.float64)
    shapes, _ = prior_tensors()
    ref = hand_centres(PRIOR_GRIDS)  # each prior token's own centre
    with torch.no_grad():
        out = ccg(c, x, ref[None, :, None], torch.tensor([VIT_GRID]), shapes)
        c_hat = c + hand_msda(ccg.attn, hand_layer_norm(c, ccg.query_norm), ref,
                              hand_layer_norm(x, ccg.feat_norm), [VIT_GRID])
        expected = c_hat + hand_conv_ffn(ccg.ffn, hand_layer_norm(c_hat, ccg.ffn_norm), PRIOR_GRIDS)
    torch.testing.assert_close(out, expected, **TOL)


def random_conv_ffn():
    g = torch.Generator().manual_seed(4)
    ffn = ConvFFN(DIM, 6).double()
    randomise_(ffn, g)
    return ffn, torch.randn(1, sum(seg_sizes()), DIM, generator=g, dtype=torch.float64), g


def test_conv_ffn_equals_hand_computation():
    ffn, c, _ = random_conv_ffn()
    with torch.no_grad():
        torch.testing.assert_close(ffn(c, PRIOR_GRIDS), hand_conv_ffn(ffn, c, PRIOR_GRIDS), **TOL)


def test_conv_ffn_keeps_the_scale_segments_apart():
    """The depth-wise conv sees each segment as its own h x w grid: changes never cross a
    segment border, and within a segment they reach the 2-D 3x3 neighbourhood only."""
    ffn, c, g = random_conv_ffn()
    with torch.no_grad():
        base = ffn(c, PRIOR_GRIDS)
        n8, n16, _ = seg_sizes()
        # perturb the whole stride-8 segment: the stride-16 and -32 outputs do not move
        other = c.clone()
        other[:, :n8] += torch.randn(1, n8, DIM, generator=g, dtype=torch.float64)
        moved = ffn(other, PRIOR_GRIDS)
        assert torch.equal(moved[:, n8:], base[:, n8:])
        assert (moved[:, :n8] - base[:, :n8]).abs().amin(-1).gt(0).all()
        # perturb the stride-16 segment's last token: the stride-8 and -32 outputs do not move
        other = c.clone()
        other[:, n8 + n16 - 1] += 1.0
        moved = ffn(other, PRIOR_GRIDS)
        assert torch.equal(moved[:, :n8], base[:, :n8]) and torch.equal(moved[:, n8 + n16:], base[:, n8 + n16:])

        # one stride-8 token at (row 1, col 3) of the 8x4 grid reaches exactly its 2-D 3x3
        # neighbourhood on that grid: (row 2, col 0), next to it in the flat sequence, is unchanged
        h, w = PRIOR_GRIDS[0]
        other = c.clone()
        other[:, 1 * w + 3] += 1.0
        changed = (ffn(other, PRIOR_GRIDS) - base)[0, :n8].abs().amax(-1).gt(0).view(h, w)
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[0:3, 2:4] = True
        assert torch.equal(changed, expected)


# ----------------------------------------------------------------------------- the encoder
IMAGE = (64, 32)  # ViT grid 4x2; CSPD strides 4..32: 16x8, 8x4, 4x2, 2x1


def tiny_backbone(use_glca=True, use_ccg=True, seed=0):
    """A 4-block BEiT-style ViT (dim 24, one block per stage) + convnext_atto CSPD, float64, eval.
    The PHFI modules, fc1-4, the up-conv and the output BNs (weights and statistics) are
    randomised (GLCA gammas far from their 1e-6 init, non-zero biases)."""
    torch.manual_seed(seed)
    vfm = TimmViT(name="beitv2_base_patch16_224", img_size=IMAGE, stages=[[0, 0], [1, 1], [2, 2], [3, 3]],
                  layer_scale_init=0.5, extra_kwargs=dict(embed_dim=24, depth=4, num_heads=2))
    cspd = CSPD(name="convnext_atto", modalities=["rgb", "thermal"], shared_weights=True)
    backbone = HAPNetBackbone(vfm=vfm, cspd=cspd, vfm_modalities=["rgb"], use_glca=use_glca, use_ccg=use_ccg,
                              num_heads=2, num_points=2, extra_extractors=2, out_norm="BN")
    backbone = backbone.double().eval()
    g = torch.Generator().manual_seed(seed + 100)
    for module in list(backbone.glca or []) + list(backbone.ccg or []) + list(backbone.extra_ccg or []):
        randomise_(module, g)
    for module in (backbone.out_norms, backbone.fc, backbone.up):
        randomise_(module, g)
    with torch.no_grad():
        backbone.level_embed.normal_(generator=g)
    return backbone


def rgbt(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 3, *IMAGE, generator=g, dtype=torch.float64),
            torch.randn(1, 3, *IMAGE, generator=g, dtype=torch.float64))


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def cspd_maps_by_hand(cspd, rgb, thermal):
    """The CSPD's four maps from timm's own stage outputs: per stage, the RGB and thermal
    outputs through their own norms, summed (shared ConvNeXt)."""
    net = cspd.convnext
    maps = None
    for m, image in (("rgb", rgb), ("thermal", thermal)):
        feats = net.forward_intermediates(image, indices=[0, 1, 2, 3], intermediates_only=True)
        normed = [getattr(cspd, f"norms_{m}")[i](f) for i, f in enumerate(feats)]
        maps = normed if maps is None else [a + b for a, b in zip(maps, normed)]
    return maps


def test_table7_sum_fusion_is_vfm_maps_plus_cspd_maps():
    """Table 7, no GLCA and no CCG: each output is BN(CSPD map (+ level embedding, + up(c2) at
    stride 4) + the matching ViT stage's map resized), the ViT run alone by timm."""
    cfg = load_cfg("configs/mfnet/ablations/table7_sum.yaml")
    assert not cfg.MODEL.HAPNET.USE_GLCA and not cfg.MODEL.HAPNET.USE_CCG
    backbone = tiny_backbone(use_glca=False, use_ccg=False)
    assert backbone.glca is None and backbone.ccg is None and backbone.extra_ccg is None
    rgb, thermal = rgbt()
    with torch.no_grad():
        out = backbone(rgb, thermal)
        cspd = cspd_maps_by_hand(backbone.cspd, rgb, thermal)
        vit = backbone.vfm.vfm.forward_intermediates(rgb, indices=[0, 1, 2, 3], intermediates_only=True)
        fc = backbone.fc
        c2, c3, c4 = (hand_conv1x1(cspd[i], fc[i]) + backbone.level_embed[i - 1].view(1, -1, 1, 1) for i in (1, 2, 3))
        c1 = hand_conv1x1(cspd[0], fc[0]) + hand_up2x2(c2, backbone.up)
        for i, (name, ci) in enumerate(zip(["res2", "res3", "res4", "res5"], (c1, c2, c3, c4))):
            expected = hand_batch_norm_eval(ci + resize(vit[i], ci.shape[-2:]), backbone.out_norms[i])
            assert out[name].shape == (1, 24, IMAGE[0] // 2 ** (i + 2), IMAGE[1] // 2 ** (i + 2))
            torch.testing.assert_close(out[name], expected, atol=1e-9, rtol=1e-9, msg=name)


def record_calls(backbone):
    """Forward hooks on every GLCA, ViT block, CCG and extra CCG: the call order and each CCG's
    input and output prior."""
    calls, io = [], {}
    named = [(f"glca{i}", m) for i, m in enumerate(backbone.glca)]
    named += [(f"block{i}", m) for i, m in enumerate(backbone.vfm.vfm.blocks)]
    named += [(f"ccg{i}", m) for i, m in enumerate(backbone.ccg)]
    named += [(f"extra{i}", m) for i, m in enumerate(backbone.extra_ccg)]
    handles = []
    for name, module in named:
        def hook(mod, args, output, name=name):
            calls.append(name)
            io[name] = (args[0], output)
        handles.append(module.register_forward_hook(hook))
    return calls, io, handles


def test_extra_extractors_run_in_the_last_stage_only():
    backbone = tiny_backbone()
    calls, io, handles = record_calls(backbone)
    with torch.no_grad():
        backbone(*rgbt())
    for h in handles:
        h.remove()
    expected = []
    for i in range(4):
        expected += [f"glca{i}", f"block{i}", f"ccg{i}"]
    expected += ["extra0", "extra1"]
    assert calls == expected
    # the extra extractors refine the last stage's prior in turn
    assert torch.equal(io["extra0"][0], io["ccg3"][1])
    assert torch.equal(io["extra1"][0], io["extra0"][1])
    assert not torch.allclose(io["extra1"][1], io["ccg3"][1])


def test_c1_is_up_c2_plus_fc1_and_outputs_add_the_vit_stages():
    """res2 = BN(up(c2) + fc1(CSPD stride-4 map) + ViT stage 1 resized), c2 the stride-8 part of
    the final prior (after the extra extractors); res3..res5 = BN(c_i + ViT stage i resized)."""
    backbone = tiny_backbone()
    _, io, handles = record_calls(backbone)
    rgb, thermal = rgbt(1)
    with torch.no_grad():
        out = backbone(rgb, thermal)
        for h in handles:
            h.remove()
        prior = io["extra1"][1]  # [1, S, D] final spatial prior
        tokens = prior.split(seg_sizes(), dim=1)
        c2, c3, c4 = (t.transpose(1, 2).reshape(1, 24, h, w) for t, (h, w) in zip(tokens, PRIOR_GRIDS))
        f1 = cspd_maps_by_hand(backbone.cspd, rgb, thermal)[0]
        c1 = hand_up2x2(c2, backbone.up) + hand_conv1x1(f1, backbone.fc[0])
        assert c1.shape[-2:] == (16, 8)
        vit = [io[f"block{i}"][1][:, 1:].transpose(1, 2).reshape(1, 24, *VIT_GRID) for i in range(4)]
        for i, (name, ci) in enumerate(zip(["res2", "res3", "res4", "res5"], (c1, c2, c3, c4))):
            expected = hand_batch_norm_eval(ci + resize(vit[i], ci.shape[-2:]), backbone.out_norms[i])
            torch.testing.assert_close(out[name], expected, atol=1e-9, rtol=1e-9, msg=name)


def test_stages_chain_glca_vit_block_and_ccg():
    """The encoder's wiring, replayed with its own modules: per stage, GLCA on the patch tokens
    (cls token kept aside) -> the stage's ViT block on [cls, GLCA output] -> CCG(s) on the block's
    patch tokens, the prior carried from stage to stage; references are the cell centres."""
    backbone = tiny_backbone(seed=2)
    rgb, thermal = rgbt(2)
    vit_ref = hand_centres([VIT_GRID])[None, :, None]
    prior_ref = hand_centres(PRIOR_GRIDS)[None, :, None]
    shapes, start = prior_tensors()
    vit_shape = torch.tensor([VIT_GRID])
    timm_vit = backbone.vfm.vfm
    with torch.no_grad():
        out = backbone(rgb, thermal)
        cspd = cspd_maps_by_hand(backbone.cspd, rgb, thermal)
        c = torch.cat([(hand_conv1x1(cspd[i], backbone.fc[i]) + backbone.level_embed[i - 1].view(1, -1, 1, 1))
                       .flatten(2).transpose(1, 2) for i in (1, 2, 3)], dim=1)
        x = torch.cat([timm_vit.cls_token, timm_vit.patch_embed(rgb)], dim=1)
        stages = []
        for i in range(4):
            patches = backbone.glca[i](x[:, 1:], c, vit_ref, shapes, start)
            x = timm_vit.blocks[i](torch.cat([x[:, :1], patches], dim=1), shared_rel_pos_bias=None)
            for ccg in [backbone.ccg[i]] + (list(backbone.extra_ccg) if i == 3 else []):
                c = ccg(c, x[:, 1:], prior_ref, vit_shape, shapes)
            stages.append(x[:, 1:].transpose(1, 2).reshape(1, 24, *VIT_GRID))
        c2, c3, c4 = (t.transpose(1, 2).reshape(1, 24, h, w) for t, (h, w) in zip(c.split(seg_sizes(), 1), PRIOR_GRIDS))
        c1 = hand_conv1x1(cspd[0], backbone.fc[0]) + hand_up2x2(c2, backbone.up)
        for i, (name, ci) in enumerate(zip(["res2", "res3", "res4", "res5"], (c1, c2, c3, c4))):
            expected = hand_batch_norm_eval(ci + resize(stages[i], ci.shape[-2:]), backbone.out_norms[i])
            torch.testing.assert_close(out[name], expected, atol=1e-9, rtol=1e-9, msg=name)
