"""Evaluation of RGB-T semantic (paper-exact metrics), panoptic (PQ) and instance (mask AP) output."""

from .build import build_rgbt_evaluator, report_dir
from .rgbt_instance_evaluation import RGBTInstanceEvaluator
from .rgbt_panoptic_evaluation import RGBTPanopticEvaluator, panoptic_quality
from .rgbt_sem_seg_evaluation import RGBTSemSegEvaluator, metrics_from_confusion
from .rgbt_universal_evaluation import RGBTUniversalEvaluator

__all__ = [
    "RGBTInstanceEvaluator",
    "RGBTPanopticEvaluator",
    "RGBTSemSegEvaluator",
    "RGBTUniversalEvaluator",
    "build_rgbt_evaluator",
    "metrics_from_confusion",
    "panoptic_quality",
    "report_dir",
]
