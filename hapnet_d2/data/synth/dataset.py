"""Writing synthetic datasets in the MFNet layout, atomically, and the command line."""

import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time

import cv2
import numpy as np

from .panoptic import PANOPTIC_DIRNAME, PanopticWriter
from .scene import render_scene

__all__ = ["SynthSpec", "generate_dataset", "ensure_synth_dataset", "is_complete", "main"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "test_day", "test_night")
META_FILE = "synth_meta.json"
MIN_SIZE = (64, 48)  # (W, H): below this the smallest objects shrink under ~6 px


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Parameters of a synthetic dataset; half of every split is day, half night.

    Attributes:
        seed (int): base seed; image ``i`` is drawn from ``np.random.default_rng([seed, i])``.
        width (int): image width in pixels (160..320 intended).
        height (int): image height in pixels (120..240 intended).
        num_train (int): number of training images.
        num_val (int): number of validation images.
        num_test (int): number of test images (split into ``test_day`` and ``test_night``).
    """

    seed: int = 0
    width: int = 160
    height: int = 120
    num_train: int = 600
    num_val: int = 100
    num_test: int = 200

    def __post_init__(self):
        if self.width < MIN_SIZE[0] or self.height < MIN_SIZE[1]:
            raise ValueError(
                f"synthetic image size {self.width}x{self.height} (WxH) is too small; "
                f"use at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (160x120 to 320x240 intended)"
            )
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def split_names(spec):
    """Image names per split: global indices from 1, alternating day (D) and night (N).

    Returns:
        dict: split name -> list of (index, name).
    """
    names, index = {}, 1
    for split, count in (("train", spec.num_train), ("val", spec.num_val), ("test", spec.num_test)):
        names[split] = []
        for i in range(count):
            names[split].append((index, f"{index:05d}{'N' if i % 2 else 'D'}"))
            index += 1
    names["test_day"] = [n for n in names["test"] if n[1].endswith("D")]
    names["test_night"] = [n for n in names["test"] if n[1].endswith("N")]
    return names


def draw_scenes(spec):
    """Draw every image of a dataset from its seed, in index order.

    Yields:
        tuple: ``(name, night, rgbt, label, instance)`` as :func:`render_scene` returns them.
    """
    names = split_names(spec)
    for split in ("train", "val", "test"):
        for index, name in names[split]:
            rng = np.random.default_rng([spec.seed, index])
            night = name.endswith("N")
            yield (name, night, *render_scene(rng, spec.width, spec.height, night=night))


def new_panoptic_writer(pan_dir):
    """A :class:`PanopticWriter` of the synthetic dataset's (MFNet's) classes into ``pan_dir``."""
    from ..datasets.register_mfnet import MFNET_CLASSES, MFNET_COLORS  # (the package imports this one)

    return PanopticWriter(pan_dir, MFNET_CLASSES, MFNET_COLORS)


def _write_dataset(out_dir, spec):
    """Write all images, labels, panoptic labels, split lists and, last, the meta file into
    ``out_dir``."""
    os.makedirs(os.path.join(out_dir, "images"))
    os.makedirs(os.path.join(out_dir, "labels"))
    names = split_names(spec)
    panoptic = new_panoptic_writer(os.path.join(out_dir, PANOPTIC_DIRNAME))
    for name, night, rgbt, label, instance in draw_scenes(spec):
        # OpenCV writes B,G,R,A order: swap so the file holds R,G,B,thermal
        cv2.imwrite(os.path.join(out_dir, "images", name + ".png"), rgbt[..., [2, 1, 0, 3]])
        cv2.imwrite(os.path.join(out_dir, "labels", name + ".png"), label)
        panoptic.add(name, label, instance, "night" if night else "day")
    panoptic.finish({split: [n for _, n in names[split]] for split in SPLITS})
    for split in SPLITS:
        with open(os.path.join(out_dir, split + ".txt"), "w") as f:
            f.writelines(name + "\n" for _, name in names[split])
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(dataclasses.asdict(spec), f, indent=2)


def is_complete(root):
    """Whether ``root`` holds a completely written synthetic dataset (its meta file exists)."""
    return os.path.isfile(os.path.join(root, META_FILE))


def generate_dataset(out_dir, spec=SynthSpec(), exist_ok=False):
    """Generate a synthetic dataset into ``out_dir`` atomically.

    The files are written into a temporary sibling directory which is then renamed to
    ``out_dir``; if another process finished first, its dataset is kept and ours discarded.

    Args:
        out_dir (str): destination; must not exist or be an empty directory.
        spec (SynthSpec): generation parameters.
        exist_ok (bool): if a complete synthetic dataset is already there, keep it instead of
            raising ``FileExistsError``.

    Returns:
        bool: True if this call created ``out_dir``, False if it already held a dataset.
    """
    out_dir = os.path.abspath(out_dir)
    if is_complete(out_dir):
        if exist_ok:
            return False
        raise FileExistsError(f"{out_dir}: a synthetic dataset already exists there")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(
            f"{out_dir}: exists and is not empty but holds no complete synthetic dataset "
            f"(no {META_FILE}); remove it or choose another directory"
        )
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        start = time.perf_counter()
        _write_dataset(tmp, spec)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, out_dir)  # atomic; fails if another process created a non-empty dir
        except OSError:
            if not is_complete(out_dir):
                raise
            logger.info(f"{out_dir} was generated by another process meanwhile; using it")
            return False
        logger.info(
            f"Generated synthetic RGB-T dataset in {out_dir} "
            f"({time.perf_counter() - start:.1f} s)"
        )
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_synth_dataset(root, spec=SynthSpec()):
    """Generate the synthetic dataset at ``root`` unless a complete one is already there.

    Safe when several processes call it at once (see :func:`generate_dataset`).

    Args:
        root (str): dataset directory (e.g. ``$DETECTRON2_DATASETS/synth_rgbt``).
        spec (SynthSpec): parameters used if it has to be generated.

    Returns:
        str: ``root``.
    """
    if not is_complete(root):
        logger.info(f"Synthetic RGB-T dataset not found at {root}; generating it with {spec}")
        generate_dataset(root, spec, exist_ok=True)
    return root


def main(argv=None):
    """Command line entry point (see the package docstring of ``hapnet_d2.data.synth``)."""
    default = SynthSpec()
    parser = argparse.ArgumentParser(
        prog="python -m hapnet_d2.data.synth",
        description="Generate the synthetic RGB-T street dataset in the MFNet layout.",
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--num-train", type=int, default=default.num_train)
    parser.add_argument("--num-val", type=int, default=default.num_val)
    parser.add_argument("--num-test", type=int, default=default.num_test)
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("W", "H"), default=(default.width, default.height)
    )
    args = parser.parse_args(argv)
    try:
        spec = SynthSpec(
            seed=args.seed,
            width=args.size[0],
            height=args.size[1],
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
        )
        generate_dataset(args.out, spec)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
