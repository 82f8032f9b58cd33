"""Optimiser (layer-wise lr decay) and learning-rate schedule of HAPNet."""

from .build import build_lr_scheduler, build_optimizer, get_layer_id, get_optimizer_param_groups

__all__ = ["build_optimizer", "build_lr_scheduler", "get_layer_id", "get_optimizer_param_groups"]
