#!/usr/bin/env python
"""Run an exported HAPNet (tools/deploy/export_model.py) with ONNX Runtime: no torch, no Detectron2.

    python tools/deploy/onnx_infer.py --model export/model_480x640.onnx --rgbt 01477D.png --output out/
    python tools/deploy/onnx_infer.py --model M.onnx --rgb a.png b.png --thermal a_t.png b_t.png --output out/
    python tools/deploy/onnx_infer.py --model M.onnx --input-dir frames/ --output out/
    python tools/deploy/onnx_infer.py --model M.onnx --video-rgb v.mp4 --video-thermal v_ir.mp4 --output out/

Needs onnxruntime, numpy and Pillow (videos: opencv-python); see requirements.txt next to it.
Inputs are read as the demo reads them: RGB + thermal files paired by position, 4-channel PNGs
(R, G, B, thermal; MFNet layout), a folder (``rgb/`` + ``thermal/`` with the same file stems,
else every PNG in ``images/`` or in the folder itself as 4-channel), or an RGB and a thermal
video in lockstep. 8-bit thermal is used as is (0-255); 16-bit thermal is scaled like the demo
(--thermal-scaling, default: the model's stored scaling when not "full", else a per-image
1-99 percentile stretch).

The model has one fixed input size (stored in the file). An input of another size is resized
to it (RGB: Pillow bilinear; thermal: bilinear, half-pixel centres, as the demo's resize) and the
scores are resized back (bilinear), so the outputs always have the input's size; with the
model exported at the demo's INPUT.BASE_SIZE scale of the input, the labels are the demo's.

For each input ``<stem>``: ``<stem>.png`` (uint8 class ids) and ``<stem>_overlay.png`` (class
colours over RGB); for videos ``<stem>_<frame>.png`` per frame and ``<stem>_overlay.mp4``.
A bad input is one line ``error: ...`` naming the file, exit code 1; bad flags exit code 2.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SCALING_MODES = ("full", "fixed", "percentile")


class InputError(ValueError):
    """A model or input file is missing or malformed; the message starts with the file."""


# ---------------------------------------------------------------------------- the model
class ExportedModel:
    """An ONNX Runtime session of an exported HAPNet and its stored metadata."""

    def __init__(self, path: str, threads: int = 0):
        """
        Args:
            path: the ``.onnx`` file.
            threads: ONNX Runtime intra-op threads (0: its default).
        Raises:
            InputError: missing or unreadable file, or no HAPNet metadata in it.
        """
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise InputError(f"{path}: model file does not exist")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{path}: not a loadable ONNX model ({' '.join(str(e).split())[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "hapnet.input_size" not in meta:
            raise InputError(f"{path}: no HAPNet metadata (export it with tools/deploy/export_model.py)")
        self.path = path
        self.size = tuple(json.loads(meta["hapnet.input_size"]))
        self.class_names = json.loads(meta["hapnet.class_names"])
        self.colors = np.array(json.loads(meta["hapnet.class_colors"]), dtype=np.uint8).reshape(-1, 3)
        self.thermal_channels = int(meta.get("hapnet.thermal_channels", "1"))
        self.thermal_scaling = json.loads(meta.get("hapnet.thermal_scaling", '{"mode": "full"}'))
        self.base_size = tuple(json.loads(meta.get("hapnet.base_size", "[0, 0]")))
        self.config_sha256 = meta.get("hapnet.config_sha256", "")

    def predict(self, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        """Label map of one pair at its own size.

        Args:
            rgb: ``HxWx3`` uint8 RGB.
            thermal: ``HxW`` (or ``HxWx3`` for a 3-channel model) float32 on the 0-255 scale.
        Returns:
            ``HxW`` uint8 class ids.
        """
        height, width = rgb.shape[:2]
        thermal = thermal.reshape(height, width, -1)
        if (height, width) != self.size:
            rgb = np.asarray(Image.fromarray(rgb).resize(self.size[::-1], Image.BILINEAR))
            thermal = resize_bilinear(thermal.transpose(2, 0, 1), self.size).transpose(1, 2, 0)
        feed = {
            "rgb": np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]),
            "thermal": np.ascontiguousarray(thermal.transpose(2, 0, 1)[None], dtype=np.float32),
        }
        scores, labels = self.session.run(["scores", "labels"], feed)
        if (height, width) == self.size:
            return labels[0]
        return resize_bilinear(scores[0], (height, width)).argmax(axis=0).astype(np.uint8)


def _source_index(out_size: int, in_size: int):
    """Bilinear source rows (or columns) with half-pixel centres, as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)``: indices i0, i1 and weight of i1."""
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(array: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of ``[C, H, W]`` float32 to ``[C, h, w]`` (half-pixel centres, no
    antialiasing: PyTorch's ``F.interpolate(..., mode="bilinear", align_corners=False)``)."""
    array = np.asarray(array, dtype=np.float32)
    h0, h1, wh = _source_index(size[0], array.shape[1])
    w0, w1, ww = _source_index(size[1], array.shape[2])
    rows = array[:, h0] * (np.float32(1) - wh)[None, :, None] + array[:, h1] * wh[None, :, None]
    return rows[:, :, w0] * (np.float32(1) - ww) + rows[:, :, w1] * ww


# ---------------------------------------------------------------------------- inputs
def read_image_array(path: str) -> np.ndarray:
    """Decode an image without conversion: ``HxW`` (uint8 or uint16) or ``HxWxC`` uint8."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: file does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                return np.array(img, dtype=np.uint16)
            if mode == "I":
                arr = np.array(img)
                if arr.min() < 0 or arr.max() > 65535:
                    raise InputError(f"{path}: 32-bit image with values outside 0..65535")
                return arr.astype(np.uint16)
            if mode not in ("L", "P", "RGB", "RGBA"):
                raise InputError(f"{path}: unsupported image mode {mode}")
            return np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise InputError(f"{path}: unreadable or truncated image ({e})") from None


class ThermalScaling:
    """Raw thermal values -> float32 on the 0-255 scale, as the demo (``hapnet_d2.data.io``).

    8-bit images: ``raw`` as float (whatever the mode). 16-bit: ``"full"`` ``raw * 255 / 65535``;
    ``"fixed"`` ``(raw - low) * 255 / (high - low)`` clipped; ``"percentile"`` the same with the
    image's own percentiles (a uniform image becomes 0).
    """

    def __init__(self, mode: str, value_range=(0.0, 65535.0), percentiles=(1.0, 99.0)):
        if mode not in SCALING_MODES:
            raise ValueError(f"thermal scaling must be one of {SCALING_MODES}, got {mode!r}")
        self.mode = mode
        self.value_range = tuple(float(v) for v in value_range)
        self.percentiles = tuple(float(v) for v in percentiles)
        if not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"thermal range needs min < max, got {self.value_range}")
        if not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ValueError(f"thermal percentiles need 0 <= low < high <= 100, got {self.percentiles}")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype != np.uint16 or self.mode == "full":
            top = 65535.0 if raw.dtype == np.uint16 else 255.0
            return raw.astype(np.float32) * np.float32(255.0 / top)
        if self.mode == "fixed":
            low, high = self.value_range
        else:
            low, high = (float(v) for v in np.percentile(raw, self.percentiles))
            high = max(high, low + 1.0)
        out = (raw.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
        return np.clip(out, 0.0, 255.0, out=out)


def thermal_from_array(arr: np.ndarray, path: str, channels: int, scaling: ThermalScaling) -> np.ndarray:
    """A decoded thermal (or X) image -> ``HxW`` / ``HxWx3`` float32 on the 0-255 scale."""
    n = 1 if arr.ndim == 2 else arr.shape[2]
    if channels == 1:
        if n == 3:
            arr = arr.astype(np.float32).mean(axis=2)
        elif n != 1:
            raise InputError(f"{path}: expected a 1- or 3-channel thermal image, got {n} channels")
    elif n != 3:
        raise InputError(f"{path}: the model takes a 3-channel X image (e.g. HHA), got {n} channel(s)")
    return scaling(arr)


def read_pair(rgb_path: str, thermal_path: str, channels: int, scaling: ThermalScaling):
    """RGB file + thermal file -> ``(rgb HxWx3 uint8, thermal float32)``."""
    rgb = read_image_array(rgb_path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        depth = 1 if rgb.ndim == 2 else rgb.shape[2]
        raise InputError(f"{rgb_path}: expected an 8-bit 3-channel RGB image, got {depth} channel(s) of {rgb.dtype}")
    thermal = thermal_from_array(read_image_array(thermal_path), thermal_path, channels, scaling)
    if thermal.shape[:2] != rgb.shape[:2]:
        raise InputError(f"{thermal_path}: size {thermal.shape[1]}x{thermal.shape[0]} (WxH) differs from the RGB "
                         f"image {rgb_path} ({rgb.shape[1]}x{rgb.shape[0]})")
    return rgb, thermal


def read_rgbt(path: str, scaling: ThermalScaling):
    """A 4-channel PNG (R, G, B, thermal) -> ``(rgb, thermal)``."""
    arr = read_image_array(path)
    if arr.ndim != 3 or arr.shape[2] != 4 or arr.dtype != np.uint8:
        depth = 1 if arr.ndim == 2 else arr.shape[2]
        raise InputError(f"{path}: expected an 8-bit 4-channel (R,G,B,thermal) PNG, got {depth} channel(s) of {arr.dtype}")
    return np.ascontiguousarray(arr[:, :, :3]), scaling(arr[:, :, 3])


def _images_in(folder: str):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def folder_samples(folder: str):
    """The samples of ``--input-dir``: ``(stem, ("pair", rgb, thermal) | ("rgbt", png))``.

    ``rgb/`` + ``thermal/`` subfolders pair files by stem; otherwise every PNG of ``images/``
    (or of the folder itself) is read as a 4-channel RGB-T PNG.
    """
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: input folder does not exist")
    rgb_dir, thermal_dir = os.path.join(folder, "rgb"), os.path.join(folder, "thermal")
    if os.path.isdir(rgb_dir) and os.path.isdir(thermal_dir):
        thermal = {os.path.splitext(f)[0]: f for f in _images_in(thermal_dir)}
        samples = []
        for f in _images_in(rgb_dir):
            stem = os.path.splitext(f)[0]
            if stem not in thermal:
                raise InputError(f"{os.path.join(rgb_dir, f)}: no thermal image {stem}.* in {thermal_dir}")
            samples.append((stem, ("pair", os.path.join(rgb_dir, f), os.path.join(thermal_dir, thermal[stem]))))
    else:
        images = os.path.join(folder, "images")
        base = images if os.path.isdir(images) else folder
        samples = [(os.path.splitext(f)[0], ("rgbt", os.path.join(base, f)))
                   for f in _images_in(base) if f.lower().endswith(".png")]
    if not samples:
        raise InputError(f"{folder}: no inputs (expected rgb/ + thermal/ subfolders, or 4-channel PNGs)")
    return samples


# ---------------------------------------------------------------------------- outputs
def overlay(rgb: np.ndarray, label: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the RGB image: ``(1 - alpha) * rgb + alpha * colour``."""
    palette = np.zeros((256, 3), dtype=np.float32)
    palette[: len(colors)] = colors
    coloured = palette[label]
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * coloured
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_outputs(output: str, stem: str, rgb: np.ndarray, label: np.ndarray, colors: np.ndarray, alpha: float):
    Image.fromarray(label).save(os.path.join(output, f"{stem}.png"))
    Image.fromarray(overlay(rgb, label, colors, alpha)).save(os.path.join(output, f"{stem}_overlay.png"))


def run_video(model: ExportedModel, args, scaling: ThermalScaling) -> None:
    """Label PNG per frame pair and ``<stem>_overlay.mp4``."""
    try:
        import cv2
    except ImportError:
        raise InputError(f"{args.video_rgb}: reading videos needs opencv-python (pip install opencv-python-headless)") from None
    captures = []
    for path in (args.video_rgb, args.video_thermal):
        if not os.path.isfile(path):
            raise InputError(f"{path}: file does not exist")
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise InputError(f"{path}: not a readable video (unknown format or corrupt)")
        captures.append(capture)
    stem = os.path.splitext(os.path.basename(args.video_rgb))[0]
    writer, index = None, 0
    try:
        while True:
            (ok_rgb, frame_rgb), (ok_thermal, frame_thermal) = captures[0].read(), captures[1].read()
            if ok_rgb != ok_thermal:
                shorter = args.video_thermal if ok_rgb else args.video_rgb
                raise InputError(f"{shorter}: ends after {index} frames, before the other video of the pair")
            if not ok_rgb:
                break
            rgb = cv2.cvtColor(frame_rgb, cv2.COLOR_BGR2RGB)
            conversion = cv2.COLOR_BGR2GRAY if model.thermal_channels == 1 else cv2.COLOR_BGR2RGB
            thermal = cv2.cvtColor(frame_thermal, conversion).astype(np.float32)
            if thermal.shape[:2] != rgb.shape[:2]:
                raise InputError(f"{args.video_thermal}: frame size differs from the RGB video {args.video_rgb}")
            label = model.predict(rgb, thermal)
            Image.fromarray(label).save(os.path.join(args.output, f"{stem}_{index:06d}.png"))
            frame = cv2.cvtColor(overlay(rgb, label, model.colors, args.alpha), cv2.COLOR_RGB2BGR)
            if writer is None:
                fps = captures[0].get(cv2.CAP_PROP_FPS) or 30.0
                out = os.path.join(args.output, f"{stem}_overlay.mp4")
                writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
            writer.write(frame)
            index += 1
    finally:
        for capture in captures:
            capture.release()
        if writer is not None:
            writer.release()
    if index == 0:
        raise InputError(f"{args.video_rgb}: the video has no frames")
    print(f"{stem}: {index} frames", flush=True)


# ---------------------------------------------------------------------------- command line
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="ONNX", help="exported model (export_model.py)")
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--rgb", nargs="+", metavar="IMG", help="RGB images (pair with --thermal)")
    modes.add_argument("--rgbt", nargs="+", metavar="PNG", help="4-channel PNGs (R,G,B,thermal; MFNet layout)")
    modes.add_argument("--input-dir", metavar="DIR", help="rgb/ + thermal/ subfolders, or 4-channel PNGs")
    modes.add_argument("--video-rgb", metavar="VIDEO", help="RGB video (pair with --video-thermal)")
    parser.add_argument("--thermal", nargs="+", metavar="IMG", help="thermal images, paired with --rgb by position")
    parser.add_argument("--video-thermal", metavar="VIDEO", help="thermal video (with --video-rgb)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--thermal-scaling", choices=SCALING_MODES,
                        help="16-bit thermal: full, fixed (--thermal-range) or percentile (--thermal-percentiles); "
                        "default: the model's stored scaling if not full, else percentile")
    parser.add_argument("--thermal-range", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="raw 16-bit counts mapped to 0 and 255 (implies --thermal-scaling fixed)")
    parser.add_argument("--thermal-percentiles", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="per-image percentiles mapped to 0 and 255 (implies --thermal-scaling percentile)")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Flag combinations that cannot work: argparse error, exit code 2."""
    if args.rgb and not args.thermal:
        parser.error("--rgb needs --thermal (one thermal image per RGB image)")
    if args.rgb and len(args.rgb) != len(args.thermal):
        parser.error(f"{len(args.rgb)} --rgb images but {len(args.thermal)} --thermal images; they are paired by position")
    if args.thermal and not args.rgb:
        parser.error("--thermal is only used with --rgb")
    if bool(args.video_rgb) != bool(args.video_thermal):
        parser.error("--video-rgb and --video-thermal go together")
    if args.thermal_range and args.thermal_percentiles:
        parser.error("--thermal-range (fixed) and --thermal-percentiles (percentile) exclude each other")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")


def thermal_scaling_of(parser: argparse.ArgumentParser, args, model: ExportedModel) -> ThermalScaling:
    """The demo's rule: the command line's scaling, else the stored one when not "full", else percentile."""
    stored = model.thermal_scaling
    mode = args.thermal_scaling or ("fixed" if args.thermal_range else None) or (
        "percentile" if args.thermal_percentiles else None)
    if mode is None:
        mode = stored.get("mode", "full")
        mode = "percentile" if mode == "full" else mode
    try:
        return ThermalScaling(mode, args.thermal_range or stored.get("range", (0.0, 65535.0)),
                              args.thermal_percentiles or stored.get("percentiles", (1.0, 99.0)))
    except ValueError as e:
        parser.error(str(e))


def image_samples(args, parser):
    """``(stem, source)`` of the image inputs; two inputs with one stem are refused."""
    if args.rgb:
        samples = [(os.path.splitext(os.path.basename(r))[0], ("pair", r, t)) for r, t in zip(args.rgb, args.thermal)]
    elif args.rgbt:
        samples = [(os.path.splitext(os.path.basename(p))[0], ("rgbt", p)) for p in args.rgbt]
    else:
        samples = folder_samples(args.input_dir)
    stems = [s for s, _ in samples]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        parser.error(f"several inputs would write the same outputs: {', '.join(duplicates)}")
    return samples


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        model = ExportedModel(args.model, args.threads)
        scaling = thermal_scaling_of(parser, args, model)
        os.makedirs(args.output, exist_ok=True)
        if args.video_rgb:
            run_video(model, args, scaling)
            return 0
        for stem, source in image_samples(args, parser):
            if source[0] == "pair":
                rgb, thermal = read_pair(source[1], source[2], model.thermal_channels, scaling)
            else:
                if model.thermal_channels != 1:
                    raise InputError(f"{source[1]}: a 4-channel PNG has 1 thermal channel but the model takes 3")
                rgb, thermal = read_rgbt(source[1], scaling)
            start = time.perf_counter()
            label = model.predict(rgb, thermal)
            write_outputs(args.output, stem, rgb, label, model.colors, args.alpha)
            print(f"{stem}: {rgb.shape[1]}x{rgb.shape[0]} in {time.perf_counter() - start:.2f}s", flush=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
