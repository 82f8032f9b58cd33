#!/usr/bin/env python
"""Export a trained HAPNet to ONNX or TorchScript for deployment (Detectron2's habit).

    python tools/deploy/export_model.py --config-file configs/mfnet/hapnet_beitv2_b.yaml \\
        --format onnx --size 480 640 --output export/ \\
        MODEL.WEIGHTS output/mfnet/hapnet_beitv2_b/model_best.pth TEST.MODE whole

What is exported: whole-image SEMANTIC inference (panoptic/instance output is not exported),
with the input conversion inside the graph. Inputs ``rgb`` uint8 [1,3,H,W] (RGB order) and
``thermal`` float32 [1,1,H,W] on the 0-255 scale (after the dataset's thermal scaling; [1,3,H,W]
with --thermal-channels 3); outputs ``scores`` float32 [1,K,H,W] and ``labels`` uint8 [1,H,W].
Class names, colours, sizes, thermal scaling and a config hash are stored in the file (ONNX
metadata_props; TorchScript extra file hapnet_metadata.json), read by tools/deploy/onnx_infer.py.

One file per size: the input size is baked into the traced graph (BEiT relative-position
tables, deformable-attention shapes and reference points), so --dynamic is refused; repeat
--size H W to export several sizes (model_<H>x<W>.onnx / .pt). The config must ask for
whole-image inference without test-time augmentation (TEST.MODE whole, TEST.AUG.ENABLED False).

After each export the file is checked against the PyTorch model on a random input (relative
L2 of the scores, argmax agreement), unless --no-verify. Errors are one line, exit code 2.
"""
import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

import hapnet_d2  # noqa: F401  (registration)
from hapnet_d2.config import ConfigError, get_hapnet_cfg
from hapnet_d2.export import (
    DEFAULT_OPSET,
    FORMATS,
    ExportError,
    build_model_for_export,
    check_export_request,
    class_names_and_colors,
    example_inputs,
    export_metadata,
    export_onnx,
    export_torchscript,
    exported_file_name,
)
from hapnet_d2.export.exporter import DYNAMIC_REFUSAL, MIN_OPSET

logger = logging.getLogger("hapnet_d2.export")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--size", nargs=2, type=int, action="append", required=True, metavar=("H", "W"),
                        help="input size of the exported graph, multiples of 32; repeat for one file per size")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (>= {MIN_OPSET}, GridSample; default {DEFAULT_OPSET})")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic height/width: NOT possible, " + DYNAMIC_REFUSAL.split(": ", 1)[1])
    parser.add_argument("--thermal-channels", type=int, choices=(1, 3), default=1,
                        help="channels of the thermal input: 1 (thermal) or 3 (X modality such as HHA)")
    parser.add_argument("--dataset-name", help="dataset whose class names and colours are stored "
                        "(default: DATASETS.TEST[0])")
    parser.add_argument("--random-weights", action="store_true",
                        help="export random weights when MODEL.WEIGHTS is empty (pipeline tests only)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the comparison of the exported file with PyTorch")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def setup_cfg(args):
    """Config from the file and the overrides, on the CPU (tracing device)."""
    cfg = get_hapnet_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def verify(model, path: str, fmt: str, size, thermal_channels: int) -> str:
    """Compare the exported file with the PyTorch model on a random input.

    Returns:
        one line: relative L2 of the scores and argmax agreement (or why it was skipped).
    """
    rgb, thermal = example_inputs(size, thermal_channels, seed=1)
    with torch.no_grad():
        inputs = [{"image": rgb[0], "thermal": thermal[0]}]
        reference = model(inputs)[0]["sem_seg"][None].numpy()
    if fmt == "onnx":
        try:
            from hapnet_d2.export.backends import onnxruntime_session
        except ImportError:
            return "not verified: onnxruntime is not installed"
        scores = onnxruntime_session(path).run(["scores"], {"rgb": rgb.numpy(), "thermal": thermal.numpy()})[0]
    else:
        with torch.no_grad():
            scores = torch.jit.load(path)(rgb, thermal)[0].numpy()
    rel = float(np.linalg.norm(scores - reference) / max(np.linalg.norm(reference), 1e-12))
    agree = float((scores.argmax(1) == reference.argmax(1)).mean())
    return f"verified against PyTorch on a random input: relative L2 {rel:.2e}, argmax agreement {100 * agree:.3f}%"


def export(args) -> list:
    """Export every requested size; returns the written paths."""
    if not os.path.isfile(args.config_file):
        raise ExportError(f"{args.config_file}: config file does not exist")
    cfg = setup_cfg(args)
    for size in args.size:
        check_export_request(cfg, size, args.format, args.opset, args.dynamic)
    names, colors = class_names_and_colors(cfg, args.dataset_name)
    model = build_model_for_export(cfg, args.random_weights)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for size in args.size:
        size = tuple(size)
        path = os.path.join(args.output, exported_file_name(size, args.format))
        meta = export_metadata(cfg, size, args.thermal_channels, names, colors)
        start = time.perf_counter()
        if args.format == "onnx":
            export_onnx(model, size, path, meta, args.thermal_channels, args.opset)
        else:
            export_torchscript(model, size, path, meta, args.thermal_channels)
        logger.info(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")
        if not args.no_verify:
            logger.info(f"{os.path.basename(path)}: {verify(model, path, args.format, size, args.thermal_channels)}")
        written.append(path)
    return written


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[export] %(message)s")
    try:
        export(args)
    except (ExportError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
