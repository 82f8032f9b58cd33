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
"""

import logging
import os

# How long a waiting OpenMP thread spins before it sleeps. libgomp's default (~3 ms of spinning)
# makes a 2-thread run 30x slower as soon as another job shares the cores; never spinning
# (OMP_WAIT_POLICY=PASSIVE) makes every small op wait for a thread wake-up, 1.5x slower on an idle
# machine. A short spin is close to the best of both (README "Speed"). Set OMP_WAIT_POLICY or
# GOMP_SPINCOUNT yourself to choose. Must precede the first torch import.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.config import get_hapnet_cfg
from hapnet_d2.engine import Trainer, share_cpu_threads_between_processes


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
    """Build the frozen config from ``--config-file`` and ``opts``, and set up logging."""
    cfg = get_hapnet_cfg(args.config_file, args.opts, args.allow_unsafe_checkpoint)
    cfg.freeze()
    default_setup(cfg, args)
    logger = logging.getLogger("detectron2")
    if cfg.MODEL.DEVICE == "cpu":
        logger.info(f"Using {share_cpu_threads_between_processes(cfg)} CPU threads per process.")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        HAPNetCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        # after the plain evaluation, as Detectron2's tools/train_net.py does
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
