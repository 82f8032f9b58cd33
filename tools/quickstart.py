#!/usr/bin/env python
"""`make quickstart`: train and evaluate the tiny HAPNet on the built-in synthetic RGB-T data.

Steps: generate the synthetic dataset if missing (on first use), train
``configs/synth/hapnet_tiny.yaml`` with ``train_net.py`` on the CPU (resuming if interrupted),
evaluate on ``synth_rgbt_test`` (day and night subsets too), print the paper-style table, copy
``results.json`` to --output, write side-by-side visualisations of a few day and night test pairs
with ``demo/demo.py``, and end with one line giving mIoU and night mIoU.
"""
import argparse
import os
import shutil
import subprocess
import sys

from detectron2.data import DatasetCatalog

import hapnet_d2  # noqa: F401  (registers the synthetic dataset)
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
    results = load_results(out, TEST_SET)
    report_dir = os.path.join(out, "inference", TEST_SET)
    shutil.copy(os.path.join(report_dir, "results.json"), os.path.join(out, "results.json"))
    with open(os.path.join(report_dir, "table.md")) as f:
        print(f.read())

    examples = pick_examples(args.num_vis)
    vis_dir = os.path.join(out, "visualizations")
    subprocess.check_call(
        [sys.executable, os.path.join(REPO_ROOT, "demo", "demo.py"), "--config-file", args.config_file,
         "--rgbt", *examples, "--output", vis_dir, "--dataset-name", TEST_SET,
         "--opts", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), *args.opts],
        cwd=REPO_ROOT,
    )
    metrics = results["metrics"]
    night = metrics.get("sem_seg_night", {}).get("mIoU", float("nan"))
    day = metrics.get("sem_seg_day", {}).get("mIoU", float("nan"))
    print(f"quickstart: synthetic test mIoU {metrics['sem_seg']['mIoU']:.1f}, night mIoU {night:.1f} "
          f"(day {day:.1f}); results in {out}/results.json, visualisations in {vis_dir}")


if __name__ == "__main__":
    main()
