"""Multi-scale deformable attention (MSDA) sampling: compiled kernel and PyTorch reference.

The compiled operator comes from the PyPI package ``torch-ms-deform-attn`` (CPU, CUDA and MPS
kernels with autograd). When it is missing, :func:`ms_deform_attn` falls back to
:func:`ms_deform_attn_pytorch`, a ``F.grid_sample`` formulation with the same semantics
(bilinear sampling, zero padding, ``align_corners=False``), and warns once.
"""

import contextlib
import functools
import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "kernel_available",
    "level_start_index",
    "grid_sample_formulation",
]


def level_start_index(spatial_shapes: Tensor) -> Tensor:
    """Offsets of each level in a flattened multi-level sequence.

    Args:
        spatial_shapes: [L, 2] int64 (H, W) of each level.

    Returns:
        Tensor: [L] int64, the running sum of H*W starting at 0.
    """
    sizes = spatial_shapes.prod(dim=1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])

_INSTALL_HINT = "pip install --no-build-isolation torch-ms-deform-attn"
_IMPLS = ("auto", "kernel", "pytorch")
_grid_sample_forced = 0  # depth of grid_sample_formulation() blocks


@contextlib.contextmanager
def grid_sample_formulation():
    """Within the block, :func:`ms_deform_attn` uses the ``F.grid_sample`` formulation whatever
    its ``impl`` (and without the missing-kernel warning).

    This is the form that traces into TorchScript and ONNX (``GridSample``, opset >= 16); the
    compiled operator cannot be exported. ``torch.onnx.export`` selects it by itself.
    """
    global _grid_sample_forced
    _grid_sample_forced += 1
    try:
        yield
    finally:
        _grid_sample_forced -= 1


def _use_grid_sample() -> bool:
    """Whether a :func:`grid_sample_formulation` block or an ONNX export is running."""
    return _grid_sample_forced > 0 or torch.onnx.is_in_onnx_export()


@functools.lru_cache(maxsize=None)
def _load_kernel(device_type: str) -> Optional[Callable[..., Tensor]]:
    """Return the compiled ``ms_deform_attn`` if it imports and runs on ``device_type``, else None.

    The result is cached per device type; a tiny forward pass proves the kernel works there
    (e.g. a CPU-only build of the extension fails on CUDA tensors).
    """
    try:
        from torch_ms_deform_attn import ms_deform_attn as kernel
    except ImportError:
        return None
    try:
        value = torch.zeros(1, 1, 1, 1, device=device_type)
        shapes = torch.ones(1, 2, dtype=torch.long, device=device_type)
        start = torch.zeros(1, dtype=torch.long, device=device_type)
        locations = torch.full((1, 1, 1, 1, 1, 2), 0.5, device=device_type)
        weights = torch.ones(1, 1, 1, 1, 1, device=device_type)
        kernel(value, shapes, start, locations, weights)
    except (RuntimeError, AssertionError, NotImplementedError):
        # no such device, torch built without it, or extension built without its kernel
        return None
    return kernel


def kernel_available(device="cpu") -> bool:
    """Whether the compiled ``torch_ms_deform_attn`` operator imports and works on ``device``.

    Args:
        device (str or torch.device): device to check, e.g. ``"cpu"`` or ``"cuda"``.

    Returns:
        bool: True if :func:`ms_deform_attn` with ``impl="auto"`` uses the compiled kernel there.
    """
    return _load_kernel(torch.device(device).type) is not None


@functools.lru_cache(maxsize=None)
def _warn_kernel_missing(device_type: str) -> None:
    """Warn (once per process and device type) that the PyTorch fallback is in use."""
    warnings.warn(
        f"The compiled multi-scale deformable attention kernel (torch_ms_deform_attn) is not "
        f"available for {device_type} tensors; using the slower PyTorch grid_sample reference. "
        f"Install the kernel with: {_INSTALL_HINT}",
        UserWarning,
        stacklevel=3,
    )


def _check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> List[Tuple[int, int]]:
    """Check that the MSDA inputs agree with each other, raising a clear ValueError if not.

    Returns:
        list[tuple[int, int]]: the (H, W) of each level as Python ints.
    """
    inputs = {
        "value": (value, "[N, S, M, D]"),
        "spatial_shapes": (spatial_shapes, "[L, 2]"),
        "level_start_index": (level_start_index, "[L]"),
        "sampling_locations": (sampling_locations, "[N, Lq, M, L, P, 2]"),
        "attention_weights": (attention_weights, "[N, Lq, M, L, P]"),
    }
    for name, (tensor, layout) in inputs.items():
        if tensor.dim() != layout.count(",") + 1:
            raise ValueError(
                f"ms_deform_attn: {name} must be {layout}, got shape {tuple(tensor.shape)}"
            )
        if tensor.device != value.device:
            raise ValueError(
                f"ms_deform_attn: {name} is on {tensor.device} but value is on {value.device}"
            )
        if name in ("spatial_shapes", "level_start_index"):
            if tensor.dtype != torch.long:
                raise ValueError(f"ms_deform_attn: {name} must be int64 (long), got {tensor.dtype}")
        elif not tensor.is_floating_point():
            raise ValueError(f"ms_deform_attn: {name} must be floating point, got {tensor.dtype}")
    n, s, m, _ = value.shape
    num_levels = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2 or level_start_index.shape[0] != num_levels:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be [L, 2] and level_start_index [L], got "
            f"{tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}"
        )
    n_loc, _, m_loc, l_loc, _, two = sampling_locations.shape
    if (n_loc, m_loc, l_loc, two) != (n, m, num_levels, 2):
        raise ValueError(
            f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} must be "
            f"[N={n}, Lq, M={m}, L={num_levels}, P, 2] to match value {tuple(value.shape)} and "
            f"spatial_shapes {tuple(spatial_shapes.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"ms_deform_attn: attention_weights {tuple(attention_weights.shape)} must equal "
            f"sampling_locations.shape[:-1] = {tuple(sampling_locations.shape[:-1])}"
        )
    level_shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    level_sizes = [h * w for h, w in level_shapes]
    if any(h <= 0 or w <= 0 for h, w in level_shapes):
        raise ValueError(f"ms_deform_attn: spatial_shapes must be positive, got {level_shapes}")
    if sum(level_sizes) != s:
        raise ValueError(
            f"ms_deform_attn: value has S={s} tokens but spatial_shapes {level_shapes} give "
            f"sum(H*W)={sum(level_sizes)}"
        )
    expected_starts = [sum(level_sizes[:i]) for i in range(num_levels)]
    if level_start_index.tolist() != expected_starts:
        raise ValueError(
            f"ms_deform_attn: level_start_index must be {expected_starts} for spatial_shapes "
            f"{level_shapes}, got {level_start_index.tolist()}"
        )
    return level_shapes


def _grid_sample_attention(
    value: Tensor,
    level_shapes: List[Tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """MSDA with ``F.grid_sample``, on inputs already checked by :func:`_check_inputs`.

    Args:
        value: [N, S, M, D], the levels concatenated along S in ``level_shapes`` order.
        level_shapes: (H, W) of each of the L levels.
        sampling_locations: [N, Lq, M, L, P, 2], (x, y) normalised to [0, 1].
        attention_weights: [N, Lq, M, L, P].

    Returns:
        Tensor: [N, Lq, M*D].
    """
    n, _, m, d = value.shape
    _, lq, _, _, p, _ = sampling_locations.shape
    # grid_sample expects (x, y) in [-1, 1]; batch and heads are folded together: N*M.
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # [N*M, Lq, L, P, 2]
    weights = attention_weights.transpose(1, 2).flatten(0, 1)  # [N*M, Lq, L, P]
    level_values = value.split([h * w for h, w in level_shapes], dim=1)
    output = value.new_zeros(n * m, d, lq)
    for level, ((h, w), level_value) in enumerate(zip(level_shapes, level_values)):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        level_map = level_value.permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        sampled = F.grid_sample(
            level_map,
            grids[:, :, level],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # [N*M, D, Lq, P]
        output = output + torch.einsum("bdqp,bqp->bdq", sampled, weights[:, :, level])
    # [N*M, D, Lq] -> [N, M*D, Lq] -> [N, Lq, M*D]
    return output.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference multi-scale deformable attention written with ``F.grid_sample``.

    Each query gathers, per head, the bilinearly interpolated values at P points on each of the
    L levels (zero outside the map, ``align_corners=False``) and sums them with the given
    weights. Runs in the inputs' dtype; see :func:`ms_deform_attn` for the mixed-precision entry.

    Args:
        value: [N, S, M, D] values of all levels concatenated, S = sum(H*W).
        spatial_shapes: [L, 2] int64 (H, W) of each level.
        level_start_index: [L] int64 offset of each level in S.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1].
        attention_weights: [N, Lq, M, L, P], used as given (already softmaxed).

    Returns:
        Tensor: [N, Lq, M*D].
    """
    level_shapes = _check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return _grid_sample_attention(value, level_shapes, sampling_locations, attention_weights)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "auto",
) -> Tensor:
    """Multi-scale deformable attention, with the compiled kernel when it is available.

    Half-precision inputs (float16/bfloat16) are computed in float32, also under autocast, and
    the result is cast back to ``value.dtype``. Float64 inputs are computed in float64.

    Args:
        value: [N, S, M, D] values of all levels concatenated, S = sum(H*W).
        spatial_shapes: [L, 2] int64 (H, W) of each level.
        level_start_index: [L] int64 offset of each level in S.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1].
        attention_weights: [N, Lq, M, L, P], used as given (already softmaxed).
        impl (str): "auto" (compiled kernel if it works on value's device, else the PyTorch
            reference with a one-time warning), "kernel" (RuntimeError if unavailable) or
            "pytorch" (the reference, no warning).

    Returns:
        Tensor: [N, Lq, M*D] in ``value.dtype``.
    """
    if impl not in _IMPLS:
        raise ValueError(f"ms_deform_attn: impl must be one of {_IMPLS}, got {impl!r}")
    level_shapes = _check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    device_type = value.device.type
    exporting = _use_grid_sample()
    kernel = None if impl == "pytorch" or exporting else _load_kernel(device_type)
    if kernel is None and impl == "kernel" and not exporting:
        raise RuntimeError(
            f"ms_deform_attn(impl='kernel'): the compiled torch_ms_deform_attn operator is not "
            f"available for {device_type} tensors. Install it with: {_INSTALL_HINT}"
        )
    if kernel is None and impl == "auto" and not exporting:
        _warn_kernel_missing(device_type)

    compute_dtype = torch.float32
    for tensor in (value, sampling_locations, attention_weights):
        compute_dtype = torch.promote_types(compute_dtype, tensor.dtype)
    value_c, locations_c, weights_c = (
        t.to(compute_dtype) for t in (value, sampling_locations, attention_weights)
    )
    autocast_off = (
        torch.autocast(device_type, enabled=False)
        if torch.amp.is_autocast_available(device_type)
        else contextlib.nullcontext()
    )
    with autocast_off:
        if kernel is not None:
            output = kernel(value_c, spatial_shapes, level_start_index, locations_c, weights_c)
        else:
            output = _grid_sample_attention(value_c, level_shapes, locations_c, weights_c)
    return output.to(value.dtype)
