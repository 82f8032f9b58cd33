#!/usr/bin/env python
"""`make quickstart` / `make quickstart-panoptic`: train and evaluate the tiny HAPNet on the
built-in synthetic RGB-T data.

Steps: generate the synthetic dataset if missing (on first use), train
``configs/synth/hapnet_tiny.yaml`` with ``train_net.py`` on the CPU (resuming if interrupted),
evaluate on ``synth_rgbt_test`` (day and night subsets too; also with test-time augmentation when
the config enables ``TEST.AUG``), print the paper-style tables, copy ``results.json`` (and
``results_TTA.json``) to --output, write side-by-side visualisations of a few day and night test pairs
with ``demo/demo.py``, and end with one line giving mIoU and night mIoU.

``--task panoptic`` does the same with ``configs/synth/hapnet_tiny_panoptic.yaml`` on
``synth_rgbt_panoptic_test``: PQ/SQ/RQ (all, things, stuff; day and night), COCO instance AP and the
same model's mIoU, ending with one line ``quickstart-panoptic: synthetic test PQ ..., night PQ ...``.
"""
import argparse
import os
import shutil
import sys

import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.data import DatasetCatalog

from hapnet_d2.config import get_hapnet_cfg_or_exit
from hapnet_d2.evaluation import report_dir
from hapnet_d2.utils.runs import REPO_ROOT, load_results, run_child, train_and_evaluate

TASKS = {
    # task: (default config, test set, name in the final line)
    "semantic": ("configs/synth/hapnet_tiny.yaml", "synth_rgbt_test", "quickstart"),
    "panoptic": ("configs/synth/hapnet_tiny_panoptic.yaml", "synth_rgbt_panoptic_test", "quickstart-panoptic"),
}


def pick_examples(test_set: str, num_per_condition: int):
    """File names of the first test pairs by day and by night."""
    dicts = DatasetCatalog.get(test_set)
    picked = []
    for condition in ("day", "night"):
        picked += [d["file_name"] for d in dicts if d.get("condition") == condition][:num_per_condition]
    return picked


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="semantic")
    parser.add_argument("--output", default=None, help="default: output/<quickstart or quickstart-panoptic>")
    parser.add_argument("--config-file", default=None, help="default: the tiny config of --task")
    parser.add_argument("--num-vis", type=int, default=2, help="visualised test pairs per condition")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    default_config, test_set, name = TASKS[args.task]
    config_file = args.config_file or default_config
    out = os.path.abspath(args.output or os.path.join("output", name))

    # a config error (e.g. a key typo in the overrides) is one line and exit code 2, before training
    cfg = get_hapnet_cfg_or_exit(os.path.join(REPO_ROOT, config_file), args.opts)
    code = train_and_evaluate(config_file, out, args.opts)
    if code != 0:
        sys.exit(f"{name}: training failed with exit code {code}; see {out}/log.txt")
    tta = cfg.TEST.AUG.ENABLED
    reports = [("results.json", False, "Single-scale")]
    if tta:
        reports.append(("results_TTA.json", True, "Test-time augmentation"))
    for report, with_tta, title in reports:
        folder = report_dir(out, test_set, with_tta)
        shutil.copy(os.path.join(folder, "results.json"), os.path.join(out, report))
        print(f"{title} evaluation ({folder}):")
        with open(os.path.join(folder, "table.md")) as f:
            print(f.read())

    examples = pick_examples(test_set, args.num_vis)
    vis_dir = os.path.join(out, "visualizations")
    code = run_child(
        [sys.executable, os.path.join(REPO_ROOT, "demo", "demo.py"), "--config-file", config_file,
         "--rgbt", *examples, "--output", vis_dir, "--dataset-name", test_set,
         "--opts", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), *args.opts],
        cwd=REPO_ROOT,
    )
    if code != 0:
        sys.exit(f"{name}: the demo (visualisations) failed with exit code {code}; its messages are above")
    if args.task == "panoptic":
        metrics = load_results(out, test_set)["metrics"]
        print(f"{name}: synthetic test {panoptic_summary(metrics)}; results in {out}/results.json, "
              f"visualisations in {vis_dir}")
        return
    single = summary(load_results(out, test_set)["metrics"])
    if tta:
        scales = "/".join(f"{s:g}" for s in cfg.TEST.AUG.SCALES) + (" + flip" if cfg.TEST.AUG.FLIP else "")
        headline = f"{summary(load_results(out, test_set, tta=True)['metrics'])} with test-time augmentation " \
                   f"(scales {scales}); single-scale {single}"
    else:
        headline = single
    print(f"{name}: synthetic test {headline}; results in {out}/results*.json, visualisations in {vis_dir}")


def _fmt(value) -> str:
    """One decimal, or '-' for an undefined value (null in results.json, or NaN)."""
    return "-" if value is None or value != value else f"{value:.1f}"


def summary(metrics) -> str:
    """'mIoU M, night mIoU N (day D)' from the evaluator's metrics ('-' where undefined)."""
    night = metrics.get("sem_seg_night", {}).get("mIoU")
    day = metrics.get("sem_seg_day", {}).get("mIoU")
    return f"mIoU {_fmt(metrics.get('sem_seg', {}).get('mIoU'))}, night mIoU {_fmt(night)} (day {_fmt(day)})"


def panoptic_summary(metrics) -> str:
    """'PQ P, night PQ N (day D), PQ_th T, PQ_st S, AP A, mIoU M, night mIoU N' from the metrics of
    the panoptic evaluation."""
    f = _fmt  # undefined values (no thing or stuff present) are null in results.json
    pq = metrics["panoptic_seg"]
    night = metrics.get("panoptic_seg_night", {}).get("PQ")
    day = metrics.get("panoptic_seg_day", {}).get("PQ")
    ap = metrics.get("segm", {}).get("AP")
    return (f"PQ {f(pq['PQ'])}, night PQ {f(night)} (day {f(day)}), PQ_th {f(pq.get('PQ_th'))}, "
            f"PQ_st {f(pq.get('PQ_st'))}, SQ {f(pq['SQ'])}, RQ {f(pq['RQ'])}, mask AP {f(ap)}; {summary(metrics)}")


if __name__ == "__main__":
    main()
