"""Inference backends of an exported model, side by side with PyTorch (``tools/benchmark.py``).

A backend is a callable ``run(rgb, thermal) -> scores`` on the exported signature (numpy
``rgb`` uint8 ``[1, 3, H, W]``, ``thermal`` float32 ``[1, C, H, W]``; ``scores`` float32
``[1, K, H, W]``). :func:`build_backend` exports the model into a work folder and loads it
with TorchScript or ONNX Runtime; ONNX Runtime can also run a dynamically int8-quantized copy
(``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized per call).
"""
import os
from typing import Callable, Tuple

import numpy as np
import torch

from .exporter import export_onnx, export_torchscript
from .metadata import export_metadata

__all__ = ["BACKENDS", "QUANTIZATIONS", "build_backend", "benchmark_backend", "quantize_int8", "onnxruntime_session",
           "argmax_agreement"]

BACKENDS = ("torch", "torchscript", "onnxruntime")
QUANTIZATIONS = ("none", "int8")

Backend = Callable[[np.ndarray, np.ndarray], np.ndarray]


def quantize_int8(src: str, dst: str) -> str:
    """Dynamic int8 quantization of an ONNX model (weights int8, activations per call).

    Returns:
        ``dst``, which keeps ``src``'s metadata.
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the quantizer logs one warning per tensor it skips (shape arithmetic, uint8 inputs)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    props = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
    model = onnx.load(dst)
    if not model.metadata_props and props:
        for key, value in props.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.save(model, dst)
    return dst


def onnxruntime_session(path: str, threads: int = 0):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (0: its default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def build_backend(
    backend: str,
    model: torch.nn.Module,
    cfg,
    size: Tuple[int, int],
    workdir: str,
    thermal_channels: int = 1,
    threads: int = 0,
    quantize: str = "none",
) -> Backend:
    """Export ``model`` at ``size`` into ``workdir`` and return the backend's callable.

    Args:
        backend: "torchscript" or "onnxruntime".
        model: eval-mode HAPNet (``cfg``'s).
        size: (H, W), multiples of 32.
        workdir: folder for the exported files.
        thermal_channels: 1 or 3.
        threads: ONNX Runtime intra-op threads (0: its default); TorchScript uses torch's.
        quantize: "none" or "int8" (ONNX Runtime only).
    Returns:
        ``run(rgb, thermal) -> scores`` on numpy arrays.
    Raises:
        ValueError: unknown backend, int8 asked of another backend than onnxruntime.
    """
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize != "none" and backend != "onnxruntime":
        raise ValueError(f"--quantize {quantize} is implemented for the onnxruntime backend only, not {backend}")
    names = [f"class_{i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    meta = export_metadata(cfg, size, thermal_channels, names, [[0, 0, 0]] * len(names))
    os.makedirs(workdir, exist_ok=True)
    if backend == "torchscript":
        path = export_torchscript(model, size, os.path.join(workdir, "model.pt"), meta, thermal_channels)
        traced = torch.jit.load(path)

        def run_torchscript(rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return traced(torch.from_numpy(rgb), torch.from_numpy(thermal))[0].numpy()

        return run_torchscript
    path = export_onnx(model, size, os.path.join(workdir, "model.onnx"), meta, thermal_channels)
    if quantize == "int8":
        path = quantize_int8(path, os.path.join(workdir, "model_int8.onnx"))
    session = onnxruntime_session(path, threads)

    def run_onnxruntime(rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        return session.run(["scores"], {"rgb": rgb, "thermal": thermal})[0]

    return run_onnxruntime


def argmax_agreement(scores: np.ndarray, reference: np.ndarray) -> float:
    """Share of pixels whose argmax class (axis 1 of ``[B, K, H, W]``) is the reference's."""
    return float((np.asarray(scores).argmax(1) == np.asarray(reference).argmax(1)).mean())


def benchmark_backend(backend: str, model: torch.nn.Module, cfg, inputs, workdir: str, threads: int = 0,
                      quantize: str = "none"):
    """An exported backend ready to be timed by ``tools/benchmark.py``, and its agreement with
    the PyTorch fp32 model on the benchmark input.

    Args:
        backend: "torchscript" or "onnxruntime".
        model: eval-mode HAPNet.
        cfg: its config.
        inputs: one Detectron2-style input dict (``image`` [3, H, W] uint8, ``thermal`` [1, H, W]).
        workdir, threads, quantize: see :func:`build_backend`.
    Returns:
        ``(call, report)``: ``call()`` runs the backend once on the input; ``report`` has
        ``argmax_agreement_vs_fp32`` and ``scores_rel_l2_vs_fp32`` (against the PyTorch fp32
        model, the keys of the PyTorch int8/bf16 benchmark).
    """
    (x,) = inputs
    rgb = x["image"][None].numpy()
    thermal = x["thermal"][None].to(torch.float32).numpy()
    size = tuple(rgb.shape[-2:])
    run = build_backend(backend, model, cfg, size, workdir, thermal.shape[1], threads, quantize)
    with torch.no_grad():
        reference = model(inputs)[0]["sem_seg"][None].numpy()
    scores = run(rgb, thermal)
    rel = float(np.linalg.norm(scores - reference) / max(float(np.linalg.norm(reference)), 1e-12))
    report = {"argmax_agreement_vs_fp32": round(argmax_agreement(scores, reference), 5),
              "scores_rel_l2_vs_fp32": float(f"{rel:.3g}")}
    return (lambda: run(rgb, thermal)), report
