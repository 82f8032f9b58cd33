"""Panoptic quality (PQ, SQ, RQ) of RGB-T panoptic predictions, overall and by day and by night.

The segment matching and the per-category counts are panopticapi's own
(``panopticapi.evaluation``, the code behind the COCO panoptic leaderboard): a predicted and a
ground-truth segment of one category match when their IoU exceeds 0.5 (void pixels of the
prediction leave the union); unmatched ground truth counts as FN unless crowd; an unmatched
prediction counts as FP unless more than half of it lies on void or on a crowd region of its
category. Per category ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP``,
``RQ = TP / (TP + FP/2 + FN/2)``; PQ, PQ_th, PQ_st average over the categories (of the group)
with ``TP + FP + FN > 0``.

This module runs the same steps as ``panopticapi.evaluation.pq_compute`` (load the two JSONs,
pair annotations by ``image_id``, count per image, average with ``PQStat.pq_average``) so that
the numbers are identical, and it adds: a group without any present category gives NaN (where
``pq_compute`` divides by zero), categories absent from both ground truth and prediction have
NaN instead of 0 per class, and the TP/FP/FN counts are kept for the reports. The day and night
subsets are the same computation on the images of that condition.
"""

import contextlib
import io
import itertools
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict

import numpy as np
import torch
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.io import RGBTDataError

__all__ = ["RGBTPanopticEvaluator", "panoptic_quality"]

_SUBSETS = ("day", "night")
# below this many images the counting runs in this process instead of a process pool
_POOL_MIN_IMAGES = 64


def _load_json(path, what):
    if not path or not os.path.isfile(path):
        raise RGBTDataError(path, f"{what} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise RGBTDataError(path, f"{what} is not valid JSON ({e})") from None


def _pq_stat(matched, gt_folder, pred_folder, categories):
    from panopticapi.evaluation import pq_compute_multi_core, pq_compute_single_core

    with contextlib.redirect_stdout(io.StringIO()):
        if len(matched) < _POOL_MIN_IMAGES:
            return pq_compute_single_core(0, matched, gt_folder, pred_folder, categories)
        return pq_compute_multi_core(matched, gt_folder, pred_folder, categories)


def panoptic_quality(gt_json_file, pred_json_file, gt_folder, pred_folder, class_names=None):
    """PQ/SQ/RQ of a COCO panoptic prediction (the steps of panopticapi's ``pq_compute``).

    Args:
        gt_json_file (str): COCO panoptic ground truth (``images``, ``annotations``,
            ``categories``).
        pred_json_file (str): predictions (``annotations`` with ``image_id``, ``file_name``,
            ``segments_info``); every ground-truth image needs one.
        gt_folder, pred_folder (str): folders of the ground-truth and predicted PNGs.
        class_names (dict[int, str] or None): name per dataset category id for the per-class
            keys (default: the JSON's category names).

    Returns:
        tuple: ``metrics`` (OrderedDict with ``PQ``, ``SQ``, ``RQ``, ``PQ_th``, ``SQ_th``,
        ``RQ_th``, ``PQ_st``, ``SQ_st``, ``RQ_st``, and ``PQ-<class>``, ``SQ-<class>``,
        ``RQ-<class>``; in percent, NaN where undefined) and ``counts``
        (``{class name: {"TP", "FP", "FN", "isthing"}}``).

    Raises:
        RGBTDataError: a JSON is missing or unreadable, or an image has no prediction.
    """
    gt_json = _load_json(gt_json_file, "ground-truth panoptic JSON")
    pred_json = _load_json(pred_json_file, "panoptic predictions JSON")
    categories = {el["id"]: el for el in gt_json["categories"]}
    names = class_names or {c: info["name"] for c, info in categories.items()}
    predictions = {el["image_id"]: el for el in pred_json["annotations"]}
    matched = []
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in predictions:
            raise RGBTDataError(pred_json_file, f"no prediction for image {gt_ann['image_id']!r}")
        matched.append((gt_ann, predictions[gt_ann["image_id"]]))
    try:
        stat = _pq_stat(matched, gt_folder, pred_folder, categories)
    except KeyError as e:  # panopticapi's checks of the prediction (ids in PNG vs JSON, ...)
        raise RGBTDataError(pred_json_file, str(e.args[0]) if e.args else str(e)) from None

    def present(cat):
        c = stat.pq_per_cat[cat]
        return c.tp + c.fp + c.fn > 0

    metrics = OrderedDict()
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        group = [
            c for c, info in categories.items()
            if isthing is None or (info["isthing"] == 1) == isthing
        ]
        if any(present(c) for c in group):
            average, per_class = stat.pq_average(categories, isthing=isthing)
            values = (average["pq"], average["sq"], average["rq"])
        else:
            values, per_class = (math.nan,) * 3, {}
        for key, value in zip(("PQ", "SQ", "RQ"), values):
            metrics[key + suffix] = 100 * value
        if isthing is None:
            overall = per_class
    counts = OrderedDict()
    for cat, info in categories.items():
        name = names.get(cat, str(cat))
        for key in ("pq", "sq", "rq"):
            value = 100 * overall[cat][key] if present(cat) else math.nan
            metrics[f"{key.upper()}-{name}"] = value
        c = stat.pq_per_cat[cat]
        counts[name] = {"TP": c.tp, "FP": c.fp, "FN": c.fn, "isthing": info["isthing"] == 1}
    return metrics, counts


class RGBTPanopticEvaluator(COCOPanopticEvaluator):
    """PQ/SQ/RQ over a dataset and its day and night subsets.

    Predictions are collected as Detectron2's ``COCOPanopticEvaluator`` does (PNG bytes and
    ``segments_info`` with dataset category ids); at :meth:`evaluate` the ground-truth JSON of
    the evaluated images (all / day / night) and the predictions are written to a temporary
    folder and scored with :func:`panoptic_quality`.
    """

    def __init__(self, dataset_name, output_dir=None, distributed=True):
        """
        Args:
            dataset_name (str): a registered panoptic dataset (``panoptic_json``,
                ``panoptic_root``, ``thing_/stuff_dataset_id_to_contiguous_id``,
                ``has_day_night``).
            output_dir (str or None): where ``panoptic_predictions.json`` is written (None:
                nowhere); the reports are written by the caller.
            distributed (bool): gather predictions of all processes.
        """
        super().__init__(dataset_name, output_dir=None)
        self._dataset_name = dataset_name
        self._keep_dir = output_dir
        self._distributed = distributed
        self._has_day_night = self._metadata.get("has_day_night", False)
        self._logger = logging.getLogger(__name__)
        self.counts = {}
        self.reset()

    def reset(self):
        super().reset()
        self._conditions = {}
        self._warned_missing = False

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): dataset dicts / mapper outputs with ``image_id``,
                ``file_name``, ``height``, ``width`` and optional ``condition``.
            outputs (list[dict]): model outputs with ``panoptic_seg`` =
                ``(ids [H, W], segments_info)`` (contiguous category ids); outputs without it
                (e.g. semantic-only test-time augmentation) are skipped with a warning.
        """
        pairs = [(i, o) for i, o in zip(inputs, outputs) if "panoptic_seg" in o]
        if len(pairs) < len(inputs) and not self._warned_missing:
            self._logger.warning(f"{self._dataset_name}: outputs without 'panoptic_seg' skipped")
            self._warned_missing = True
        for input, output in pairs:
            ids, segments_info = output["panoptic_seg"]
            expected = (input.get("height"), input.get("width"))
            if None not in expected and tuple(ids.shape) != expected:
                raise ValueError(
                    f"{input['file_name']}: panoptic prediction {tuple(ids.shape)} but the "
                    f"image is {expected}"
                )
            if segments_info is not None:
                # a listed segment without pixels would stop panopticapi ("not presented in PNG")
                present = set(torch.unique(torch.as_tensor(ids)).tolist())
                segments_info = [dict(s) for s in segments_info if s["id"] in present]
            super().process([input], [{"panoptic_seg": (ids, segments_info)}])
            # one PNG per image id (file names of different folders may repeat)
            self._predictions[-1]["file_name"] = f"{len(self._conditions):06d}.png"
            self._conditions[input["image_id"]] = input.get("condition")

    def _gather(self):
        if not self._distributed:
            return self._predictions, self._conditions
        comm.synchronize()
        parts = comm.gather((self._predictions, self._conditions))
        if not comm.is_main_process():
            return None, None
        predictions = list(itertools.chain(*(p[0] for p in parts)))
        conditions = {}
        for p in parts:
            conditions.update(p[1])
        for i, p in enumerate(predictions):  # unique PNG names after gathering
            p["file_name"] = f"{i:06d}.png"
        return predictions, conditions

    def evaluate(self):
        """
        Returns:
            dict or None: ``{"panoptic_seg": metrics}`` plus ``"panoptic_seg_day"`` /
            ``"panoptic_seg_night"`` for datasets with day/night subsets that were seen (see
            :func:`panoptic_quality`); empty if no panoptic output was seen; None on processes
            other than the main one. ``self.counts`` keeps the TP/FP/FN per subset and class.
        """
        predictions, conditions = self._gather()
        if predictions is None:
            return None
        if not predictions:
            return OrderedDict()
        meta = self._metadata
        gt_json = _load_json(PathManager.get_local_path(meta.panoptic_json), "panoptic_json")
        gt_folder = PathManager.get_local_path(meta.panoptic_root)
        known = {a["image_id"] for a in gt_json["annotations"]}
        unknown = [i for i in conditions if i not in known]
        if unknown:
            raise RGBTDataError(
                meta.panoptic_json, f"no ground truth for image ids {unknown[:5]} (of {len(unknown)})"
            )
        subsets = [("all", set(conditions))]
        if self._has_day_night:
            for subset in _SUBSETS:
                ids = {i for i, c in conditions.items() if c == subset}
                if ids:
                    subsets.append((subset, ids))
        names = {}
        for cat in gt_json["categories"]:
            contiguous = meta.stuff_dataset_id_to_contiguous_id.get(cat["id"])
            names[cat["id"]] = meta.stuff_classes[contiguous] if contiguous is not None else cat["name"]
        results = OrderedDict()
        self.counts = OrderedDict()
        with tempfile.TemporaryDirectory(prefix="rgbt_panoptic_eval") as tmp:
            pred_folder = os.path.join(tmp, "pred")
            os.makedirs(pred_folder)
            entries = []
            for p in predictions:
                with open(os.path.join(pred_folder, p["file_name"]), "wb") as f:
                    f.write(p["png_string"])
                entries.append({k: v for k, v in p.items() if k != "png_string"})
            if self._keep_dir:
                PathManager.mkdirs(self._keep_dir)
                with PathManager.open(
                    os.path.join(self._keep_dir, "panoptic_predictions.json"), "w"
                ) as f:
                    json.dump({"annotations": entries, "categories": gt_json["categories"]}, f)
            for subset, ids in subsets:
                gt_path = os.path.join(tmp, f"gt_{subset}.json")
                pred_path = os.path.join(tmp, f"pred_{subset}.json")
                subset_gt = dict(
                    gt_json,
                    images=[im for im in gt_json.get("images", []) if im["id"] in ids],
                    annotations=[a for a in gt_json["annotations"] if a["image_id"] in ids],
                )
                with open(gt_path, "w") as f:
                    json.dump(subset_gt, f)
                with open(pred_path, "w") as f:
                    json.dump({"annotations": [e for e in entries if e["image_id"] in ids]}, f)
                key = "panoptic_seg" if subset == "all" else f"panoptic_seg_{subset}"
                results[key], self.counts[subset] = panoptic_quality(
                    gt_path, pred_path, gt_folder, pred_folder, names
                )
        self._num_images = {s: len(ids) for s, ids in subsets}
        self._logger.info(
            f"{self._dataset_name}: PQ {results['panoptic_seg']['PQ']:.2f} over "
            f"{len(predictions)} images"
        )
        return results

    @property
    def num_images(self):
        """Images per evaluated subset (``"all"``, ``"day"``, ``"night"``) of the last
        :meth:`evaluate`."""
        return getattr(self, "_num_images", {})

    def predictions_for_display(self, limit):
        """Up to ``limit`` collected predictions (``image_id``, ``png_string``,
        ``segments_info``) of this process, for the report's example PNG."""
        return self._predictions[:limit]

