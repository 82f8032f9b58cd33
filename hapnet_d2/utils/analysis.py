"""Parameter and FLOP accounting per HAPNet component (fvcore underneath).

fvcore counts one multiply-add as one "flop"; the numbers here keep that convention (GMACs).
It has no formula for scaled-dot-product attention or the deformable attention op, so this
module registers both.
"""
from collections import OrderedDict
from typing import Dict, List

import torch
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import parameter_count
from fvcore.nn.jit_handles import get_shape

__all__ = ["COMPONENTS", "component_of", "parameters_by_component", "flops_by_component", "flop_counter"]

# component -> parameter/module name prefixes (the reference accounting)
COMPONENTS = OrderedDict(
    [
        ("VFM", ["backbone.vfm."]),
        ("CSPD", ["backbone.cspd.", "backbone.fc.", "backbone.up.", "backbone.level_embed", "backbone.out_norms."]),
        ("PHFI (GLCA + CCG)", ["backbone.glca.", "backbone.ccg.", "backbone.extra_ccg."]),
        ("pixel decoder", ["sem_seg_head.pixel_decoder."]),
        ("transformer decoder", ["sem_seg_head.predictor."]),
        ("aux head (training only)", ["aux_head."]),
    ]
)


def component_of(name: str) -> str:
    """The component a parameter or module name belongs to ("other" if none)."""
    for component, prefixes in COMPONENTS.items():
        if any((name + ".").startswith(p) or name.startswith(p) for p in prefixes):
            return component
    return "other"


def parameters_by_component(model: torch.nn.Module) -> Dict[str, int]:
    """Parameter counts per component, plus ``"total"``."""
    counts = OrderedDict((c, 0) for c in list(COMPONENTS) + ["other"])
    for name, p in model.named_parameters():
        counts[component_of(name)] += p.numel()
    counts["total"] = parameter_count(model)[""]
    return counts


def _sdpa_flops(inputs: List, outputs: List) -> int:
    """MACs of softmax(q k^T) v: q [..., L, E], k [..., S, E], v [..., S, Ev]."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _msda_flops(inputs: List, outputs: List) -> int:
    """MACs of deformable attention sampling: value [N, S, M, D], sampling locations
    [N, Lq, M, L, P, 2]; 4 bilinear taps plus the attention weight per sample and channel."""
    value, locations = get_shape(inputs[0]), get_shape(inputs[3])
    n, lq, m, levels, points = locations[:5]
    return 5 * n * lq * m * levels * points * value[3]


def _grid_sample_flops(inputs: List, outputs: List) -> int:
    """MACs of bilinear grid sampling (reference MSDA path): 4 taps per output element."""
    out = get_shape(outputs[0])
    total = 1
    for d in out:
        total *= d
    return 4 * total


def flop_counter(model: torch.nn.Module, inputs) -> FlopCountAnalysis:
    """A Detectron2 FlopCountAnalysis with handles for attention and deformable attention."""
    counter = FlopCountAnalysis(model, inputs)
    counter.set_op_handle(
        "aten::scaled_dot_product_attention", _sdpa_flops,
        "torch_ms_deform_attn::forward", _msda_flops,
        "aten::grid_sampler", _grid_sample_flops,
    )
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return counter


def flops_by_component(counter: FlopCountAnalysis) -> Dict[str, float]:
    """fvcore flops (multiply-adds) per component and ``"total"``, from a counter's module table."""
    by_module = counter.by_module()
    # Detectron2's FlopCountAnalysis traces a wrapper whose child is named "model"
    prefix = "model." if any(k.startswith("model.") for k in by_module) else ""
    out = OrderedDict()
    for component, names in COMPONENTS.items():
        out[component] = sum(by_module.get(prefix + n.rstrip("."), 0) for n in names)
    total = counter.total()
    out["other"] = total - sum(out[c] for c in COMPONENTS)
    out["total"] = total
    return out
