"""One evaluation of the three outputs of a panoptic HAPNet: PQ, mask AP and mIoU, by day and night.

:class:`RGBTUniversalEvaluator` runs :class:`RGBTPanopticEvaluator` (PQ/SQ/RQ through
panopticapi), :class:`RGBTInstanceEvaluator` (COCO mask AP through pycocotools) and
:class:`RGBTSemSegEvaluator` (mIoU and the paper's semantic metrics) on the same predictions, and
writes one set of reports: ``results.json`` (all metrics), ``table.md`` (the panoptic table, then
the semantic one), ``metrics.csv`` and ``panoptic_metrics.csv``, ``confusion_matrix.png`` and
``panoptic_pq_per_class.png``.
"""

import csv
import json
import math
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .reports import _json_safe
from .rgbt_instance_evaluation import RGBTInstanceEvaluator
from .rgbt_panoptic_evaluation import RGBTPanopticEvaluator
from .rgbt_sem_seg_evaluation import RGBTSemSegEvaluator

__all__ = ["RGBTUniversalEvaluator", "panoptic_table"]

_SUBSETS = (("all", ""), ("day", "_day"), ("night", "_night"))


def _fmt(value):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def panoptic_table(results, class_names, thing_classes, num_images):
    """Markdown tables: PQ/SQ/RQ (all, things, stuff), mask AP and mIoU per subset, then PQ per class.

    Args:
        results (dict): ``panoptic_seg[_day|_night]``, ``segm[_day|_night]``, ``sem_seg[...]``.
        class_names (list[str]): all classes; thing_classes: the thing subset.
        num_images (dict): images per subset.
    """
    head = ["Subset", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "mask AP", "mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for subset, suffix in _SUBSETS:
        pq = results.get("panoptic_seg" + suffix)
        if pq is None:
            continue
        row = [f"{subset} ({num_images.get(subset, 0)} images)"]
        row += [_fmt(pq.get(k)) for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")]
        row.append(_fmt(results.get("segm" + suffix, {}).get("AP")))
        row.append(_fmt(results.get("sem_seg" + suffix, {}).get("mIoU")))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| Class | thing | PQ | PQ day | PQ night | SQ | RQ | mask AP |", "|---|---|---|---|---|---|---|---|"]
    for name in class_names:
        pq = results.get("panoptic_seg", {})
        lines.append(
            "| " + " | ".join([
                name, "yes" if name in thing_classes else "no", _fmt(pq.get(f"PQ-{name}")),
                _fmt(results.get("panoptic_seg_day", {}).get(f"PQ-{name}")),
                _fmt(results.get("panoptic_seg_night", {}).get(f"PQ-{name}")),
                _fmt(pq.get(f"SQ-{name}")), _fmt(pq.get(f"RQ-{name}")),
                _fmt(results.get("segm", {}).get(f"AP-{name}")),
            ]) + " |"
        )
    return "\n".join(lines) + "\n"


def _write_pq_png(path, results, class_names):
    """Bar chart of PQ per class, all / day / night."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(class_names), 3.2), dpi=100)
    x = np.arange(len(class_names))
    for k, (subset, suffix) in enumerate(_SUBSETS):
        pq = results.get("panoptic_seg" + suffix)
        if pq is None:
            continue
        values = [pq.get(f"PQ-{c}", float("nan")) for c in class_names]
        ax.bar(x + (k - 1) * 0.27, np.nan_to_num(values), width=0.27, label=subset)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("PQ")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("panoptic quality per class")
    fig.tight_layout()
    with PathManager.open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


class RGBTUniversalEvaluator(DatasetEvaluator):
    """PQ/SQ/RQ, mask AP and mIoU of a panoptic RGB-T dataset (all / day / night), one report."""

    def __init__(self, dataset_name, output_dir=None, *, instance_on=True, semantic_on=True, write_files=True):
        """
        Args:
            dataset_name (str): a registered panoptic RGB-T dataset (``evaluator_type="rgbt_panoptic"``).
            output_dir (str or None): where the reports go (None: nowhere).
            instance_on, semantic_on (bool): whether the model's ``"instances"`` / ``"sem_seg"``
                outputs are scored too.
            write_files (bool): write the report files.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir if write_files else None
        self._panoptic = RGBTPanopticEvaluator(dataset_name, output_dir=self._output_dir)
        self._instance = RGBTInstanceEvaluator(dataset_name) if instance_on else None
        self._semantic = (
            RGBTSemSegEvaluator(dataset_name, output_dir=output_dir, write_files=write_files)
            if semantic_on else None
        )

    def _parts(self):
        return [e for e in (self._panoptic, self._instance, self._semantic) if e is not None]

    def reset(self):
        for e in self._parts():
            e.reset()

    def process(self, inputs, outputs):
        for e in self._parts():
            e.process(inputs, outputs)

    def evaluate(self):
        """
        Returns:
            dict: ``panoptic_seg[_day|_night]``, ``segm[_day|_night]``, ``sem_seg[_day|_night]``.
        """
        results = OrderedDict()
        for e in self._parts():
            part = e.evaluate()
            if part:
                results.update(part)
        if not comm.is_main_process():
            return None
        if self._output_dir and "panoptic_seg" in results:
            self._write_reports(results)
        return results

    def _write_reports(self, results):
        meta = MetadataCatalog.get(self._dataset_name)
        out = self._output_dir
        PathManager.mkdirs(out)
        num_images = dict(self._panoptic.num_images)
        path = os.path.join(out, "results.json")
        payload = {}
        if PathManager.exists(path):  # the semantic evaluator's (confusion matrices, ...)
            with PathManager.open(path) as f:
                payload = json.load(f)
        payload["metrics"] = _json_safe(results)
        payload["num_images"] = {k: int(v) for k, v in num_images.items()}
        payload["class_names"] = list(meta.stuff_classes)
        payload["thing_classes"] = list(meta.thing_classes)
        payload["panoptic_counts"] = self._panoptic.counts
        with PathManager.open(path, "w") as f:
            json.dump(payload, f, indent=2)
        table = panoptic_table(results, meta.stuff_classes, meta.thing_classes, num_images)
        semantic_table = ""
        table_path = os.path.join(out, "table.md")
        if PathManager.exists(table_path):
            with PathManager.open(table_path) as f:
                semantic_table = f.read()
        with PathManager.open(table_path, "w") as f:
            f.write(table + ("\nSemantic segmentation (same model):\n\n" + semantic_table if semantic_table else ""))
        with PathManager.open(os.path.join(out, "panoptic_metrics.csv"), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["subset", "class", "PQ", "SQ", "RQ", "TP", "FP", "FN"])
            for subset, suffix in _SUBSETS:
                pq = results.get("panoptic_seg" + suffix)
                if pq is None:
                    continue
                writer.writerow([subset, "all", pq["PQ"], pq["SQ"], pq["RQ"], "", "", ""])
                counts = self._panoptic.counts.get(subset, {})
                for c in meta.stuff_classes:
                    n = counts.get(c, {})
                    writer.writerow([subset, c, pq.get(f"PQ-{c}"), pq.get(f"SQ-{c}"), pq.get(f"RQ-{c}"),
                                     n.get("TP"), n.get("FP"), n.get("FN")])
        _write_pq_png(os.path.join(out, "panoptic_pq_per_class.png"), results, list(meta.stuff_classes))
