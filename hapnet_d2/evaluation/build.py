"""Choose the evaluator of a dataset from its metadata."""

import os

from detectron2.data import MetadataCatalog

from .rgbt_sem_seg_evaluation import RGBTSemSegEvaluator
from .rgbt_universal_evaluation import RGBTUniversalEvaluator

__all__ = ["build_rgbt_evaluator", "report_dir"]


def report_dir(output_dir: str, dataset_name: str, tta: bool = False) -> str:
    """Where ``train_net.py`` writes the reports of ``dataset_name``:
    ``output_dir/inference/<dataset_name>``, or ``output_dir/inference_TTA/<dataset_name>`` for
    the evaluation with test-time augmentation."""
    return os.path.join(output_dir, "inference_TTA" if tta else "inference", dataset_name)


def build_rgbt_evaluator(cfg, dataset_name, output_folder):
    """Evaluator for ``dataset_name`` (used by ``train_net.py``).

    Args:
        cfg (CfgNode): ``TEST.WRITE_REPORTS`` decides whether report files are written;
            ``MODEL.MASK_FORMER.TEST.{INSTANCE,SEMANTIC}_ON`` which outputs of a panoptic model
            are scored besides PQ.
        dataset_name (str): a registered dataset with ``evaluator_type`` "rgbt_sem_seg" or
            "rgbt_panoptic".
        output_folder (str): where the reports go.

    Returns:
        RGBTSemSegEvaluator or RGBTUniversalEvaluator
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "rgbt_panoptic" and cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON:
        test = cfg.MODEL.MASK_FORMER.TEST
        return RGBTUniversalEvaluator(
            dataset_name, output_folder, instance_on=test.INSTANCE_ON, semantic_on=test.SEMANTIC_ON,
            write_files=cfg.TEST.WRITE_REPORTS,
        )
    if evaluator_type not in ("rgbt_sem_seg", "rgbt_panoptic"):
        raise NotImplementedError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; "
            "HAPNet-D2 evaluates datasets registered with evaluator_type 'rgbt_sem_seg' or 'rgbt_panoptic'"
        )
    # a panoptic dataset evaluated with a semantic-only model: mIoU only
    return RGBTSemSegEvaluator(
        dataset_name, output_dir=output_folder, write_files=cfg.TEST.WRITE_REPORTS
    )
