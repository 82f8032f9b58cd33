"""Choose the evaluator of a dataset from its metadata."""

import os

from detectron2.data import MetadataCatalog

from .rgbt_sem_seg_evaluation import RGBTSemSegEvaluator

__all__ = ["build_rgbt_evaluator", "report_dir"]


def report_dir(output_dir: str, dataset_name: str, tta: bool = False) -> str:
    """Where ``train_net.py`` writes the reports of ``dataset_name``:
    ``output_dir/inference/<dataset_name>``, or ``output_dir/inference_TTA/<dataset_name>`` for
    the evaluation with test-time augmentation."""
    return os.path.join(output_dir, "inference_TTA" if tta else "inference", dataset_name)


def build_rgbt_evaluator(cfg, dataset_name, output_folder):
    """Evaluator for ``dataset_name`` (used by ``train_net.py``).

    Args:
        cfg (CfgNode): ``TEST.WRITE_REPORTS`` decides whether report files are written.
        dataset_name (str): a registered dataset with ``evaluator_type="rgbt_sem_seg"``.
        output_folder (str): where the reports go.

    Returns:
        RGBTSemSegEvaluator
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type != "rgbt_sem_seg":
        raise NotImplementedError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; "
            "HAPNet-D2 evaluates datasets registered with evaluator_type='rgbt_sem_seg'"
        )
    return RGBTSemSegEvaluator(
        dataset_name, output_dir=output_folder, write_files=cfg.TEST.WRITE_REPORTS
    )
