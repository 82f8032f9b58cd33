"""Files written next to the evaluation results: JSON, CSV, paper-style table, confusion PNG."""

import csv
import json
import math
import os

import numpy as np
from detectron2.utils.file_io import PathManager

__all__ = ["write_reports", "paper_table"]

# classes the paper's tables leave out (they still count in the means)
_OMITTED_IN_TABLE = {"unlabeled", "unlabelled"}
_SUBSET_NAMES = {"sem_seg": "all", "sem_seg_day": "day", "sem_seg_night": "night"}


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    value = float(value)
    return None if math.isnan(value) else value


def _fmt(value):
    return "-" if math.isnan(value) else f"{value:.1f}"


def paper_table(results, class_names, num_images):
    """A markdown table laid out like the paper's Table 1.

    Args:
        results (dict): ``{"sem_seg": metrics, "sem_seg_day": ..., ...}``.
        class_names (list[str]): all classes; "unlabeled" is left out of the columns as in
            the paper (it still counts in mAcc and mIoU).
        num_images (dict): images per subset (``"all"``, ``"day"``, ``"night"``).

    Returns:
        str: the table, one row per subset, values in percent with one decimal.
    """
    shown = [c for c in class_names if c.lower() not in _OMITTED_IN_TABLE]
    header = ["Subset"] + [f"{c} {m}" for c in shown for m in ("Acc", "IoU")]
    header += ["mAcc", "mIoU", "pAcc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, metrics in results.items():
        subset = _SUBSET_NAMES.get(key, key)
        row = [f"{subset} ({num_images.get(subset, 0)} images)"]
        for c in shown:
            row += [_fmt(metrics[f"ACC-{c}"]), _fmt(metrics[f"IoU-{c}"])]
        row += [_fmt(metrics["mACC"]), _fmt(metrics["mIoU"]), _fmt(metrics["pACC"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path, results, class_names):
    with PathManager.open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["subset", "class", "ACC", "IoU"])
        for key, metrics in results.items():
            subset = _SUBSET_NAMES.get(key, key)
            for c in class_names:
                writer.writerow([subset, c, metrics[f"ACC-{c}"], metrics[f"IoU-{c}"]])
            writer.writerow([subset, "mean", metrics["mACC"], metrics["mIoU"]])
            writer.writerow([subset, "pixel", metrics["pACC"], ""])


def _write_confusion_png(path, conf, class_names, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = conf.sum(axis=1, keepdims=True)
    recall = np.divide(conf, rows, out=np.zeros(conf.shape), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * k, 1.5 + 0.5 * k))
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), class_names, rotation=90)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                color = "white" if recall[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{recall[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    with PathManager.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def write_reports(output_dir, results, confusions, num_images, class_names):
    """Write ``results.json``, ``metrics.csv``, ``table.md`` and ``confusion_matrix.png``.

    Args:
        output_dir (str): target folder (created if needed).
        results (dict): ``{"sem_seg": metrics, ...}`` from the evaluator.
        confusions (dict[str, np.ndarray]): ``[K,K]`` matrix (rows = ground truth) per
            subset (``"all"``, ``"day"``, ``"night"``); the PNG shows the row-normalised
            ``"all"`` matrix.
        num_images (dict): images per subset.
        class_names (list[str]): the K class names.
    """
    PathManager.mkdirs(output_dir)
    with PathManager.open(os.path.join(output_dir, "results.json"), "w") as f:
        payload = {
            "metrics": _json_safe(results),
            "num_images": {k: int(v) for k, v in num_images.items()},
            "class_names": list(class_names),
            "confusion_matrix": {k: v.tolist() for k, v in confusions.items()},
        }
        json.dump(payload, f, indent=2)
    _write_csv(os.path.join(output_dir, "metrics.csv"), results, class_names)
    with PathManager.open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write(paper_table(results, class_names, num_images))
    _write_confusion_png(
        os.path.join(output_dir, "confusion_matrix.png"),
        confusions["all"],
        class_names,
        "confusion matrix (rows: ground truth, normalised)",
    )
