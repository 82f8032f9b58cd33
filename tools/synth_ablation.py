#!/usr/bin/env python
"""Input strategies of the paper's Table 5 on the built-in synthetic RGB-T data.

Trains the tiny HAPNet with strategy D (RGB to the VFM, RGB+thermal to the CSPD: the paper's),
E (RGB only) and I (thermal only), evaluates each (single-scale) on the synthetic test set and its
day/night subsets, and writes ``summary.json`` and ``table.md`` (laid out like Table 5) into --output.
``--task panoptic`` trains the tiny panoptic model instead (3000 iterations: the quick start's 1800
are cut to fit its 15 minutes) and tabulates PQ (all, things, stuff, day, night) beside the same
model's mIoU.

    python tools/synth_ablation.py --output output/synth_ablation [--task panoptic] [--strategies D E I] [--opts KEY VALUE ...]
"""
import argparse
import json
import os
import sys

from hapnet_d2.data.datasets.register_mfnet import MFNET_CLASSES
from hapnet_d2.modeling.backbone.hapnet_backbone import INPUT_STRATEGIES
from hapnet_d2.config import get_hapnet_cfg_or_exit
from hapnet_d2.utils.runs import REPO_ROOT, load_results, train_and_evaluate

TASKS = {
    # task: (default config, test set)
    "semantic": ("configs/synth/hapnet_tiny.yaml", "synth_rgbt_test"),
    "panoptic": ("configs/synth/hapnet_tiny_panoptic_ablation.yaml", "synth_rgbt_panoptic_test"),
}


def modality_name(modalities):
    return " + ".join({"rgb": "RGB", "thermal": "T"}[m] for m in modalities)


def strategy_row(strategy: str, results: dict) -> dict:
    metrics = results["metrics"]
    return {
        "strategy": strategy,
        "vfm": modality_name(INPUT_STRATEGIES[strategy][0]),
        "cspd": modality_name(INPUT_STRATEGIES[strategy][1]),
        "iou": {c: metrics["sem_seg"].get(f"IoU-{c}") for c in MFNET_CLASSES},
        "mAcc": metrics["sem_seg"]["mACC"],
        "mIoU": metrics["sem_seg"]["mIoU"],
        "mIoU_day": metrics.get("sem_seg_day", {}).get("mIoU"),
        "mIoU_night": metrics.get("sem_seg_night", {}).get("mIoU"),
    }


def panoptic_strategy_row(strategy: str, results: dict) -> dict:
    metrics = results["metrics"]
    pq = metrics["panoptic_seg"]
    return {
        "strategy": strategy,
        "vfm": modality_name(INPUT_STRATEGIES[strategy][0]),
        "cspd": modality_name(INPUT_STRATEGIES[strategy][1]),
        "PQ": pq["PQ"],
        "PQ_th": pq["PQ_th"],
        "PQ_st": pq["PQ_st"],
        "SQ": pq["SQ"],
        "RQ": pq["RQ"],
        "PQ_day": metrics.get("panoptic_seg_day", {}).get("PQ"),
        "PQ_night": metrics.get("panoptic_seg_night", {}).get("PQ"),
        "AP": metrics.get("segm", {}).get("AP"),
        "mIoU": metrics["sem_seg"]["mIoU"],
        "mIoU_night": metrics.get("sem_seg_night", {}).get("mIoU"),
    }


def _fmt(v):
    return "-" if v is None or v != v else f"{v:.1f}"


def panoptic_markdown_table(rows) -> str:
    head = ["Strategy", "VFM", "CSPD", "PQ", "PQ_th", "PQ_st", "SQ", "RQ", "day PQ", "night PQ",
            "mask AP", "mIoU", "night mIoU"]
    keys = ["PQ", "PQ_th", "PQ_st", "SQ", "RQ", "PQ_day", "PQ_night", "AP", "mIoU", "mIoU_night"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["strategy"], r["vfm"], r["cspd"], *(_fmt(r[k]) for k in keys)]) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(rows) -> str:
    fmt = _fmt

    classes = MFNET_CLASSES[1:]  # Table 5 lists the object classes, not "unlabeled"
    head = ["Strategy", "VFM", "CSPD", *classes, "mAcc", "mIoU", "day mIoU", "night mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["strategy"], r["vfm"], r["cspd"], *(fmt(r["iou"][c]) for c in classes),
                 fmt(r["mAcc"]), fmt(r["mIoU"]), fmt(r["mIoU_day"]), fmt(r["mIoU_night"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="semantic")
    parser.add_argument("--output", default=None, help="default: output/synth_ablation[_panoptic]")
    parser.add_argument("--config-file", default=None, help="default: the tiny config of --task")
    parser.add_argument("--strategies", nargs="+", default=None, choices=sorted(INPUT_STRATEGIES),
                        help="default: D E I (semantic), D E (panoptic)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides for every run, KEY VALUE ... (last argument)")
    args = parser.parse_args()
    panoptic = args.task == "panoptic"
    default_config, test_set = TASKS[args.task]
    config_file = args.config_file or default_config
    # train_net.py runs in the checkout: a relative --output is made absolute here, so that it is
    # relative to the directory the command was started from
    output = os.path.abspath(args.output or ("output/synth_ablation_panoptic" if panoptic else "output/synth_ablation"))

    get_hapnet_cfg_or_exit(os.path.join(REPO_ROOT, config_file), args.opts)  # config errors: one line, exit 2
    rows = []
    for strategy in args.strategies or (["D", "E"] if panoptic else ["D", "E", "I"]):
        out = os.path.join(output, f"strategy_{strategy}")
        # single-scale evaluation only: the table compares strategies, TTA would add time, not insight
        opts = ["MODEL.HAPNET.INPUT_STRATEGY", strategy, "TEST.AUG.ENABLED", "False", *args.opts]
        code = train_and_evaluate(config_file, out, opts)
        if code != 0:
            sys.exit(f"training strategy {strategy} failed with exit code {code} (log: {out}/log.txt)")
        row = panoptic_strategy_row if panoptic else strategy_row
        rows.append(row(strategy, load_results(out, test_set)))

    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump({"task": args.task, "config_file": config_file, "opts": args.opts, "rows": rows}, f, indent=2)
    table = panoptic_markdown_table(rows) if panoptic else markdown_table(rows)
    with open(os.path.join(output, "table.md"), "w") as f:
        f.write(table)
    print(table)
    by = {r["strategy"]: r for r in rows}
    if panoptic and {"D", "E"} <= set(by):
        print(f"D - E night PQ: {by['D']['PQ_night'] - by['E']['PQ_night']:+.1f}   "
              f"D - E PQ: {by['D']['PQ'] - by['E']['PQ']:+.1f}")
    elif {"D", "E", "I"} <= set(by):
        print(f"D - E night mIoU: {by['D']['mIoU_night'] - by['E']['mIoU_night']:+.1f}   "
              f"D - I mIoU: {by['D']['mIoU'] - by['I']['mIoU']:+.1f}")


if __name__ == "__main__":
    main()
