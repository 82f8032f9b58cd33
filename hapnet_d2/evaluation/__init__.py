"""Evaluation of RGB-T semantic segmentation (paper-exact metrics and reports)."""

from .build import build_rgbt_evaluator, report_dir
from .rgbt_sem_seg_evaluation import RGBTSemSegEvaluator, metrics_from_confusion

__all__ = ["RGBTSemSegEvaluator", "build_rgbt_evaluator", "metrics_from_confusion", "report_dir"]
