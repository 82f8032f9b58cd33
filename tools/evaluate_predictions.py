#!/usr/bin/env python
"""Score predictions written by any method against a registered RGB-T dataset, with the
evaluators HAPNet-D2 uses in training (the paper's semantic metrics; PQ/SQ/RQ through
panopticapi), day and night subsets included.

--predictions is either
  * a folder of semantic label PNGs (class ids, the prediction's size = the label's), one per
    image, named by the image id (the stem of the dataset's label/image file), or
  * a COCO panoptic predictions JSON (``annotations`` with ``image_id``, ``file_name``,
    ``segments_info`` in the dataset's category ids) whose PNGs lie in the folder of the same
    stem beside it (COCO's habit: pred.json + pred/).

Prints the table and writes results.json, table.md and the other reports into --output.

    python tools/evaluate_predictions.py --dataset-name mfnet_rgbt_test --predictions other_method/labels
    python tools/evaluate_predictions.py --dataset-name synth_rgbt_panoptic_test --predictions pred.json
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.data import DatasetCatalog, MetadataCatalog

from hapnet_d2.data.io import RGBTDataError, read_label
from hapnet_d2.data.panoptic_format import read_panoptic_png
from hapnet_d2.evaluation import RGBTSemSegEvaluator, RGBTUniversalEvaluator


def semantic_outputs(dicts, folder, num_classes):
    """(input, output) pairs from label PNGs named ``<image_id>.png``."""
    for d in dicts:
        path = os.path.join(folder, f"{d['image_id']}.png")
        label = read_label(path)
        bad = np.unique(label[label >= num_classes])
        if bad.size:
            raise RGBTDataError(path, f"predicted ids {bad.tolist()} are not classes 0..{num_classes - 1}")
        scores = torch.nn.functional.one_hot(torch.from_numpy(label).long(), num_classes).permute(2, 0, 1)
        yield d, {"sem_seg": scores}


def panoptic_outputs(dicts, json_path, metadata):
    """(input, output) pairs from a COCO panoptic predictions JSON and its PNG folder."""
    try:
        with open(json_path) as f:
            annotations = {str(a["image_id"]): a for a in json.load(f)["annotations"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RGBTDataError(json_path, f"not a COCO panoptic predictions JSON ({e})") from None
    folder = os.path.splitext(json_path)[0]
    contiguous = metadata.stuff_dataset_id_to_contiguous_id
    things = set(metadata.thing_dataset_id_to_contiguous_id)
    for d in dicts:
        ann = annotations.get(str(d["image_id"]))
        if ann is None:
            raise RGBTDataError(json_path, f"no prediction for image {d['image_id']!r}")
        png = os.path.join(folder, ann["file_name"])
        ids = read_panoptic_png(png)
        if (d.get("height"), d.get("width")) != (None, None) and ids.shape != (d["height"], d["width"]):
            raise RGBTDataError(png, f"size {ids.shape[1]}x{ids.shape[0]} (WxH), the image is {d['width']}x{d['height']}")
        segments = []
        for s in ann["segments_info"]:
            if s["category_id"] not in contiguous:
                raise RGBTDataError(json_path, f"image {d['image_id']!r}: unknown category {s['category_id']}")
            segments.append({"id": s["id"], "category_id": contiguous[s["category_id"]], "isthing": s["category_id"] in things})
        yield d, {"panoptic_seg": (torch.from_numpy(ids), segments)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-name", required=True, help="a registered dataset, e.g. mfnet_rgbt_test")
    parser.add_argument("--predictions", required=True, help="label PNG folder, or a COCO panoptic JSON")
    parser.add_argument("--output", default=None, help="report folder (default: beside the predictions)")
    args = parser.parse_args(argv)
    if args.dataset_name not in DatasetCatalog.list():
        parser.error(f"dataset {args.dataset_name!r} is not registered")
    panoptic = args.predictions.endswith(".json")
    if not (os.path.isfile(args.predictions) if panoptic else os.path.isdir(args.predictions)):
        parser.error(f"{args.predictions}: no such {'file' if panoptic else 'folder'}")
    meta = MetadataCatalog.get(args.dataset_name)
    if panoptic and meta.get("evaluator_type") != "rgbt_panoptic":
        parser.error(f"dataset {args.dataset_name!r} has no panoptic ground truth (use a *_panoptic_* dataset)")
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.predictions)), f"eval_{args.dataset_name}")
    try:
        dicts = DatasetCatalog.get(args.dataset_name)
        if panoptic:
            evaluator = RGBTUniversalEvaluator(args.dataset_name, output, instance_on=False, semantic_on=False)
            pairs = panoptic_outputs(dicts, args.predictions, meta)
        else:
            evaluator = RGBTSemSegEvaluator(args.dataset_name, distributed=False, output_dir=output)
            pairs = semantic_outputs(dicts, args.predictions, len(meta.stuff_classes))
        evaluator.reset()
        for d, out in pairs:
            evaluator.process([d], [out])
        evaluator.evaluate()
    except RGBTDataError as e:
        sys.exit(f"evaluate_predictions: {e}")
    with open(os.path.join(output, "table.md")) as f:
        print(f.read())
    print(f"evaluate_predictions: results in {os.path.join(output, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
