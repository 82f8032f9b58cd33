"""Multi-scale deformable attention: compiled kernel, PyTorch reference and the nn.Module."""

# Import order matters: the function ``ms_deform_attn`` must be bound after the submodule of the
# same name, so that ``hapnet_d2.ops.ms_deform_attn`` is the function.
from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_func import (
    kernel_available,
    level_start_index,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

__all__ = [
    "MSDeformAttn",
    "kernel_available",
    "level_start_index",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
