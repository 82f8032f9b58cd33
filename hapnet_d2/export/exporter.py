"""Export whole-image semantic inference of a HAPNet config to ONNX or TorchScript.

What is exported: :class:`~hapnet_d2.export.semantic_model.SemanticExportModel`, i.e. raw RGB
and thermal pixels in, class scores and the label map out, at ONE fixed input size. Sizes are
baked into the traced graph (BEiT's relative-position tables of the token grid, the deformable
attention's level shapes and reference points, the padding), so a model for another size is
another export; ONNX dynamic height/width axes are refused (:data:`DYNAMIC_REFUSAL`).

Every request that cannot be exported raises :class:`ExportError` with a one-line message.
"""
import contextlib
import json
import os
import warnings
from typing import Dict, Iterator, Tuple

import torch

from .metadata import TORCHSCRIPT_METADATA_FILE, write_onnx_metadata
from .semantic_model import SemanticExportModel, example_inputs, export_formulation

__all__ = [
    "ExportError",
    "FORMATS",
    "MIN_OPSET",
    "DEFAULT_OPSET",
    "DYNAMIC_REFUSAL",
    "check_export_request",
    "build_model_for_export",
    "export_onnx",
    "export_torchscript",
    "exported_file_name",
]

FORMATS = ("onnx", "torchscript")
MIN_OPSET = 16  # ONNX GridSample (the deformable attention) exists from opset 16
DEFAULT_OPSET = 17
DYNAMIC_REFUSAL = (
    "--dynamic: the traced graph bakes the input size in (BEiT relative-position tables of the "
    "token grid, deformable-attention level shapes and reference points, padding), so it cannot "
    "run at other sizes; export one file per size instead (repeat --size H W)"
)


class ExportError(ValueError):
    """An export request that cannot be served; the message is one line."""


def check_export_request(cfg, size: Tuple[int, int], fmt: str = "onnx", opset: int = DEFAULT_OPSET,
                         dynamic: bool = False) -> None:
    """Refuse what the export does not cover, before any model is built.

    Args:
        cfg: the model's config.
        size: (H, W) of the export.
        fmt: "onnx" or "torchscript".
        opset: ONNX opset (ONNX only).
        dynamic: dynamic height/width requested.
    Raises:
        ExportError: slide or TTA inference requested, panoptic/instance output on, not a HAPNet,
            a size not a positive multiple of 32, an opset without GridSample, dynamic axes,
            more than 256 classes.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if cfg.MODEL.META_ARCHITECTURE != "HAPNet":
        raise ExportError(f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: only HAPNet models are exported")
    if cfg.TEST.MODE != "whole":
        raise ExportError(
            f"TEST.MODE={cfg.TEST.MODE!r}: the export runs whole-image inference at the export size; "
            f"add TEST.MODE whole (sliding-window inference is not exported)"
        )
    if cfg.TEST.AUG.ENABLED:
        raise ExportError("TEST.AUG.ENABLED: test-time augmentation is not exported; add TEST.AUG.ENABLED False")
    test = cfg.MODEL.MASK_FORMER.TEST
    if test.PANOPTIC_ON or test.INSTANCE_ON:
        raise ExportError(
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON/INSTANCE_ON: only semantic output is exported; "
            "turn them off (the semantic scores come from the same queries)"
        )
    if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES > 256:
        raise ExportError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}: the uint8 "
                          f"label output holds at most 256 classes")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ExportError(
            f"--size {h} {w}: height and width must be positive multiples of 32 (the model's padding "
            f"unit), e.g. {max(32, -(-h // 32) * 32)} {max(32, -(-w // 32) * 32)}"
        )
    if dynamic:
        raise ExportError(DYNAMIC_REFUSAL)
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the deformable attention needs ONNX GridSample, opset >= {MIN_OPSET}")


def build_model_for_export(cfg, random_weights: bool = False) -> torch.nn.Module:
    """The eval-mode HAPNet of ``cfg`` with ``MODEL.WEIGHTS`` loaded.

    Args:
        cfg: the model's config (``MODEL.DEVICE`` should be cpu for export).
        random_weights: allow an empty ``MODEL.WEIGHTS`` (random weights, pipeline tests only).
    Raises:
        ExportError: empty ``MODEL.WEIGHTS`` without ``random_weights``, missing weights file,
            a checkpoint that does not fit (the checkpointer's one-line message).
    """
    from detectron2.modeling import build_model

    from hapnet_d2.checkpoint import CheckpointError, HAPNetCheckpointer

    weights = cfg.MODEL.WEIGHTS
    if not weights and not random_weights:
        raise ExportError("MODEL.WEIGHTS is empty: give the trained checkpoint (MODEL.WEIGHTS model_final.pth), "
                          "or --random-weights to export random weights for testing")
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ExportError(f"{weights}: MODEL.WEIGHTS file does not exist")
    model = build_model(cfg).eval()
    if weights:
        try:
            HAPNetCheckpointer.for_inference(model, cfg).load(weights)
        except CheckpointError as e:
            raise ExportError(" ".join(str(e).split())) from None
    return model


def exported_file_name(size: Tuple[int, int], fmt: str) -> str:
    """``model_<H>x<W>.onnx`` or ``model_<H>x<W>.pt``."""
    return f"model_{int(size[0])}x{int(size[1])}." + ("onnx" if fmt == "onnx" else "pt")


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's warnings about Python values (sizes) baked into the graph: that is
    intended here (one graph per size)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(deprecated|TorchScript-based ONNX export).*")
        yield


def export_onnx(model: torch.nn.Module, size: Tuple[int, int], path: str, metadata: Dict[str, str],
                thermal_channels: int = 1, opset: int = DEFAULT_OPSET) -> str:
    """Trace the semantic model at ``size`` into an ONNX file with ``metadata`` in its props.

    Inputs ``rgb`` uint8 [1, 3, H, W] and ``thermal`` float32 [1, C, H, W]; outputs ``scores``
    float32 [1, K, H, W] and ``labels`` uint8 [1, H, W]. Uses PyTorch's TorchScript-based ONNX
    exporter (``dynamo=False``): the graph is traced with real tensors, so the model's Python
    size arithmetic becomes constants.

    Returns:
        ``path``.
    """
    wrapper = SemanticExportModel(model).eval()
    inputs = example_inputs(size, thermal_channels)
    with _quiet_tracing(), export_formulation(model, size):
        torch.onnx.export(
            wrapper,
            inputs,
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["rgb", "thermal"],
            output_names=["scores", "labels"],
            do_constant_folding=True,
        )
    write_onnx_metadata(path, metadata)
    return path


def export_torchscript(model: torch.nn.Module, size: Tuple[int, int], path: str, metadata: Dict[str, str],
                       thermal_channels: int = 1) -> str:
    """Trace the semantic model at ``size`` into a TorchScript archive (``torch.jit.load``-able)
    with ``metadata`` as the JSON extra file ``hapnet_metadata.json``.

    Returns:
        ``path``.
    """
    wrapper = SemanticExportModel(model).eval()
    inputs = example_inputs(size, thermal_channels)
    with _quiet_tracing(), export_formulation(model, size):
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
    torch.jit.save(traced, path, _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    return path
