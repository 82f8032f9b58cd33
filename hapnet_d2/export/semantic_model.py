"""The semantic HAPNet model in the form that is exported: raw pixels in, scores and labels out.

:class:`SemanticExportModel` puts the input conversion (uint8 RGB to float, thermal channel
replication, both normalisations) inside the graph and runs the model's own whole-image
inference (:meth:`HAPNet.whole_inference`), so the exported file needs nothing but pixels.
:func:`export_formulation` is the context under which it is traced: the deformable attention
runs as its ``grid_sample`` formulation (the compiled operator cannot be traced) and BEiT's
relative-position tables are those of the export size, installed before tracing.
"""
import contextlib
from typing import Iterator, Tuple

import torch
from torch import nn

from hapnet_d2.ops.ms_deform_attn_func import grid_sample_formulation

__all__ = ["SemanticExportModel", "export_formulation", "example_inputs"]


class SemanticExportModel(nn.Module):
    """Whole-image semantic inference of a :class:`~hapnet_d2.modeling.meta_arch.hapnet.HAPNet`
    on raw pixels.

    The computation is the model's own (same buffers, same modules): nothing is re-implemented
    except the conversion of the raw inputs, which follows ``HAPNet._normalised_pair``.
    """

    def __init__(self, model: nn.Module):
        """
        Args:
            model: a HAPNet in eval mode (``TEST.MODE`` is not used: inference is whole-image).
        """
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            rgb: ``[1, 3, H, W]`` uint8 in RGB order (whatever ``INPUT.FORMAT`` the model was
                trained with: the model's own inference works in RGB order).
            thermal: ``[1, 1, H, W]`` (or ``[1, 3, H, W]`` for a 3-channel X modality) float32 on
                the 0-255 scale, i.e. after the dataset's thermal scaling.
        Returns:
            scores ``[1, K, H, W]`` float32 (the model's ``sem_seg``) and labels ``[1, H, W]``
            uint8 (their argmax; the first class wins ties, as ``torch.argmax``).
        """
        m = self.model
        image = (rgb.to(torch.float32) - m.pixel_mean) / m.pixel_std
        thermal = thermal.to(torch.float32).expand(-1, 3, -1, -1)
        thermal = (thermal - m.thermal_mean) / m.thermal_std
        scores = m.whole_inference(image, thermal)
        return scores, scores.argmax(dim=1).to(torch.uint8)


def example_inputs(size: Tuple[int, int], thermal_channels: int = 1, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of the exported signature (for tracing and checks).

    Args:
        size: (H, W).
        thermal_channels: 1 (thermal) or 3 (X modality such as HHA).
    Returns:
        rgb ``[1, 3, H, W]`` uint8 and thermal ``[1, C, H, W]`` float32 in 0-255.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size
    rgb = torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8)
    thermal = torch.randint(0, 256, (1, thermal_channels, h, w), generator=g).to(torch.float32)
    return rgb, thermal


@contextlib.contextmanager
def export_formulation(model: nn.Module, size: Tuple[int, int]) -> Iterator[None]:
    """Within the block, ``model`` computes with export-friendly formulations at ``size``.

    - deformable attention through ``F.grid_sample`` (ONNX ``GridSample``, opset >= 16), also
      where the compiled kernel is installed; same numbers as the kernel up to float rounding;
    - BEiT's relative-position tables resized for the token grid of ``size`` and installed on
      the modules before tracing, so the trace records plain lookups instead of the resizing.

    Args:
        model: a HAPNet in eval mode.
        size: (H, W) of the export, multiples of 32.
    """
    grid = (size[0] // 16, size[1] // 16)
    with torch.no_grad(), grid_sample_formulation(), model.backbone.vfm.token_grid(grid):
        yield
