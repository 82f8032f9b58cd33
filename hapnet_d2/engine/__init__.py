"""Training engine: Detectron2 trainer with HAPNet's solver, AMP and checkpoints."""

from .train_loop import AutocastTrainer, resolve_amp_dtype
from .trainer import Trainer, share_cpu_threads_between_processes

__all__ = [
    "AutocastTrainer",
    "Trainer",
    "resolve_amp_dtype",
    "share_cpu_threads_between_processes",
]
