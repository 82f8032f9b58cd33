"""COCO mask AP of instance predictions against the thing segments of a panoptic dataset.

The ground-truth instances are the non-crowd thing segments of the panoptic PNGs (crowd
segments become COCO ``iscrowd`` regions); predictions are the model's ``"instances"``. Scored
with pycocotools' ``COCOeval`` (``iouType="segm"``), overall and by day and by night.
"""

import contextlib
import io
import itertools
import logging
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.panoptic_format import read_panoptic_png

__all__ = ["RGBTInstanceEvaluator", "coco_mask_ap"]

_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth_instances(input, thing_ids):
    """COCO annotations of one image's thing segments.

    Args:
        input (dict): a panoptic dataset dict (``pan_seg_file_name``, ``segments_info`` with
            contiguous ``category_id``).
        thing_ids (set[int]): contiguous thing ids.

    Returns:
        list[dict]: ``segmentation`` (RLE), ``area``, ``bbox``, ``category_id``, ``iscrowd``.
    """
    ids = read_panoptic_png(input["pan_seg_file_name"])
    annotations = []
    for seg in input["segments_info"]:
        if seg["category_id"] not in thing_ids:
            continue
        mask = ids == seg["id"]
        if not mask.any():
            continue
        rle = _rle(mask)
        annotations.append(
            {
                "segmentation": rle,
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "category_id": int(seg["category_id"]),
                "iscrowd": int(seg.get("iscrowd", 0)),
            }
        )
    return annotations


def coco_mask_ap(images, thing_ids, class_names):
    """Mask AP of the given images.

    Args:
        images (list[tuple]): per image ``(annotations, predictions, (height, width))``: its
            ground truth (:func:`ground_truth_instances`), its predictions (``segmentation``,
            ``score``, ``category_id``) and its size.
        thing_ids (list[int]): contiguous thing ids (the categories).
        class_names (list[str]): all class names (index = contiguous id).

    Returns:
        OrderedDict: AP, AP50, AP75, APs, APm, APl and ``AP-<class>`` in percent (NaN where COCO
        gives -1: no ground truth).
    """
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": class_names[c]} for c in thing_ids]}
    dets = []
    for image_id, (gts, preds, (height, width)) in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "height": int(height), "width": int(width)})
        for ann in gts:
            gt["annotations"].append(dict(ann, id=len(gt["annotations"]) + 1, image_id=image_id))
        dets += [dict(p, image_id=image_id) for p in preds]
    results = OrderedDict((k, float("nan")) for k in _AP_KEYS)
    if not gt["annotations"]:
        return results
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets) if dets else COCO()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        if not dets:
            return OrderedDict((k, 0.0) for k in _AP_KEYS)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    for k, v in zip(_AP_KEYS, evaluator.stats[:6]):
        results[k] = float("nan") if v < 0 else 100 * float(v)
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    for k, cat in enumerate(thing_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        results[f"AP-{class_names[cat]}"] = 100 * float(p.mean()) if p.size else float("nan")
    return results


class RGBTInstanceEvaluator(DatasetEvaluator):
    """COCO mask AP of ``"instances"`` outputs on a panoptic RGB-T dataset, all / day / night."""

    def __init__(self, dataset_name, distributed=True):
        meta = MetadataCatalog.get(dataset_name)
        self._thing_ids = sorted(int(v) for v in meta.thing_dataset_id_to_contiguous_id.values())
        self._class_names = list(meta.stuff_classes)
        self._has_day_night = meta.get("has_day_night", False)
        self._distributed = distributed
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        self._images = []  # (condition, gt annotations, predictions, (height, width))

    def process(self, inputs, outputs):
        """
        Args:
            inputs: panoptic dataset dicts; outputs: with ``"instances"`` (``pred_masks``
                [N, H, W], ``scores``, ``pred_classes``) at the image's size.
        """
        thing_ids = set(self._thing_ids)
        for input, output in zip(inputs, outputs):
            if "instances" not in output:
                continue
            inst = output["instances"].to("cpu")
            masks = inst.pred_masks.numpy() > 0.5
            preds = [
                {"segmentation": _rle(m), "score": float(s), "category_id": int(c)}
                for m, s, c in zip(masks, inst.scores.tolist(), inst.pred_classes.tolist())
            ]
            size = tuple(inst.image_size)
            self._images.append((input.get("condition"), ground_truth_instances(input, thing_ids), preds, size))

    def evaluate(self):
        """
        Returns:
            dict: ``{"segm": AP metrics, "segm_day": ..., "segm_night": ...}`` (main process).
        """
        images = self._images
        if self._distributed:
            comm.synchronize()
            images = list(itertools.chain(*comm.gather(images)))
            if not comm.is_main_process():
                return None
        if not images:
            return OrderedDict()
        results = OrderedDict(segm=coco_mask_ap([i[1:] for i in images], self._thing_ids, self._class_names))
        if self._has_day_night:
            for condition in ("day", "night"):
                subset = [i[1:] for i in images if i[0] == condition]
                if subset:
                    results[f"segm_{condition}"] = coco_mask_ap(subset, self._thing_ids, self._class_names)
        self._logger.info(f"mask AP {results['segm']['AP']:.2f} over {len(images)} images")
        return results
