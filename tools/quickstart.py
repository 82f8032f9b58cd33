#!/usr/bin/env python
"""`make quickstart`: train and evaluate the tiny HAPNet on the built-in synthetic RGB-T data.

Steps: generate the synthetic dataset if missing (on first use), train
``configs/synth/hapnet_tiny.yaml`` with ``train_net.py`` on the CPU (resuming if interrupted),
evaluate on ``synth_rgbt_test`` (day and night subsets too; also with test-time augmentation when
the config enables ``TEST.AUG``), print the paper-style tables, copy ``results.json`` (and
``results_TTA.json``) to --output, write side-by-side visualisations of a few day and night test pairs
with ``demo/demo.py``, and end with one line giving mIoU and night mIoU.
"""
import argparse
import os
import shutil
import subprocess
import sys

from detectron2.data import DatasetCatalog

import hapnet_d2  # noqa: F401  (registers the synthetic dataset)
from hapnet_d2.config import get_hapnet_cfg
from hapnet_d2.evaluation import report_dir
from hapnet_d2.utils.runs import REPO_ROOT, load_results, train_and_evaluate

TEST_SET = "synth_rgbt_test"


def pick_examples(num_per_condition: int):
    """File names of the first test pairs by day and by night."""
    dicts = DatasetCatalog.get(TEST_SET)
    picked = []
    for condition in ("day", "night"):
        picked += [d["file_name"] for d in dicts if d.get("condition") == condition][:num_per_condition]
    return picked


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/quickstart")
    parser.add_argument("--config-file", default="configs/synth/hapnet_tiny.yaml")
    parser.add_argument("--num-vis", type=int, default=2, help="visualised test pairs per condition")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    out = os.path.abspath(args.output)

    code = train_and_evaluate(args.config_file, out, args.opts)
    if code != 0:
        sys.exit(f"quickstart: training failed with exit code {code}; see {out}/log.txt")
    cfg = get_hapnet_cfg(os.path.join(REPO_ROOT, args.config_file), args.opts)
    tta = cfg.TEST.AUG.ENABLED
    reports = [("results.json", False, "Single-scale")]
    if tta:
        reports.append(("results_TTA.json", True, "Test-time augmentation"))
    for name, with_tta, title in reports:
        folder = report_dir(out, TEST_SET, with_tta)
        shutil.copy(os.path.join(folder, "results.json"), os.path.join(out, name))
        print(f"{title} evaluation ({folder}):")
        with open(os.path.join(folder, "table.md")) as f:
            print(f.read())

    examples = pick_examples(args.num_vis)
    vis_dir = os.path.join(out, "visualizations")
    subprocess.check_call(
        [sys.executable, os.path.join(REPO_ROOT, "demo", "demo.py"), "--config-file", args.config_file,
         "--rgbt", *examples, "--output", vis_dir, "--dataset-name", TEST_SET,
         "--opts", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), *args.opts],
        cwd=REPO_ROOT,
    )
    single = summary(load_results(out, TEST_SET)["metrics"])
    if tta:
        scales = "/".join(f"{s:g}" for s in cfg.TEST.AUG.SCALES) + (" + flip" if cfg.TEST.AUG.FLIP else "")
        headline = f"{summary(load_results(out, TEST_SET, tta=True)['metrics'])} with test-time augmentation " \
                   f"(scales {scales}); single-scale {single}"
    else:
        headline = single
    print(f"quickstart: synthetic test {headline}; results in {out}/results*.json, visualisations in {vis_dir}")


def summary(metrics) -> str:
    """'mIoU M, night mIoU N (day D)' from the evaluator's metrics."""
    night = metrics.get("sem_seg_night", {}).get("mIoU", float("nan"))
    day = metrics.get("sem_seg_day", {}).get("mIoU", float("nan"))
    return f"mIoU {metrics['sem_seg']['mIoU']:.1f}, night mIoU {night:.1f} (day {day:.1f})"


if __name__ == "__main__":
    main()
