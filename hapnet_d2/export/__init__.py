"""Deployment export of HAPNet: whole-image semantic inference as one ONNX or TorchScript file.

- :mod:`.semantic_model`: the exported module (raw pixels in; scores and labels out) and the
  export-friendly formulations it is traced under;
- :mod:`.exporter`: the checks (one-line :class:`ExportError`) and the ONNX / TorchScript export;
- :mod:`.metadata`: class names, colours, sizes, thermal scaling and config hash in the file;
- :mod:`.backends`: TorchScript / ONNX Runtime (optionally int8) callables for the benchmark.

The standalone runner ``tools/deploy/onnx_infer.py`` needs none of this (nor torch).
"""
from .exporter import (
    DEFAULT_OPSET,
    FORMATS,
    ExportError,
    build_model_for_export,
    check_export_request,
    export_onnx,
    export_torchscript,
    exported_file_name,
)
from .metadata import class_names_and_colors, export_metadata, read_onnx_metadata
from .semantic_model import SemanticExportModel, example_inputs, export_formulation

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "ExportError",
    "SemanticExportModel",
    "build_model_for_export",
    "check_export_request",
    "class_names_and_colors",
    "example_inputs",
    "export_formulation",
    "export_metadata",
    "export_onnx",
    "export_torchscript",
    "exported_file_name",
    "read_onnx_metadata",
]
