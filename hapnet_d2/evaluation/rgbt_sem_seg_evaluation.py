"""Semantic segmentation scores as in HAPNet's tables, overall and per day/night subset.

What Detectron2's ``SemSegEvaluator`` lacks and this adds: ground truth read through the
dataset's own label reader (e.g. NYU's id shift), the day and night subsets of MFNet and KP,
and the paper-style reports.

Metric definitions (conf[gt, pred] counts pixels; pixels labelled 255 are ignored):

* per class ``ACC = TP / (TP + FN)`` and ``IoU = TP / (TP + FP + FN)``, in percent;
* ``mACC`` and ``mIoU`` average over all classes, background/unlabeled included (the note
  of the paper's Table 1). A class without ground-truth pixels has no ACC, a class absent
  from both prediction and ground truth has no IoU: these values are NaN and left out of
  the means (as mmsegmentation and Detectron2 do);
* ``pACC`` = correctly labelled pixels / all labelled pixels; ``fwIoU`` = IoU weighted by
  ground-truth frequency.
"""

import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.io import RGBTDataError, read_label
from .reports import write_reports

__all__ = ["RGBTSemSegEvaluator", "metrics_from_confusion"]

_SUBSETS = ("day", "night")


def metrics_from_confusion(conf, class_names):
    """Scores from a confusion matrix.

    Args:
        conf (np.ndarray): ``[K,K]`` pixel counts, rows = ground truth, columns = prediction.
        class_names (list[str]): the K class names.

    Returns:
        dict: ``mIoU``, ``fwIoU``, ``mACC``, ``pACC`` and per class ``IoU-<name>``,
        ``ACC-<name>``, all in percent; undefined values are NaN (see the module doc).
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix {conf.shape} does not fit {len(class_names)} classes")
    tp = np.diag(conf)
    gt = conf.sum(axis=1)
    union = gt + conf.sum(axis=0) - tp
    acc = np.full(len(tp), np.nan)
    iou = np.full(len(tp), np.nan)
    np.divide(tp, gt, out=acc, where=gt > 0)
    np.divide(tp, union, out=iou, where=union > 0)
    total = gt.sum()
    res = OrderedDict()
    res["mIoU"] = 100 * np.nanmean(iou) if np.any(union > 0) else np.nan
    res["fwIoU"] = 100 * np.nansum(iou * gt) / total if total > 0 else np.nan
    for name, value in zip(class_names, iou):
        res[f"IoU-{name}"] = 100 * value
    res["mACC"] = 100 * np.nanmean(acc) if total > 0 else np.nan
    res["pACC"] = 100 * tp.sum() / total if total > 0 else np.nan
    for name, value in zip(class_names, acc):
        res[f"ACC-{name}"] = 100 * value
    return res


class RGBTSemSegEvaluator(DatasetEvaluator):
    """Accumulate a confusion matrix over a dataset (across processes) and score it."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, *, write_files=True):
        """
        Args:
            dataset_name (str): a registered dataset; its metadata gives ``stuff_classes``,
                ``ignore_label`` and ``has_day_night``.
            distributed (bool): gather the confusion matrices of all processes.
            output_dir (str or None): where ``results.json``, ``metrics.csv``, ``table.md``
                and ``confusion_matrix.png`` go (None: write nothing).
            write_files (bool): False writes no files even with an output_dir.
        """
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = meta.get("ignore_label", 255)
        self._has_day_night = meta.get("has_day_night", False)
        self._distributed = distributed
        self._output_dir = output_dir if write_files else None
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        k = self._num_classes
        self._conf = {s: np.zeros((k, k), dtype=np.int64) for s in ("all",) + _SUBSETS}
        self._num_images = {s: 0 for s in ("all",) + _SUBSETS}

    def _ground_truth(self, input):
        if "sem_seg" in input:
            gt = input["sem_seg"]
            return gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
        return read_label(input["sem_seg_file_name"], input.get("label_offset", 0))

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): mapper outputs (``sem_seg`` [H,W] or ``sem_seg_file_name``,
                optional ``condition``).
            outputs (list[dict]): model outputs with ``sem_seg`` scores ``[K,H,W]``.
        """
        for input, output in zip(inputs, outputs):
            source = input.get("sem_seg_file_name") or input.get("file_name", "<input>")
            scores = output["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"{source}: prediction of shape {tuple(scores.shape)}, expected "
                    f"[{self._num_classes},H,W] for {self._dataset_name}"
                )
            pred = scores.argmax(dim=0).cpu().numpy()
            gt = self._ground_truth(input).astype(np.int64)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{source}: prediction {pred.shape} and ground truth {gt.shape} differ in size"
                )
            valid = gt != self._ignore_label
            bad = np.unique(gt[valid & (gt >= self._num_classes)])
            if bad.size:
                raise RGBTDataError(
                    source,
                    f"label ids {bad.tolist()} outside 0..{self._num_classes - 1} and not 255",
                )
            k = self._num_classes
            conf = np.bincount(k * gt[valid] + pred[valid], minlength=k * k).reshape(k, k)
            subsets = ["all"]
            if self._has_day_night and input.get("condition") in _SUBSETS:
                subsets.append(input["condition"])
            for subset in subsets:
                self._conf[subset] += conf
                self._num_images[subset] += 1

    def _gathered(self):
        if not self._distributed:
            return self._conf, self._num_images
        comm.synchronize()
        parts = comm.all_gather((self._conf, self._num_images))
        conf = {s: sum(p[0][s] for p in parts) for s in self._conf}
        num_images = {s: sum(p[1][s] for p in parts) for s in self._num_images}
        return conf, num_images

    def evaluate(self):
        """
        Returns:
            dict or None: ``{"sem_seg": metrics}`` plus ``"sem_seg_day"`` and
            ``"sem_seg_night"`` for datasets with day/night subsets that were seen; None on
            processes other than the main one.
        """
        conf, num_images = self._gathered()
        if self._distributed and not comm.is_main_process():
            return None
        results = OrderedDict(sem_seg=metrics_from_confusion(conf["all"], self._class_names))
        reported = {"all": conf["all"]}
        if self._has_day_night:
            for subset in _SUBSETS:
                if num_images[subset] > 0:
                    results[f"sem_seg_{subset}"] = metrics_from_confusion(
                        conf[subset], self._class_names
                    )
                    reported[subset] = conf[subset]
        self._logger.info(f"{self._dataset_name}: {num_images} images, results {dict(results)}")
        if self._output_dir:
            write_reports(self._output_dir, results, reported, num_images, self._class_names)
        return results
