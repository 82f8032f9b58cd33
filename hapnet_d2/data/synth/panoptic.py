"""Panoptic ground truth of the synthetic scenes, in COCO panoptic format.

The generator knows every object it draws (:func:`~hapnet_d2.data.synth.scene.render_scene`
returns the object of each pixel), so the panoptic labels are exact, not an approximation:

* things (:data:`~hapnet_d2.data.synth.objects.THING_CLASSES`: car, person, bike, color_cone;
  every cone is drawn as an object of its own): one segment per drawn object that is still
  visible, with exactly the pixels the label map gives its class (a later, nearer object
  covers an earlier one; a bike's rider is a person segment of its own);
* stuff (unlabeled/background, curve, car_stop, guardrail, bump): one segment per class
  present in the image.

Every pixel belongs to a segment (the synthetic labels have no void). Layout, beside the
semantic files::

    DIR/panoptic/NAME.png               segment ids, R + 256 G + 256^2 B
    DIR/panoptic/panoptic_SPLIT.json    images, annotations, categories of one split

Segment ids are ``(class id + 1) * 1000 + k`` (``k = 0`` stuff, ``1, 2, ...`` the class's
objects in drawing order), JSON category ids ``class id + 1``.
"""

import os

import numpy as np

from ..panoptic_format import (
    LABEL_DIVISOR,
    coco_categories,
    segments_info_of,
    write_panoptic_json,
    write_panoptic_png,
)
from .objects import THING_CLASSES

__all__ = [
    "PANOPTIC_DIRNAME",
    "PanopticWriter",
    "ensure_synth_panoptic",
    "is_panoptic_complete",
    "panoptic_ids",
    "panoptic_json_path",
]

PANOPTIC_DIRNAME = "panoptic"


def panoptic_json_path(root, split):
    """``root/panoptic/panoptic_<split>.json``."""
    return os.path.join(root, PANOPTIC_DIRNAME, f"panoptic_{split}.json")


def is_panoptic_complete(root, splits):
    """Whether ``root`` holds the panoptic JSON of every split in ``splits``."""
    return all(os.path.isfile(panoptic_json_path(root, s)) for s in splits)


def panoptic_ids(label, instance, thing_classes=THING_CLASSES):
    """Segment ids of one drawn scene.

    Args:
        label (np.ndarray): uint8 ``HxW`` class ids.
        instance (np.ndarray): int ``HxW`` object ids (the object whose paint set the label).
        thing_classes (tuple[int]): classes whose objects become separate segments.

    Returns:
        np.ndarray: int32 ``HxW``: ``(class + 1) * 1000`` on stuff pixels,
        ``(class + 1) * 1000 + k`` on the pixels of the k-th visible object of a thing class.
    """
    ids = (label.astype(np.int32) + 1) * LABEL_DIVISOR
    for cls in thing_classes:
        mask = label == cls
        if mask.any():
            # objects in drawing order -> 1, 2, ... (np.unique sorts the object ids)
            _, rank = np.unique(instance[mask], return_inverse=True)
            ids[mask] += 1 + rank.astype(np.int32).ravel()
    return ids


class PanopticWriter:
    """Write the panoptic PNGs of a synthetic dataset one by one, then the split JSONs."""

    def __init__(self, pan_dir, class_names, colors):
        """
        Args:
            pan_dir (str): the (new, empty or missing) ``panoptic`` folder.
            class_names (list[str]): the K class names.
            colors (list[list[int]]): their RGB colours.
        """
        self.pan_dir = pan_dir
        self.categories = coco_categories(class_names, colors, THING_CLASSES)
        self._entries = {}  # name -> (image entry, annotation)
        os.makedirs(pan_dir, exist_ok=True)

    def add(self, name, label, instance, condition):
        """Write ``NAME.png`` of one scene and remember its JSON entries.

        Args:
            name (str): image name (also the image id), e.g. ``"00012D"``.
            label, instance: as for :func:`panoptic_ids`.
            condition (str): ``"day"`` or ``"night"``.
        """
        ids = panoptic_ids(label, instance)
        write_panoptic_png(os.path.join(self.pan_dir, f"{name}.png"), ids)
        height, width = label.shape
        self._entries[name] = (
            {
                "id": name,
                "file_name": f"{name}.png",
                "height": height,
                "width": width,
                "condition": condition,
            },
            {
                "image_id": name,
                "file_name": f"{name}.png",
                "segments_info": segments_info_of(ids, lambda i: i // LABEL_DIVISOR),
            },
        )

    def finish(self, split_names):
        """Write ``panoptic_<split>.json`` for each split.

        Args:
            split_names (dict): split -> list of image names (all added before).
        """
        for split, names in split_names.items():
            entries = [self._entries[n] for n in names]
            write_panoptic_json(
                os.path.join(self.pan_dir, f"panoptic_{split}.json"),
                [image for image, _ in entries],
                [ann for _, ann in entries],
                self.categories,
            )


def _render_panoptic(out_dir, root, spec):
    """Re-draw every scene of the dataset at ``root`` (same seeds) and write its panoptic files
    into ``out_dir``; the labels drawn must equal the ones on disk."""
    import cv2

    from .dataset import SPLITS, draw_scenes, new_panoptic_writer, split_names

    writer = new_panoptic_writer(out_dir)
    names = split_names(spec)
    for name, night, _, label, instance in draw_scenes(spec):
        label_path = os.path.join(root, "labels", f"{name}.png")
        on_disk = cv2.imread(label_path, cv2.IMREAD_UNCHANGED)
        if on_disk is None or on_disk.shape != label.shape or not np.array_equal(on_disk, label):
            raise RuntimeError(
                f"{label_path}: differs from the scene drawn for it by {spec}; the dataset at "
                f"{root} was not made by this generator version: delete it to regenerate"
            )
        writer.add(name, label, instance, "night" if night else "day")
    writer.finish({split: [n for _, n in names[split]] for split in SPLITS})


def ensure_synth_panoptic(root):
    """Write the panoptic ground truth of the synthetic dataset at ``root`` unless present.

    The scenes are re-drawn from their seeds (the generation parameters in the dataset's meta
    file), so a dataset generated before panoptic labels existed gains them unchanged. The files
    go to a temporary sibling folder renamed to ``root/panoptic`` (safe when several processes
    call this at once).

    Returns:
        str: ``root``.
    """
    import dataclasses
    import json
    import logging
    import shutil
    import tempfile
    import time

    from .dataset import META_FILE, SPLITS, SynthSpec

    pan_dir = os.path.join(root, PANOPTIC_DIRNAME)
    if is_panoptic_complete(root, SPLITS):
        return root
    with open(os.path.join(root, META_FILE)) as f:
        fields = {f.name for f in dataclasses.fields(SynthSpec)}
        spec = SynthSpec(**{k: v for k, v in json.load(f).items() if k in fields})
    logger = logging.getLogger(__name__)
    logger.info(f"Writing the panoptic ground truth of {root} ({spec})")
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{PANOPTIC_DIRNAME}.tmp-", dir=root)
    try:
        _render_panoptic(tmp, root, spec)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, pan_dir)
        except OSError:
            if not is_panoptic_complete(root, SPLITS):
                raise
            return root  # another process finished first
        logger.info(f"Wrote {pan_dir} ({time.perf_counter() - start:.1f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
