#!/usr/bin/env python
"""Input strategies of the paper's Table 5 on the built-in synthetic RGB-T data.

Trains the tiny HAPNet with strategy D (RGB to the VFM, RGB+thermal to the CSPD: the paper's),
E (RGB only) and I (thermal only), evaluates each (single-scale) on the synthetic test set and its
day/night subsets, and writes ``summary.json`` and ``table.md`` (laid out like Table 5) into --output.

    python tools/synth_ablation.py --output output/synth_ablation [--strategies D E I] [--opts KEY VALUE ...]
"""
import argparse
import json
import os
import sys

from hapnet_d2.data.datasets.register_mfnet import MFNET_CLASSES
from hapnet_d2.modeling.backbone.hapnet_backbone import INPUT_STRATEGIES
from hapnet_d2.utils.runs import load_results, train_and_evaluate

TEST_SET = "synth_rgbt_test"


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


def markdown_table(rows) -> str:
    def fmt(v):
        return "-" if v is None or v != v else f"{v:.1f}"

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
    parser.add_argument("--output", default="output/synth_ablation")
    parser.add_argument("--config-file", default="configs/synth/hapnet_tiny.yaml")
    parser.add_argument("--strategies", nargs="+", default=["D", "E", "I"], choices=sorted(INPUT_STRATEGIES))
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides for every run, KEY VALUE ... (last argument)")
    args = parser.parse_args()

    rows = []
    for strategy in args.strategies:
        out = os.path.join(args.output, f"strategy_{strategy}")
        # single-scale evaluation only: the table compares strategies, TTA would add time, not insight
        opts = ["MODEL.HAPNET.INPUT_STRATEGY", strategy, "TEST.AUG.ENABLED", "False", *args.opts]
        code = train_and_evaluate(args.config_file, out, opts)
        if code != 0:
            sys.exit(f"training strategy {strategy} failed with exit code {code} (log: {out}/log.txt)")
        rows.append(strategy_row(strategy, load_results(out, TEST_SET)))

    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump({"config_file": args.config_file, "opts": args.opts, "rows": rows}, f, indent=2)
    table = markdown_table(rows)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table)
    print(table)
    by = {r["strategy"]: r for r in rows}
    if {"D", "E", "I"} <= set(by):
        print(f"D - E night mIoU: {by['D']['mIoU_night'] - by['E']['mIoU_night']:+.1f}   "
              f"D - I mIoU: {by['D']['mIoU'] - by['I']['mIoU']:+.1f}")


if __name__ == "__main__":
    main()
