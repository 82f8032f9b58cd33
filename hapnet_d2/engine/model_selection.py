"""Which checkpoint of a training run is reported: best on val, best on test (paper), or last.

``TEST.MODEL_SELECTION``:

* ``"val"``: :class:`~detectron2.engine.hooks.EvalHook` evaluates ``DATASETS.VAL`` every
  ``TEST.EVAL_PERIOD`` iterations and at the end; :class:`SelectionCheckpointer` (Detectron2's
  ``BestCheckpointer``) keeps the best val mIoU as ``model_best.pth``; after training,
  :class:`TestSelectedModel` loads it and evaluates ``DATASETS.TEST``.
* ``"test"``: the paper's protocol (the authors' code validates on the test split and keeps the
  best): the same, with ``DATASETS.TEST`` in place of the val split. Its test figures are
  optimistic (the checkpoint is chosen on the data it is scored on).
* ``"last"``: the final model is tested (Detectron2's default).

Every ``results.json`` written by the final test gets a ``"model_selection"`` entry naming the
protocol, the metric, the checkpoint and its iteration.
"""

import json
import logging
import os
from typing import Callable, Dict, Optional

from detectron2.engine import HookBase
from detectron2.engine.hooks import BestCheckpointer
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.evaluation import report_dir

__all__ = [
    "MODEL_SELECTION_PROTOCOLS",
    "BEST_CHECKPOINT",
    "check_model_selection",
    "selection_metric",
    "SelectionCheckpointer",
    "TestSelectedModel",
    "annotate_reports",
]

logger = logging.getLogger(__name__)

MODEL_SELECTION_PROTOCOLS = ("val", "test", "last")
BEST_CHECKPOINT = "model_best"  # file prefix: model_best.pth (+ model_best.json, the record)
_DESCRIPTIONS = {
    "val": "best validation mIoU (checkpoint chosen on DATASETS.VAL, then tested)",
    "test": "best test mIoU (the paper's protocol: checkpoint chosen on the test split itself)",
    "last": "final model (no selection)",
}


def check_model_selection(cfg) -> str:
    """The validated protocol of ``cfg``.

    Raises:
        ValueError: unknown ``TEST.MODEL_SELECTION``, or ``"val"`` without exactly one
            ``DATASETS.VAL`` dataset.
    """
    protocol = cfg.TEST.MODEL_SELECTION
    if protocol not in MODEL_SELECTION_PROTOCOLS:
        raise ValueError(f"TEST.MODEL_SELECTION={protocol!r} is not one of {MODEL_SELECTION_PROTOCOLS}")
    if protocol == "val" and len(cfg.DATASETS.VAL) != 1:
        raise ValueError(
            f'TEST.MODEL_SELECTION "val" needs one validation dataset in DATASETS.VAL, got '
            f"{tuple(cfg.DATASETS.VAL)} (datasets without a val split: use \"last\" or \"test\")"
        )
    return protocol


def selection_metric(protocol: str, panoptic: bool = False) -> Optional[str]:
    """The storage key the protocol maximises (the EvalHook's flattened results), or None.

    Args:
        protocol: ``"val"``, ``"test"`` or ``"last"`` (None: nothing is selected).
        panoptic: the model has panoptic output (MODEL.MASK_FORMER.TEST.PANOPTIC_ON): select by
            PQ instead of mIoU.
    """
    metric = "panoptic_seg/PQ" if panoptic else "sem_seg/mIoU"
    return {"val": f"val/{metric}", "test": metric}.get(protocol)


class SelectionCheckpointer(BestCheckpointer):
    """:class:`BestCheckpointer` that survives a resume and leaves ``last_checkpoint`` alone.

    The best score and iteration are kept in ``model_best.json`` beside ``model_best.pth`` and
    read back before training, so a resumed run does not overwrite a better checkpoint; the file
    holds the model only and is not tagged as the checkpoint to resume from.
    """

    def __init__(self, eval_period: int, model, output_dir: str, val_metric: str):
        """
        Args:
            eval_period: the period of the EvalHook that produces ``val_metric``.
            model: the trained model (its state is saved).
            output_dir: where ``model_best.pth`` / ``.json`` go.
            val_metric: storage key to maximise, e.g. ``"val/sem_seg/mIoU"``.
        """
        checkpointer = _UntaggedCheckpointer(model, output_dir)
        super().__init__(eval_period, checkpointer, val_metric, mode="max", file_prefix=BEST_CHECKPOINT)
        self.record_path = os.path.join(output_dir, BEST_CHECKPOINT + ".json")

    def before_train(self):
        if PathManager.exists(self.record_path) and PathManager.exists(self.checkpoint_path):
            with PathManager.open(self.record_path) as f:
                record = json.load(f)
            if record.get("metric") == self._val_metric:
                self.best_metric, self.best_iter = record["value"], record["iteration"]
                self._logger.info(
                    f"Best {self._val_metric} so far: {self.best_metric:.5f} @ iteration {self.best_iter}"
                )

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self._checkpointer.save_dir, BEST_CHECKPOINT + ".pth")

    def _update_best(self, val, iteration):
        updated = super()._update_best(val, iteration)
        if updated and comm.is_main_process():
            with PathManager.open(self.record_path, "w") as f:
                json.dump({"metric": self._val_metric, "value": val, "iteration": iteration}, f)
        return updated


class _UntaggedCheckpointer(HAPNetCheckpointer):
    """Saves like :class:`HAPNetCheckpointer` without touching the ``last_checkpoint`` tag."""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        pass


class TestSelectedModel(HookBase):
    """After training: load ``model_best.pth`` (protocols "val" and "test"), evaluate
    ``DATASETS.TEST`` with it (and with test-time augmentation if configured), and record the
    protocol in every written ``results.json``."""

    def __init__(
        self,
        cfg,
        test: Callable[[], Dict],
        best: Optional[SelectionCheckpointer],
        test_with_tta: Optional[Callable[[], Dict]] = None,
    ):
        """
        Args:
            cfg: the training config.
            test: evaluates the trainer's current model on ``DATASETS.TEST`` (returns results).
            best: the run's :class:`SelectionCheckpointer` (None for "last").
            test_with_tta: the same with test-time augmentation (TEST.AUG.ENABLED), run after
                ``test`` on the same (selected) model; None: no TTA evaluation.
        """
        self.cfg = cfg
        self.protocol = cfg.TEST.MODEL_SELECTION
        self._test = test
        self._best = best
        self._test_with_tta = test_with_tta

    def after_train(self):
        if self.trainer.iter + 1 < self.trainer.max_iter:
            return  # interrupted: nothing final to report
        selection = {"protocol": self.protocol, "description": _DESCRIPTIONS[self.protocol]}
        if self._best is not None:
            path = self._best.checkpoint_path
            comm.synchronize()
            if not PathManager.exists(path):
                logger.warning(f"{path} was not written (no finite {self._best._val_metric}): testing the final model")
                selection.update(checkpoint="model_final", iteration=self.trainer.iter)
            else:
                HAPNetCheckpointer(self.trainer.model, allow_unsafe=False).load(path, checkpointables=[])
                selection.update(
                    checkpoint=os.path.basename(path),
                    iteration=self._best.best_iter,
                    metric=self._best._val_metric,
                    value=self._best.best_metric,
                    selected_on=list(self.cfg.DATASETS.VAL if self.protocol == "val" else self.cfg.DATASETS.TEST),
                )
                logger.info(
                    f"Testing {path} (iteration {self._best.best_iter}, {self._best._val_metric} "
                    f"{self._best.best_metric:.2f}) on {list(self.cfg.DATASETS.TEST)}"
                )
            self.trainer._last_eval_results = self._test()
        else:
            selection.update(checkpoint="model_final", iteration=self.trainer.iter)
        tta_results = self._test_with_tta() if self._test_with_tta is not None else None
        if tta_results and isinstance(self.trainer._last_eval_results, dict):
            self.trainer._last_eval_results.update(tta_results)
        if comm.is_main_process():
            annotate_reports(self.cfg, selection)
            if self._test_with_tta is not None:
                annotate_reports(self.cfg, selection, tta=True)


def annotate_reports(cfg, selection: Dict, tta: bool = False) -> None:
    """Add ``"model_selection": selection`` to the ``results.json`` of each test dataset (of its
    test-time-augmentation report if ``tta``)."""
    for name in cfg.DATASETS.TEST:
        path = os.path.join(report_dir(cfg.OUTPUT_DIR, name, tta=tta), "results.json")
        if not PathManager.exists(path):
            continue
        with PathManager.open(path) as f:
            payload = json.load(f)
        payload["model_selection"] = selection
        with PathManager.open(path, "w") as f:
            json.dump(payload, f, indent=2)
