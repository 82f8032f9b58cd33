#!/usr/bin/env python
"""HAPNet demo: segment RGB-thermal pairs, 4-channel PNGs, dataset folders or paired videos.

For each input pair it writes ``<name>_panel.png`` (RGB | thermal | prediction over RGB, with
a class legend) and ``<name>_label.png`` (uint8 class ids at the input size); for a pair of
videos, ``<name>_panel.mp4``. Examples::

    python demo/demo.py --config-file configs/synth/hapnet_tiny.yaml --rgbt 01477D.png \\
        --output out/ --opts MODEL.WEIGHTS output/synth/hapnet_tiny/model_final.pth
    python demo/demo.py --config-file CFG --rgb a.png b.png --thermal a_t.png b_t.png --output out/
    python demo/demo.py --config-file CFG --input-dir datasets/MFNet --layout mfnet --output out/
    python demo/demo.py --config-file CFG --video-rgb v.mp4 --video-thermal v_ir.mp4 --output out/

A bad input file (unreadable, corrupt, wrong channel count, RGB and thermal sizes differ) or a
checkpoint that does not fit the model stops the demo with a one-line message naming the file
and exit code 1; a config key typo in --opts or an empty MODEL.WEIGHTS without --random-weights
with one line and exit code 2.

16-bit thermal images (raw camera counts) are stretched per image from their 1st to 99th
percentile by default (a one-line notice says so), unless the config sets
INPUT.THERMAL_SCALING; --thermal-scaling full|fixed|percentile, --thermal-range MIN MAX and
--thermal-percentiles LOW HIGH choose. 8-bit thermal is always divided by 255.
"""

import argparse
import json
import os
import sys
import time
from collections import Counter

import cv2
import tqdm
import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger
from PIL import Image
from predictor import PairedVideoReader, RGBTVisualizationDemo

from hapnet_d2.checkpoint import CheckpointError
from hapnet_d2.config import get_hapnet_cfg_or_exit
from hapnet_d2.data import RGBTDataError, read_rgbt
from hapnet_d2.data.io import THERMAL_SCALING_MODES, ThermalScaling, ThermalStats
from hapnet_d2.data.datasets import DATASET_FORMATS
from hapnet_d2.data.panoptic_format import segments_info_of, write_panoptic_png

# errors caused by the user's files: reported in one line, exit code 1
INPUT_ERRORS = (RGBTDataError, CheckpointError, FileNotFoundError)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="HAPNet RGB-thermal segmentation demo")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--rgb", nargs="+", metavar="IMG", help="RGB images (pair with --thermal)")
    modes.add_argument(
        "--rgbt", nargs="+", metavar="PNG", help="4-channel PNGs (R,G,B,thermal; MFNet layout)"
    )
    modes.add_argument("--input-dir", metavar="DIR", help="a dataset folder (see --layout)")
    modes.add_argument("--video-rgb", metavar="VIDEO", help="RGB video (pair with --video-thermal)")
    parser.add_argument(
        "--thermal", nargs="+", metavar="IMG", help="thermal images, paired with --rgb by position"
    )
    parser.add_argument(
        "--thermal-channels",
        type=int,
        choices=(1, 3),
        default=1,
        help="1: thermal (a 3-channel file is averaged to one channel); 3: a 3-channel X "
        "modality such as HHA (--rgb/--thermal and videos)",
    )
    parser.add_argument(
        "--layout", choices=sorted(DATASET_FORMATS), help="dataset layout of --input-dir"
    )
    parser.add_argument("--split", default="test", help="split list of --input-dir (default test)")
    parser.add_argument("--video-thermal", metavar="VIDEO", help="thermal video (with --video-rgb)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--dataset-name",
        help="registered dataset whose class names and colours label the panels "
        "(default: the config's DATASETS.TEST[0])",
    )
    parser.add_argument(
        "--allow-unsafe-checkpoint",
        action="store_true",
        help="load checkpoints that need pickle code execution (only for trusted files); "
        "same as MODEL.ALLOW_UNSAFE_CHECKPOINTS True",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="predict with randomly initialised weights when MODEL.WEIGHTS is empty (for testing "
        "the pipeline only; without this flag an empty MODEL.WEIGHTS is refused)",
    )
    parser.add_argument(
        "--thermal-scaling",
        choices=THERMAL_SCALING_MODES,
        help="how 16-bit thermal becomes 0-255: full (divide by 65535), fixed (--thermal-range), "
        "percentile (per image, --thermal-percentiles). Default: the config's "
        "INPUT.THERMAL_SCALING if it is not full, else percentile",
    )
    parser.add_argument(
        "--thermal-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="raw 16-bit counts mapped to 0 and 255 (implies --thermal-scaling fixed)",
    )
    parser.add_argument(
        "--thermal-percentiles",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="per-image percentiles mapped to 0 and 255, default 1 99 (implies --thermal-scaling "
        "percentile)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject flag combinations that cannot work (argparse error, exit code 2)."""
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file} does not exist")
    if args.rgb and not args.thermal:
        parser.error("--rgb needs --thermal (one thermal image per RGB image)")
    if args.rgb and len(args.rgb) != len(args.thermal):
        parser.error(
            f"{len(args.rgb)} --rgb images but {len(args.thermal)} --thermal images; "
            "they are paired by position"
        )
    if args.thermal and not args.rgb:
        parser.error("--thermal is only used with --rgb")
    if args.input_dir and not args.layout:
        parser.error("--input-dir needs --layout")
    if bool(args.video_rgb) != bool(args.video_thermal):
        parser.error("--video-rgb and --video-thermal go together")
    implied = ("fixed" if args.thermal_range else None) or ("percentile" if args.thermal_percentiles else None)
    if args.thermal_range and args.thermal_percentiles:
        parser.error("--thermal-range (fixed) and --thermal-percentiles (percentile) exclude each other")
    if implied and args.thermal_scaling not in (None, implied):
        parser.error(f"--thermal-{'range' if implied == 'fixed' else 'percentiles'} needs "
                     f"--thermal-scaling {implied}, got {args.thermal_scaling}")


def setup_cfg(args: argparse.Namespace):
    """Frozen config: defaults -> ``--config-file`` -> ``--opts`` (as in train_net.py); a config
    error is one line ``error: ...`` and exit code 2."""
    cfg = get_hapnet_cfg_or_exit(args.config_file, args.opts, args.allow_unsafe_checkpoint)
    cfg.freeze()
    return cfg


def check_weights(args: argparse.Namespace, cfg) -> None:
    """Refuse an empty ``MODEL.WEIGHTS`` unless ``--random-weights`` (one line, exit code 2)."""
    if not cfg.MODEL.WEIGHTS and not args.random_weights:
        print(
            f"error: MODEL.WEIGHTS is empty in {args.config_file} and --opts: give a checkpoint "
            "(--opts MODEL.WEIGHTS model_final.pth), or --random-weights to try the demo with "
            "random weights",
            file=sys.stderr,
        )
        sys.exit(2)


def thermal_scaling_of(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg):
    """The scaling of 16-bit thermal: the command line's, else the config's when it is not
    ``"full"``, else a per-image percentile stretch.

    Returns:
        tuple: ``(ThermalScaling, announce)``; ``announce`` is True for the demo's own default,
        which is announced when the first 16-bit thermal image is met.
    """
    mode = args.thermal_scaling or ("fixed" if args.thermal_range else None) or (
        "percentile" if args.thermal_percentiles else None
    )
    announce = mode is None and cfg.INPUT.THERMAL_SCALING == "full"
    if mode is None:
        mode = "percentile" if announce else cfg.INPUT.THERMAL_SCALING
    try:
        scaling = ThermalScaling(
            mode,
            args.thermal_range or cfg.INPUT.THERMAL_RANGE,
            args.thermal_percentiles or cfg.INPUT.THERMAL_PERCENTILES,
        )
    except ValueError as e:
        parser.error(str(e))
    return scaling, announce


def dataset_metadata(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg):
    """Metadata (class names and colours) of ``--dataset-name`` or ``DATASETS.TEST[0]``."""
    name = args.dataset_name or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if name is None:
        parser.error("the config has no DATASETS.TEST; pass --dataset-name")
    if name not in DatasetCatalog.list():
        parser.error(f"dataset {name!r} is not registered (--dataset-name)")
    metadata = MetadataCatalog.get(name)
    if not metadata.get("stuff_classes") or not metadata.get("stuff_colors"):
        parser.error(f"dataset {name!r} has no stuff_classes/stuff_colors metadata")
    return metadata


def collect_samples(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The image inputs as ``(output name, dataset dict for read_rgbt)`` pairs."""
    if args.rgb:
        samples = [
            (
                os.path.splitext(os.path.basename(rgb))[0],
                {
                    "file_name": rgb,
                    "thermal_file_name": thermal,
                    "rgbt_layout": "separate",
                    "thermal_channels": args.thermal_channels,
                },
            )
            for rgb, thermal in zip(args.rgb, args.thermal)
        ]
    elif args.rgbt:
        samples = [
            (
                os.path.splitext(os.path.basename(path))[0],
                {"file_name": path, "thermal_file_name": path, "rgbt_layout": "mfnet4"},
            )
            for path in args.rgbt
        ]
    else:
        loader = DATASET_FORMATS[args.layout][0]
        samples = [(d["image_id"], d) for d in loader(args.input_dir, args.split)]
        if not samples:
            raise RGBTDataError(args.input_dir, f"split {args.split!r} lists no samples")
    counts = Counter(name for name, _ in samples)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        parser.error(f"several inputs would write the same outputs: {', '.join(duplicates)}")
    return samples


def write_panoptic(output_dir: str, name: str, panoptic, metadata) -> None:
    """Write ``<name>_panoptic.png`` (COCO panoptic ids, ``R + 256 G + 256^2 B``) and
    ``<name>_panoptic.json`` (a COCO panoptic prediction: ``annotations`` with this image's
    ``segments_info`` in the dataset's category ids, and ``categories``)."""
    ids, segments = panoptic
    isthing = {s["id"]: bool(s["isthing"]) for s in segments}
    contiguous = {s["id"]: int(s["category_id"]) for s in segments}
    to_dataset = {v: k for k, v in metadata.get("stuff_dataset_id_to_contiguous_id", {}).items()}
    png = f"{name}_panoptic.png"
    write_panoptic_png(os.path.join(output_dir, png), ids)
    info = [
        dict(s, category_id=to_dataset.get(contiguous[s["id"]], contiguous[s["id"]] + 1), isthing=isthing[s["id"]])
        for s in segments_info_of(ids, lambda i: 0)
    ]
    names = list(metadata.stuff_classes)
    things = set(metadata.get("thing_classes", []))
    categories = [
        {"id": to_dataset.get(i, i + 1), "name": n, "isthing": int(n in things), "color": list(metadata.stuff_colors[i])}
        for i, n in enumerate(names)
    ]
    with open(os.path.join(output_dir, f"{name}_panoptic.json"), "w") as f:
        json.dump({"annotations": [{"image_id": name, "file_name": png, "segments_info": info}],
                   "categories": categories}, f, indent=1)


def run_on_images(demo: RGBTVisualizationDemo, samples, output_dir: str, logger, thermal_scaling=None,
                  announce_scaling: bool = False) -> None:
    """Write ``<name>_panel.png`` and ``<name>_label.png`` for every sample, and the panoptic
    PNG + JSON when the model gives panoptic output. ``thermal_scaling`` scales 16-bit thermal;
    with ``announce_scaling`` a one-line notice names it at the first 16-bit thermal image."""
    stats = ThermalStats()
    for name, dataset_dict in tqdm.tqdm(samples, desc="pairs", disable=len(samples) < 2):
        rgb, thermal = read_rgbt(dataset_dict, thermal_scaling, stats)
        if announce_scaling and stats.bit_depths[16]:
            low, high = thermal_scaling.percentiles
            logger.info(f"16-bit thermal ({name}): each image is stretched, percentiles {low:g}-{high:g} -> 0-255 "
                        "(--thermal-scaling full|fixed|percentile to choose)")
            announce_scaling = False
        start = time.perf_counter()
        result = demo.predict_and_draw(rgb, thermal)
        logger.info(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} in {time.perf_counter() - start:.2f}s")
        Image.fromarray(result["panel"]).save(os.path.join(output_dir, f"{name}_panel.png"))
        Image.fromarray(result["label"]).save(os.path.join(output_dir, f"{name}_label.png"))
        if result["panoptic"] is not None:
            write_panoptic(output_dir, name, result["panoptic"], demo.metadata)


def run_on_video(demo: RGBTVisualizationDemo, args: argparse.Namespace, logger) -> None:
    """Write ``<name>_panel.mp4`` with one panel per frame pair of the two videos."""
    name = os.path.splitext(os.path.basename(args.video_rgb))[0]
    output = os.path.join(args.output, f"{name}_panel.mp4")
    writer = None
    with PairedVideoReader(args.video_rgb, args.video_thermal, args.thermal_channels) as video:
        try:
            for panel in tqdm.tqdm(demo.run_on_video(video), total=video.num_frames, desc="frames"):
                if writer is None:
                    size = (panel.shape[1], panel.shape[0])
                    writer = cv2.VideoWriter(
                        output, cv2.VideoWriter_fourcc(*"mp4v"), video.fps, size
                    )
                    if not writer.isOpened():
                        raise RGBTDataError(output, "OpenCV cannot write an mp4v video here")
                writer.write(cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        finally:
            if writer is not None:
                writer.release()
    if writer is None:
        raise RGBTDataError(args.video_rgb, "the video has no frames")
    logger.info(f"wrote {output}")


def main(argv=None) -> int:
    """Run the demo; returns the exit code (0 done, 1 bad input file)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    for name in ("fvcore", "predictor", "hapnet_d2"):
        setup_logger(name=name)
    logger = setup_logger(name="hapnet_demo")
    cfg = setup_cfg(args)
    check_weights(args, cfg)
    scaling, announce = thermal_scaling_of(parser, args, cfg)
    metadata = dataset_metadata(parser, args, cfg)
    try:
        samples = None if args.video_rgb else collect_samples(parser, args)
        try:
            demo = RGBTVisualizationDemo(cfg, metadata)
        except ValueError as e:  # the config or the dataset metadata do not fit the model
            parser.error(str(e))
        os.makedirs(args.output, exist_ok=True)
        if samples is None:
            run_on_video(demo, args, logger)
        else:
            run_on_images(demo, samples, args.output, logger, scaling, announce)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
