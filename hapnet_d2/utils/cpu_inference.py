"""Converting a HAPNet model once for fast CPU inference: float32, bf16 or int8.

:func:`prepare_for_cpu_inference` rewrites an eval-mode model in place:

* every precision: BEiT's q/k/v biases are folded into the ``qkv`` Linear (timm concatenates
  them at every call; the same values, the same matmul);
* ``"bf16"``: weights in bf16 once (``torch.autocast`` re-casts every weight at every call), with
  explicit float32 islands where precision needs them: the deformable attention's sampling
  offsets and attention-weight projections (the sampling and its softmax already run in float32,
  :func:`hapnet_d2.ops.ms_deform_attn`), the norms (float32 parameters and statistics; PyTorch's
  CPU kernels take bf16 inputs with float32 parameters and compute in float32, no extra casts),
  and the final scores (the decoder's last norm, class and mask heads and the mask features
  they are multiplied with). Convolutions run channels-last (oneDNN's bf16 convolutions are
  faster in NHWC). Only fast on CPUs with bf16 units (:mod:`hapnet_d2.utils.cpu_features`);
* ``"int8"``: dynamic int8 quantization of the Linear layers (int8 weights, activations
  quantized per call; ``torch.ao.quantization.quantize_dynamic``) for CPUs without bf16 units.
  The same float32 islands are kept (sampling offsets and weights, final scores).

:func:`retain_freed_memory` is a process-wide allocator setting that helps every precision.

A converted model is for inference only: its state dict no longer matches the checkpoints.
"""
import ctypes
import ctypes.util
import warnings
from typing import Callable, Iterable, List, Tuple

import torch
from torch import nn

from hapnet_d2.ops import MSDeformAttn

__all__ = [
    "PRECISIONS",
    "prepare_for_cpu_inference",
    "fold_qkv_bias",
    "float32_island_names",
    "retain_freed_memory",
]

PRECISIONS = ("fp32", "bf16", "int8")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
# MSDeformAttn projections whose outputs are sampling positions and softmax logits
DEFORMABLE_ISLANDS = ("sampling_offsets", "attention_weights")
# the transformer decoder's modules that form the final class and mask logits
SCORE_ISLANDS = ("decoder_norm", "class_embed", "mask_embed")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Keep freed memory in the process for reuse instead of returning it to the OS (glibc).

    By default glibc serves every allocation above 32 MiB (and, adaptively, smaller ones) with a
    fresh ``mmap`` and unmaps it on free, so each large activation of every call pays page
    faults for memory the previous call just released. At 480x480 (reference model, float32)
    these faults were a third of the time of the gathers, copies and element-wise ops in a
    profile on a 2-core VM. This sets ``M_MMAP_MAX=0`` (allocate from the heap) and a 1 GiB trim
    threshold; the peak memory is unchanged, the process just does not shrink between calls.
    Comparable to running with jemalloc or tcmalloc preloaded.

    Returns:
        True if both settings were applied, False where glibc's ``mallopt`` is not available
        (other C libraries, macOS, Windows); nothing changes then.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def fold_qkv_bias(model: nn.Module) -> int:
    """Give BEiT attention blocks one ``qkv`` bias instead of separate q/k/v biases.

    timm's BEiT ``Attention`` keeps ``q_bias``, a zero ``k_bias`` buffer and ``v_bias`` and
    concatenates them at every call into the bias of ``F.linear(x, qkv.weight, bias)``; with
    ``q_bias`` None it calls ``qkv(x)`` instead. Moving the concatenation into ``qkv.bias``
    computes the same matmul with the same bias (bit-identical), and lets the int8 path quantize
    ``qkv`` like any other Linear.

    Args:
        model: any module; BEiT attention modules under it are changed in place.
    Returns:
        the number of attention modules changed.
    """
    count = 0
    for m in model.modules():
        if getattr(m, "q_bias", None) is None or not isinstance(getattr(m, "qkv", None), nn.Linear):
            continue
        if m.qkv.bias is not None or getattr(m, "qkv_bias_separate", False):
            continue
        with torch.no_grad():
            bias = torch.cat((m.q_bias, m.k_bias, m.v_bias)).detach().clone()
        m.qkv.bias = nn.Parameter(bias, requires_grad=False)
        m.q_bias = None
        m.v_bias = None
        m.k_bias = None
        count += 1
    return count


def float32_island_names(model: nn.Module) -> List[str]:
    """Names of the modules kept in float32 by the bf16 and int8 paths (besides the norms).

    Args:
        model: a HAPNet model (or any module with :class:`MSDeformAttn` and a Mask2Former-style
            decoder with ``decoder_norm`` / ``class_embed`` / ``mask_embed``).
    Returns:
        module names, e.g. ``backbone.glca.0.attn.sampling_offsets``,
        ``sem_seg_head.predictor.class_embed``.
    """
    names = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, MSDeformAttn):
            names += [prefix + child for child in DEFORMABLE_ISLANDS]
        elif all(isinstance(getattr(m, child, None), nn.Module) for child in SCORE_ISLANDS):
            names += [prefix + child for child in SCORE_ISLANDS]
    return names


def _cast_floating(value, dtype: torch.dtype):
    """``value`` with its floating tensors (also inside lists and tuples) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floating(v, dtype) for v in value)
    return value


def _cast_inputs_hook(dtype: torch.dtype, positions: Iterable[int] = None) -> Callable:
    """A forward pre-hook casting the floating tensor arguments (all, or those at ``positions``)
    to ``dtype``."""
    positions = None if positions is None else set(positions)

    def hook(module, args):
        return tuple(
            _cast_floating(a, dtype) if positions is None or i in positions else a
            for i, a in enumerate(args)
        )

    return hook


def _make_float32_island(module: nn.Module) -> None:
    """Float32 parameters, float32 inputs (cast on entry); the outputs stay float32."""
    module.float()
    module.register_forward_pre_hook(_cast_inputs_hook(torch.float32))


def _islands(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name in float32_island_names(model)]


def _predictors(model: nn.Module) -> List[nn.Module]:
    """Modules holding the final-score islands (the transformer decoders)."""
    return [
        m for m in model.modules() if all(isinstance(getattr(m, c, None), nn.Module) for c in SCORE_ISLANDS)
    ]


def _to_bf16(model: nn.Module) -> None:
    """The bf16 conversion of :func:`prepare_for_cpu_inference` (see the module docstring)."""
    model.to(torch.bfloat16)
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            m.float()
    for _, island in _islands(model):
        _make_float32_island(island)
    for predictor in _predictors(model):
        # the mask features enter the final mask logits (and the decoder's attention masks)
        predictor.register_forward_pre_hook(_cast_inputs_hook(torch.float32, positions=[1]))
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.dtype == torch.bfloat16:
            m.to(memory_format=torch.channels_last)
    backbone = getattr(model, "backbone", None)
    if backbone is not None:  # the meta-architecture normalises the images in float32
        backbone.register_forward_pre_hook(_cast_inputs_hook(torch.bfloat16))
        for name, buffer in model.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(model, name, buffer.float())


def _quantize_int8(model: nn.Module) -> int:
    """Dynamic int8 quantization of the Linear layers outside the float32 islands.

    Returns:
        the number of Linear layers quantized.
    """
    islands = tuple(name for name, _ in _islands(model))
    names = [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear and not any(name == i or name.startswith(i + ".") for i in islands)
    ]
    # per-tensor weight scales: ~10% faster than per-channel here, the same 99.9% argmax
    # agreement as per-channel on the trained tiny model
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # eager-mode quantization is marked deprecated since 2.10
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*")
        torch.ao.quantization.quantize_dynamic(
            model, qconfig_spec={n: qconfig for n in names}, dtype=torch.qint8, inplace=True
        )
    return len(names)


def prepare_for_cpu_inference(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """Convert ``model`` in place for CPU inference at ``precision`` (see the module docstring).

    Args:
        model: a HAPNet model on the CPU (its weights loaded: the conversion is done once).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
    Returns:
        ``model`` in eval mode, converted; call it as before, without ``torch.autocast``. Its
        scores (``sem_seg``) are float32 in every precision.
    Raises:
        ValueError: unknown precision, a model not on the CPU, or one converted before.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"prepare_for_cpu_inference converts CPU models, this one is on {sorted(devices)}")
    if getattr(model, "cpu_inference_precision", None) is not None:
        raise ValueError(
            f"the model was already converted for {model.cpu_inference_precision} inference; "
            f"build a fresh one to convert it again"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fold_qkv_bias(model)
    if precision == "bf16":
        _to_bf16(model)
    elif precision == "int8":
        _quantize_int8(model)
    model.cpu_inference_precision = precision
    return model
