#!/usr/bin/env python
"""Parameters and FLOPs of a HAPNet config, per component (Detectron2's analyze_model habit).

    python tools/analyze_model.py --config-file configs/mfnet/hapnet_beitv2_b.yaml \
        --tasks parameter flop --size 480 480

FLOPs are fvcore's count (one multiply-add = one flop) of one inference pass on a random RGB-T
pair of --size, whole-image mode (no sliding window), so the training-only aux head is excluded.
"""
import argparse
import logging

import torch
import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from hapnet_d2.config import get_hapnet_cfg_or_exit
from hapnet_d2.utils.analysis import flop_counter, flops_by_component, parameters_by_component


def setup(args):
    cfg = get_hapnet_cfg_or_exit(args.config_file, args.opts)  # config errors: one line, exit 2
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def parameter_table(model) -> str:
    counts = parameters_by_component(model)
    total = counts["total"]
    rows = [[name, f"{n / 1e6:.2f}", f"{100 * n / total:.1f}%"] for name, n in counts.items() if n or name == "total"]
    inference = total - counts["aux head (training only)"]
    rows.append(["total without aux head (paper's figure)", f"{inference / 1e6:.2f}", ""])
    return tabulate(rows, headers=["component", "params (M)", "share"], tablefmt="github")


def flop_table(model, size) -> str:
    torch.manual_seed(0)
    h, w = size
    inputs = [{
        "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8),
        "thermal": torch.randint(0, 256, (1, h, w), dtype=torch.uint8).float(),
    }]
    model.test_mode = "whole"
    with torch.no_grad():
        counts = flops_by_component(flop_counter(model, inputs))
    rows = [[name, f"{n / 1e9:.2f}", f"{2 * n / 1e9:.2f}"] for name, n in counts.items() if n or name == "total"]
    return tabulate(rows, headers=["component", "GMACs (fvcore GFLOPs)", "real GFLOPs (2x)"], tablefmt="github")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter", "flop"])
    parser.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="input size for FLOPs (default: INPUT.CROP.SIZE)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    setup_logger(name="fvcore", abbrev_name="fvcore")
    logger = setup_logger(name="hapnet_d2", abbrev_name="hapnet")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    cfg = setup(args)
    model = build_model(cfg).eval()
    if "parameter" in args.tasks:
        logger.info("Parameters per component:\n" + parameter_table(model))
    if "flop" in args.tasks:
        size = args.size or tuple(cfg.INPUT.CROP.SIZE)
        logger.info(f"FLOPs per component at {size[0]}x{size[1]} (inference, whole image):\n"
                    + flop_table(model, size))


if __name__ == "__main__":
    main()
