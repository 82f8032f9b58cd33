"""HAPNet's trainer: Detectron2's DefaultTrainer with HAPNet's data, solver, AMP and checkpoints."""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.data import build_dataset_mapper
from hapnet_d2.evaluation import build_rgbt_evaluator, report_dir
from hapnet_d2.solver import build_lr_scheduler, build_optimizer
from hapnet_d2.test_time_augmentation import SemanticSegmentorWithTTA

from .model_selection import SelectionCheckpointer, TestSelectedModel, check_model_selection, selection_metric
from .train_loop import AutocastTrainer, resolve_amp_dtype

__all__ = ["Trainer", "share_cpu_threads_between_processes"]


def share_cpu_threads_between_processes(cfg) -> int:
    """
    On CPU, split the intra-op threads between the training processes of this machine, so that
    ``--num-gpus N`` CPU processes do not each start one thread per core.

    Returns:
        The number of threads this process now uses.
    """
    local_processes = comm.get_local_size()
    if cfg.MODEL.DEVICE == "cpu" and local_processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    return torch.get_num_threads()


def _model_device_type(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


class Trainer(DefaultTrainer):
    """
    :class:`DefaultTrainer` for HAPNet.

    Differences from Detectron2's: RGB-thermal data loaders and evaluator, the layer-wise decay
    optimiser and warm-up + poly schedule of :mod:`hapnet_d2.solver`, mixed precision on CPU
    (bfloat16) as well as CUDA (float16 with loss scaling), DistributedDataParallel without
    device ids for CPU processes (gloo), atomic checkpoints loaded with ``weights_only``, and
    test-time augmentation.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): a config with HAPNet's keys.
        """
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        device_type = _model_device_type(model)
        # DDP rejects device ids for CPU modules; Detectron2's default passes [local_rank]
        device_ids = [comm.get_local_rank()] if device_type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        if cfg.SOLVER.AMP.ENABLED:
            precision = resolve_amp_dtype(cfg.SOLVER.AMP.DTYPE, device_type)
            self._trainer = AutocastTrainer(
                model, data_loader, optimizer, precision=precision, device_type=device_type
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = HAPNetCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """Detectron2's hooks, with the evaluation and checkpoint choice of
        ``TEST.MODEL_SELECTION`` (:mod:`hapnet_d2.engine.model_selection`): "val" evaluates
        ``DATASETS.VAL`` periodically instead of ``DATASETS.TEST``; "val" and "test" keep the
        best mIoU (PQ for a panoptic model) as ``model_best.pth`` and test it after training."""
        protocol = check_model_selection(self.cfg)
        ret = super().build_hooks()
        position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        period = self.cfg.TEST.EVAL_PERIOD
        if protocol == "val":
            ret[position] = hooks.EvalHook(period, self.validate)
        best = None
        if protocol in ("val", "test"):
            metric = selection_metric(protocol, panoptic=self.cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON)
            best = SelectionCheckpointer(period, self.model, self.cfg.OUTPUT_DIR, metric)
        tta = (lambda: self.test_with_TTA(self.cfg, self.model)) if self.cfg.TEST.AUG.ENABLED else None
        final = TestSelectedModel(self.cfg, lambda: self.test(self.cfg, self.model), best, tta)
        ret[position + 1 : position + 1] = [h for h in (best, final) if h is not None]
        return ret

    def validate(self):
        """Evaluate the current model on ``DATASETS.VAL``.

        Returns:
            dict: ``{"val": results}`` (stored as ``val/sem_seg/mIoU`` etc.).
        """
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = tuple(self.cfg.DATASETS.VAL)
        cfg.TEST.AUG.ENABLED = False
        return {"val": self.test(cfg, self.model)}

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Batches of ``cfg.DATASETS.TRAIN`` through the mapper of ``INPUT.DATASET_MAPPER_NAME``."""
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """One-image batches of ``dataset_name`` through the test-mode mapper."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_dataset_mapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """
        Args:
            output_folder: where reports go; default ``OUTPUT_DIR/inference/<dataset_name>``.
        """
        if output_folder is None:
            output_folder = report_dir(cfg.OUTPUT_DIR, dataset_name)
        return build_rgbt_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """
        Evaluate ``model`` with the scales and flip of ``TEST.AUG`` on ``DATASETS.TEST``.

        Returns:
            dict: the results of :meth:`test`, with "_TTA" appended to each top-level key.
        """
        logging.getLogger(__name__).info(
            f"Running inference with test-time augmentation: scales {list(cfg.TEST.AUG.SCALES)}, "
            f"flip {cfg.TEST.AUG.FLIP}."
        )
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=report_dir(cfg.OUTPUT_DIR, name, tta=True)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((key + "_TTA", value) for key, value in results.items())
