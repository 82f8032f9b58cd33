"""TEST.MODEL_SELECTION: best-on-val model_best.pth, the paper's best-on-test, the final model."""
import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import load_cfg
from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.data.datasets.register_synth import register_synth_dataset
from hapnet_d2.data.synth import SynthSpec, ensure_synth_dataset
from hapnet_d2.engine import Trainer
from hapnet_d2.engine.model_selection import check_model_selection

TINY = SynthSpec(seed=11, num_train=4, num_val=2, num_test=2)
PREFIX = "test_model_selection_synth"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets") / "synth_rgbt")
    ensure_synth_dataset(root, TINY)
    names = {split: f"{PREFIX}_{split}" for split in ("train", "val", "test")}
    for split, name in names.items():
        register_synth_dataset(name, root, split, TINY)
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(splits, output_dir, protocol):
    return load_cfg("configs/synth/hapnet_tiny.yaml", [
        "DATASETS.TRAIN", (splits["train"],), "DATASETS.VAL", (splits["val"],), "DATASETS.TEST", (splits["test"],),
        "TEST.MODEL_SELECTION", protocol, "TEST.EVAL_PERIOD", 2, "TEST.AUG.ENABLED", False,
        "INPUT.CROP.SIZE", (64, 64), "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 6, "SOLVER.WARMUP_ITERS", 1,
        "SOLVER.BASE_LR", 0.01, "SOLVER.CHECKPOINT_PERIOD", 100, "DATALOADER.NUM_WORKERS", 0,
        "OUTPUT_DIR", str(output_dir),
    ])  # fmt: skip


def _train(cfg):
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, trainer._last_eval_results  # what DefaultTrainer.train checks EXPECTED_RESULTS against


def _history(trainer, key):
    return [(it, value) for value, it in trainer.storage.history(key).values()]


def _evaluate_checkpoint(cfg, path, dataset):
    model = Trainer.build_model(cfg)
    HAPNetCheckpointer(model).load(path, checkpointables=[])
    test_cfg = cfg.clone()
    test_cfg.DATASETS.TEST = (dataset,)
    test_cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "check")
    return Trainer.test(test_cfg, model)


@pytest.mark.slow
@pytest.mark.parametrize("protocol, metric, chosen_on", [("val", "val/sem_seg/mIoU", "val"),
                                                         ("test", "sem_seg/mIoU", "test")])
def test_best_checkpoint_is_chosen_by_the_protocol_and_tested(splits, tmp_path, protocol, metric, chosen_on):
    cfg = _cfg(splits, tmp_path, protocol)
    trainer, results = _train(cfg)
    history = _history(trainer, metric)
    # every EVAL_PERIOD = 2 iterations, and after training (stored at MAX_ITER, as Detectron2 does)
    assert [it for it, _ in history] == [1, 3, 6]
    best_iter, best_value = max(history, key=lambda t: (t[1], -t[0]))  # first of equal scores
    record = json.load(open(tmp_path / "model_best.json"))
    assert record == {"metric": metric, "value": best_value, "iteration": best_iter}
    # model_best.pth scores the recorded mIoU on the split it was chosen on (to a few pixels: the
    # nearly untrained model has near-ties that another thread count can flip; the next
    # checkpoint, 1-3 steps at lr 0.01 away, differs by far more)
    rescored = _evaluate_checkpoint(cfg, str(tmp_path / "model_best.pth"), splits[chosen_on])
    assert rescored["sem_seg"]["mIoU"] == pytest.approx(best_value, abs=1e-3)
    # the final report is the test score of model_best and names the protocol
    tested = _evaluate_checkpoint(cfg, str(tmp_path / "model_best.pth"), splits["test"])
    assert results["sem_seg"]["mIoU"] == pytest.approx(tested["sem_seg"]["mIoU"], abs=1e-3)
    report = json.load(open(tmp_path / "inference" / splits["test"] / "results.json"))
    assert report["metrics"]["sem_seg"]["mIoU"] == pytest.approx(tested["sem_seg"]["mIoU"], abs=1e-6)
    selection = report["model_selection"]
    assert selection["protocol"] == protocol and selection["checkpoint"] == "model_best.pth"
    assert selection["iteration"] == best_iter and selection["selected_on"] == [splits[chosen_on]]
    # the resume tag still points at the last regular checkpoint
    assert open(tmp_path / "last_checkpoint").read() == "model_final.pth"
    if protocol == "val":
        assert (tmp_path / "inference" / splits["val"] / "results.json").exists()
    else:
        assert not (tmp_path / "inference" / splits["val"]).exists()


@pytest.mark.slow
def test_last_protocol_reports_the_final_model(splits, tmp_path):
    cfg = _cfg(splits, tmp_path, "last")
    cfg.TEST.AUG.ENABLED, cfg.TEST.AUG.SCALES, cfg.TEST.AUG.FLIP = True, (1.0,), True
    _, results = _train(cfg)
    # the test-time-augmentation report comes from the same model and names the protocol too
    tta_report = json.load(open(tmp_path / "inference_TTA" / splits["test"] / "results.json"))
    assert tta_report["model_selection"]["protocol"] == "last"
    assert "sem_seg_TTA" in results
    assert not (tmp_path / "model_best.pth").exists()
    report = json.load(open(tmp_path / "inference" / splits["test"] / "results.json"))
    assert report["model_selection"]["protocol"] == "last"
    assert report["model_selection"]["checkpoint"] == "model_final"
    final = _evaluate_checkpoint(cfg, str(tmp_path / "model_final.pth"), splits["test"])
    assert results["sem_seg"]["mIoU"] == pytest.approx(final["sem_seg"]["mIoU"], abs=1e-3)  # near-ties, see above


def test_protocol_errors_are_one_clear_line(tiny_cfg):
    tiny_cfg.TEST.MODEL_SELECTION = "best"
    with pytest.raises(ValueError, match=r"TEST.MODEL_SELECTION='best' is not one of \('val', 'test', 'last'\)"):
        check_model_selection(tiny_cfg)
    tiny_cfg.TEST.MODEL_SELECTION = "val"
    tiny_cfg.DATASETS.VAL = ()
    with pytest.raises(ValueError, match="needs one validation dataset in DATASETS.VAL"):
        check_model_selection(tiny_cfg)
    tiny_cfg.DATASETS.VAL = ("synth_rgbt_val",)
    assert check_model_selection(tiny_cfg) == "val"


def test_panoptic_models_are_selected_by_pq():
    from hapnet_d2.engine.model_selection import selection_metric

    assert selection_metric("val") == "val/sem_seg/mIoU"
    assert selection_metric("val", panoptic=True) == "val/panoptic_seg/PQ"
    assert selection_metric("test", panoptic=True) == "panoptic_seg/PQ"
    assert selection_metric("last", panoptic=True) is None
