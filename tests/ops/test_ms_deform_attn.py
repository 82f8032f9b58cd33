"""Tests of hapnet_d2.ops: compiled MSDA kernel, PyTorch reference, dispatch and MSDeformAttn."""

import importlib
import math
import sys
import warnings

import pytest
import torch

from hapnet_d2.ops import MSDeformAttn, kernel_available, ms_deform_attn, ms_deform_attn_pytorch

func_module = importlib.import_module("hapnet_d2.ops.ms_deform_attn_func")

needs_kernel = pytest.mark.skipif(
    not kernel_available(), reason="torch_ms_deform_attn kernel is not importable on CPU"
)
# Three levels of different, non-square sizes.
LEVEL_SHAPES = [(6, 9), (3, 5), (2, 3)]


def _levels(shapes):
    """Return spatial_shapes [L, 2] and level_start_index [L] for a list of (H, W)."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(dim=1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _random_inputs(dtype=torch.float32, n=2, lq=7, heads=3, head_dim=4, points=4, seed=0):
    """Random MSDA inputs; locations spill outside [0, 1] to exercise the zero padding."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = _levels(LEVEL_SHAPES)
    s, levels = int(spatial_shapes.prod(dim=1).sum()), len(LEVEL_SHAPES)
    value = torch.randn(n, s, heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(n, lq, heads, levels, points, 2, generator=generator, dtype=dtype)
    locations = locations * 1.4 - 0.2
    logits = torch.randn(n, lq, heads, levels * points, generator=generator, dtype=dtype)
    weights = logits.softmax(-1).view(n, lq, heads, levels, points)
    return value, spatial_shapes, level_start_index, locations, weights


@pytest.fixture
def hidden_kernel(monkeypatch):
    """Make ``import torch_ms_deform_attn`` fail and reset the kernel and warning caches."""
    monkeypatch.setitem(sys.modules, "torch_ms_deform_attn", None)
    func_module._load_kernel.cache_clear()
    func_module._warn_kernel_missing.cache_clear()
    yield
    monkeypatch.undo()
    func_module._load_kernel.cache_clear()
    func_module._warn_kernel_missing.cache_clear()


# ------------------------------------------------------------------ kernel vs reference
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference_outputs_and_gradients(dtype):
    inputs = _random_inputs(dtype)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    grad_output = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])
    grad_output = grad_output.to(dtype)
    results = {}
    for impl in ("kernel", "pytorch"):
        leaves = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        output = ms_deform_attn(
            leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2], impl=impl
        )
        output.backward(grad_output)
        results[impl] = [output] + [leaf.grad for leaf in leaves]
    assert results["kernel"][0].shape == (2, 7, 12)
    names = ["output", "grad value", "grad sampling_locations", "grad attention_weights"]
    for name, kernel_t, reference_t in zip(names, results["kernel"], results["pytorch"]):
        assert kernel_t.dtype == dtype, name
        torch.testing.assert_close(kernel_t, reference_t, atol=1e-4, rtol=0, msg=name)


# ------------------------------------------------------------------ reference by hand
@pytest.mark.parametrize("impl", ["pytorch", pytest.param("kernel", marks=needs_kernel)])
def test_hand_computed_samples(impl):
    # One level of H=2, W=3 with one head of two channels: pixel (i, j) holds (10*i + j, -1).
    h, w = 2, 3
    pixels = torch.tensor([[10.0 * i + j, -1.0] for i in range(h) for j in range(w)])
    value = pixels.view(1, h * w, 1, 2)
    spatial_shapes, level_start_index = _levels([(h, w)])

    def centre(i, j):
        return ((j + 0.5) / w, (i + 0.5) / h)

    cases = [  # (x, y) location -> expected sample
        (centre(1, 2), [12.0, -1.0]),  # a pixel centre gives that pixel
        (centre(0, 1), [1.0, -1.0]),
        ((1.0 / w, 0.5 / h), [0.5, -1.0]),  # halfway between (0, 0) and (0, 1): their mean
        ((2.0 / w, 1.0 / h), [(1 + 2 + 11 + 12) / 4, -1.0]),  # centre of 4 pixels
        ((0.0, 1.5 / h), [5.0, -0.5]),  # on the left border: half of pixel (1, 0), half zero
        ((-0.5, 0.5), [0.0, 0.0]),  # fully outside: nothing
        ((0.5, 1.6), [0.0, 0.0]),
    ]
    locations = torch.tensor([xy for xy, _ in cases]).view(1, len(cases), 1, 1, 1, 2)
    weights = torch.ones(1, len(cases), 1, 1, 1)
    output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, impl)
    torch.testing.assert_close(output[0], torch.tensor([e for _, e in cases]))

    # Two points with weights 0.25 / 0.75 give the weighted sum of their samples.
    two_points = torch.tensor([centre(0, 0), centre(1, 1)]).view(1, 1, 1, 1, 2, 2)
    weights = torch.tensor([0.25, 0.75]).view(1, 1, 1, 1, 2)
    output = ms_deform_attn(value, spatial_shapes, level_start_index, two_points, weights, impl)
    torch.testing.assert_close(output.view(2), torch.tensor([0.75 * 11.0, -1.0]))


def test_reference_levels_and_heads_are_independent():
    # The output is the sum over levels of one-level attentions on each level's slice of S, and
    # head m fills channels [m*D, (m+1)*D) from its own value channels only.
    value, spatial_shapes, level_start_index, locations, weights = _random_inputs(heads=2)
    full = ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, locations, weights)
    per_level = []
    for level, (start, (h, w)) in enumerate(zip(level_start_index.tolist(), LEVEL_SHAPES)):
        one_level = slice(level, level + 1)
        per_level.append(
            ms_deform_attn_pytorch(
                value[:, start : start + h * w],
                *_levels([(h, w)]),
                locations[:, :, :, one_level],
                weights[:, :, :, one_level],
            )
        )
    torch.testing.assert_close(full, sum(per_level))
    head_1 = ms_deform_attn_pytorch(
        value[:, :, 1:], spatial_shapes, level_start_index, locations[:, :, 1:], weights[:, :, 1:]
    )
    torch.testing.assert_close(full[..., 4:], head_1)


# ------------------------------------------------------------------ dispatch
def test_auto_falls_back_with_one_warning_when_kernel_hidden(hidden_kernel):
    assert not kernel_available()
    inputs = _random_inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ms_deform_attn(*inputs, impl="auto")
        second = ms_deform_attn(*inputs, impl="auto")
        ms_deform_attn(*inputs, impl="pytorch")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "pip install --no-build-isolation torch-ms-deform-attn" in messages[0]
    torch.testing.assert_close(first, ms_deform_attn_pytorch(*inputs), atol=0, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="torch-ms-deform-attn"):
        ms_deform_attn(*inputs, impl="kernel")


@needs_kernel
def test_auto_uses_kernel_silently_when_available():
    inputs = _random_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = ms_deform_attn(*inputs, impl="auto")
    from torch_ms_deform_attn import ms_deform_attn as kernel

    torch.testing.assert_close(output, kernel(*inputs), atol=0, rtol=0)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="impl must be one of"):
        ms_deform_attn(*_random_inputs(), impl="cuda")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda i: (i[0][:, :-1],) + i[1:], r"S=74 tokens but spatial_shapes .* sum\(H\*W\)=75"),
        (lambda i: (i[0][0],) + i[1:], r"value must be \[N, S, M, D\]"),
        (lambda i: i[:2] + (i[2] + 1,) + i[3:], r"level_start_index must be \[0, 54, 69\]"),
        (lambda i: i[:1] + (i[1].int(),) + i[2:], r"spatial_shapes must be int64"),
        (lambda i: i[:3] + (i[3][:, :, :2],) + i[4:], r"sampling_locations .* must be"),
        (lambda i: i[:4] + (i[4][..., :2],), r"attention_weights .* must equal"),
    ],
    ids=["S-mismatch", "value-rank", "level-start", "shapes-dtype", "heads", "points"],
)
def test_bad_inputs_raise_clear_errors(corrupt, message):
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*corrupt(_random_inputs()), impl="pytorch")


# ------------------------------------------------------------------ low precision
@pytest.mark.parametrize("impl", ["pytorch", pytest.param("kernel", marks=needs_kernel)])
def test_bfloat16_is_computed_in_float32(impl):
    value, spatial_shapes, level_start_index, locations, weights = _random_inputs()
    low = [t.bfloat16() for t in (value, locations, weights)]
    output = ms_deform_attn(low[0], spatial_shapes, level_start_index, low[1], low[2], impl)
    assert output.dtype == torch.bfloat16
    # Bit-identical to computing in float32 from the same (rounded) inputs, then rounding once.
    from_fp32 = ms_deform_attn(
        low[0].float(), spatial_shapes, level_start_index, low[1].float(), low[2].float(), impl
    )
    assert torch.equal(output, from_fp32.bfloat16())
    exact = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, impl)
    torch.testing.assert_close(output.float(), exact, atol=5e-2, rtol=2e-2)

    # Autocast does not push the op back to low precision: float32 in, float32 out, same values.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_output = ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, impl
        )
    assert autocast_output.dtype == torch.float32
    torch.testing.assert_close(autocast_output, exact, atol=0, rtol=0)

    # Gradients reach low-precision leaves in their own dtype.
    leaf = low[0].clone().requires_grad_(True)
    ms_deform_attn(leaf, spatial_shapes, level_start_index, low[1], low[2], impl).sum().backward()
    assert leaf.grad.dtype == torch.bfloat16 and leaf.grad.abs().sum() > 0


# ------------------------------------------------------------------ MSDeformAttn module
def _module_inputs(d_model=32, n=2, lq=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = _levels(LEVEL_SHAPES)
    s = int(spatial_shapes.prod(dim=1).sum())
    query = torch.randn(n, lq, d_model, generator=generator)
    reference_points = torch.rand(n, lq, len(LEVEL_SHAPES), 2, generator=generator)
    input_flatten = torch.randn(n, s, d_model, generator=generator)
    return query, reference_points, input_flatten, spatial_shapes, level_start_index


def _module(**kwargs):
    torch.manual_seed(0)
    options = dict(d_model=32, n_levels=3, n_heads=4, n_points=2, ratio=0.5, impl="pytorch")
    options.update(kwargs)
    return MSDeformAttn(**options)


def test_module_output_shape_and_gradients_reach_all_parameters():
    module = _module()
    assert module.value_proj.out_features == 16 and module.output_proj.in_features == 16
    inputs = _module_inputs()
    output = module(*inputs)
    assert output.shape == (2, 5, 32)
    (output * torch.randn_like(output)).sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_module_initialisation_is_deformable_detr():
    module = _module(n_heads=8, n_levels=2, n_points=3, ratio=1.0)
    query = torch.randn(4, 32)
    # Zero attention logits for any query, i.e. uniform weights over levels and points.
    assert torch.equal(module.attention_weights(query), torch.zeros(4, 8 * 2 * 3))
    assert torch.equal(
        module.sampling_offsets.weight, torch.zeros_like(module.sampling_offsets.weight)
    )
    # Radial grid: head h points along angle 2*pi*h/8, scaled to max(|x|, |y|) = 1, point p at p+1.
    directions = torch.tensor(
        [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32
    )
    expected = directions[:, None, None, :] * torch.tensor([1.0, 2.0, 3.0])[None, None, :, None]
    bias = module.sampling_offsets.bias.view(8, 2, 3, 2)
    torch.testing.assert_close(bias, expected.expand(8, 2, 3, 2), atol=1e-5, rtol=0)
    for proj in (module.value_proj, module.output_proj):
        assert torch.equal(proj.bias, torch.zeros_like(proj.bias))
        bound = math.sqrt(6.0 / (proj.in_features + proj.out_features))  # xavier_uniform
        assert proj.weight.abs().max() <= bound and proj.weight.std() > bound / 4


def test_module_at_init_ignores_query_content():
    # Offsets and weights come from biases only at init: the output depends on positions alone.
    module = _module()
    query, *rest = _module_inputs()
    torch.testing.assert_close(module(query, *rest), module(torch.randn_like(query), *rest))


def test_module_padding_mask_removes_padded_values():
    module = _module()
    query, reference_points, input_flatten, spatial_shapes, level_start_index = _module_inputs()
    padding = torch.zeros(input_flatten.shape[:2], dtype=torch.bool)
    padding[0, 10:40] = True
    padding[1, 60:] = True
    changed = torch.where(padding[..., None], torch.randn_like(input_flatten), input_flatten)
    args = (spatial_shapes, level_start_index, padding)
    masked = module(query, reference_points, input_flatten, *args)
    torch.testing.assert_close(masked, module(query, reference_points, changed, *args))
    # Without the mask the padded values do count.
    unmasked = module(query, reference_points, input_flatten, spatial_shapes, level_start_index)
    assert not torch.allclose(masked, unmasked)


def test_module_box_reference_points_match_point_references_without_offsets():
    module = _module()
    torch.nn.init.zeros_(module.sampling_offsets.bias)
    query, reference_points, *rest = _module_inputs()
    boxes = torch.cat([reference_points, torch.rand_like(reference_points)], dim=-1)
    torch.testing.assert_close(module(query, boxes, *rest), module(query, reference_points, *rest))


@needs_kernel
def test_module_kernel_and_reference_agree():
    inputs = _module_inputs()
    outputs = [_module(impl=impl)(*inputs) for impl in ("kernel", "pytorch")]
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)


def test_module_bfloat16_autocast():
    module = _module()
    inputs = _module_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = module(*inputs)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), module(*inputs), atol=0.1, rtol=0.05)


def test_module_errors():
    with pytest.raises(ValueError, match="multiple of n_heads=4"):
        MSDeformAttn(d_model=30, n_heads=4)
    module = _module()
    query, reference_points, input_flatten, spatial_shapes, level_start_index = _module_inputs()
    with pytest.raises(ValueError, match=r"S=74 tokens .* sum\(H\*W\)=75"):
        module(query, reference_points, input_flatten[:, 1:], spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match=r"query must be \[N, Lq, 32\]"):
        module(query[..., :8], reference_points, input_flatten, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match=r"input_spatial_shapes must be \[n_levels=3, 2\]"):
        module(query, reference_points, input_flatten, spatial_shapes[:2], level_start_index)
    with pytest.raises(ValueError, match="reference_points must"):
        module(query, reference_points[:, :, :2], input_flatten, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match="input_padding_mask must be a bool"):
        module(
            query,
            reference_points,
            input_flatten,
            spatial_shapes,
            level_start_index,
            torch.zeros(2, 75),
        )
