"""Multi-process CPU training through Detectron2's ``launch`` (gloo, DDP without device ids)."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import launch
from detectron2.utils import comm

from hapnet_d2.config import add_hapnet_config
from hapnet_d2.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_PROCESSES = 2


def _tiny_cfg(output_dir):
    cfg = get_cfg()
    add_hapnet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/synth/hapnet_tiny.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "INPUT.CROP.SIZE", (64, 64),
            "SOLVER.IMS_PER_BATCH", 2 * NUM_PROCESSES,
            "SOLVER.MAX_ITER", 3,
            "SOLVER.WARMUP_ITERS", 1,
            "SOLVER.CHECKPOINT_PERIOD", 1000,
            "DATASETS.TEST", (),
            "DATALOADER.NUM_WORKERS", 0,
            "OUTPUT_DIR", output_dir,
        ]
    )  # fmt: skip
    return cfg


def _train_and_save(output_dir):
    """Run in each process: train a few iterations, save the initial and final states."""
    torch.set_num_threads(1)
    trainer = Trainer(_tiny_cfg(output_dir))
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if comm.get_world_size() > 1 else trainer.model
    rank = comm.get_rank()
    torch.save(model.state_dict(), os.path.join(output_dir, f"initial_rank{rank}.pth"))
    trainer.train()
    torch.save(model.state_dict(), os.path.join(output_dir, f"final_rank{rank}.pth"))


@pytest.mark.slow
def test_two_cpu_processes_train_the_same_model(tmp_path):
    output_dir = str(tmp_path)
    launch(_train_and_save, NUM_PROCESSES, dist_url="auto", args=(output_dir,))

    def load(name):
        return torch.load(os.path.join(output_dir, name), map_location="cpu", weights_only=True)

    initial = load("initial_rank0.pth")
    finals = [load(f"final_rank{rank}.pth") for rank in range(NUM_PROCESSES)]
    assert finals[0].keys() == finals[1].keys()
    different = [k for k in finals[0] if not torch.equal(finals[0][k], finals[1][k])]
    assert different == [], f"ranks disagree on {different[:5]}"
    trained = [
        k
        for k in initial
        if initial[k].is_floating_point() and not torch.equal(initial[k], finals[0][k])
    ]
    assert len(trained) > len(initial) // 2, "training changed the model"
