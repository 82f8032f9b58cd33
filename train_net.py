#!/usr/bin/env python
"""
Train and evaluate HAPNet with Detectron2.

Examples:
    # train on one machine; on a CPU-only machine --num-gpus is the number of processes (gloo)
    python train_net.py --config-file configs/synth/hapnet_tiny.yaml --num-gpus 1
    # resume from OUTPUT_DIR/last_checkpoint after an interruption
    python train_net.py --config-file configs/synth/hapnet_tiny.yaml --resume
    # evaluate a checkpoint (also with test-time augmentation if TEST.AUG.ENABLED, as after training)
    python train_net.py --config-file configs/synth/hapnet_tiny.yaml --eval-only \\
        MODEL.WEIGHTS output/synth/hapnet_tiny/model_final.pth

Mistakes in what the user gives (a config key typo, a checkpoint that does not fit the model, a
missing or malformed dataset file, a label id outside the classes) end the run with one line
``error: ...`` on stderr: exit code 2 for the command line and the config, 1 for the rest.
``HAPNET_DEBUG=1`` shows the full traceback instead; ``OUTPUT_DIR/log.txt`` always has it.
"""

import logging
import os
import sys

# How long a waiting OpenMP thread spins before it sleeps. libgomp's default (~3 ms of spinning)
# makes a 2-thread run 30x slower as soon as another job shares the cores; never spinning
# (OMP_WAIT_POLICY=PASSIVE) makes every small op wait for a thread wake-up, 1.5x slower on an idle
# machine. A short spin is close to the best of both (README "Speed"). Set OMP_WAIT_POLICY or
# GOMP_SPINCOUNT yourself to choose. Must precede the first torch import.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from hapnet_d2.checkpoint import CheckpointError, HAPNetCheckpointer
from hapnet_d2.config import ConfigError, get_hapnet_cfg
from hapnet_d2.data.io import RGBTDataError
from hapnet_d2.engine import Trainer, share_cpu_threads_between_processes

# the user's mistakes: one line instead of a traceback (ValueError/KeyError: the model's and
# the mapper's checks of the data, e.g. a label id outside the classes, naming the label file)
USER_ERRORS = (ConfigError, CheckpointError, RGBTDataError, FileNotFoundError, ValueError, KeyError)
DEBUG = os.environ.get("HAPNET_DEBUG", "") not in ("", "0")


def get_parser():
    """Detectron2's standard arguments plus ``--allow-unsafe-checkpoint``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-unsafe-checkpoint",
        action="store_true",
        help="load checkpoints that need pickle code execution (only for trusted files); "
        "same as MODEL.ALLOW_UNSAFE_CHECKPOINTS True",
    )
    return parser


def setup(args):
    """Build the frozen config from ``--config-file`` and ``opts``, and set up logging.

    Raises:
        ConfigError: no or a missing config file, an unknown key, a value of the wrong type.
    """
    if not args.config_file:
        raise ConfigError("train_net.py needs --config-file FILE (e.g. configs/synth/hapnet_tiny.yaml)")
    cfg = get_hapnet_cfg(args.config_file, args.opts, args.allow_unsafe_checkpoint)
    cfg.freeze()
    default_setup(cfg, args)
    if not DEBUG:
        hide_user_error_tracebacks_on_console()
    logger = logging.getLogger("detectron2")
    if cfg.MODEL.DEVICE == "cpu":
        logger.info(f"Using {share_cpu_threads_between_processes(cfg)} CPU threads per process.")
    return cfg


class _DropUserErrorTracebacks(logging.Filter):
    """Drops log records carrying a user error's traceback (Detectron2's trainer logs every
    exception with ``logger.exception``); main() prints the error as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], USER_ERRORS))


def hide_user_error_tracebacks_on_console() -> None:
    """Keep user-error tracebacks out of the console handlers of Detectron2's loggers; the
    log file (``OUTPUT_DIR/log.txt``, also a ``StreamHandler`` in Detectron2) still records them."""
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for name in ("detectron2", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and any(handler.stream is c for c in consoles):
                handler.addFilter(_DropUserErrorTracebacks())


def one_line(error: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the
    worker's traceback in its message: only its last line (the original message) is kept."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Original Traceback" in text and lines:
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and head.replace(".", "").replace("_", "").isalnum() and head[0].isalpha() else last
    return " ".join(lines) or type(error).__name__


def main(args):
    """Train, or evaluate with ``--eval-only``. A user error ends the process with one line
    ``error: ...`` on stderr (exit code 2 for the config, 1 otherwise) unless ``HAPNET_DEBUG=1``."""
    try:
        return run(args)
    except USER_ERRORS as e:
        if DEBUG:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(e, ConfigError) else 1) from None


def run(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        HAPNetCheckpointer.for_inference(model, cfg, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    # the selected model is also tested with TEST.AUG (if enabled) by the trainer's own hooks
    return trainer.train()


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as e:  # a worker process printed its error and exited
        sys.exit(e.exit_code or 1)
