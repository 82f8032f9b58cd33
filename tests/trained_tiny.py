"""A tiny HAPNet trained on the synthetic RGB-T data, for the tests that check values (bf16
agreement, ``--eval-only``, the demo): a random model predicts one class everywhere.

``tests/conftest.py`` turns :func:`prepare_trained_tiny` into the session fixture ``trained_tiny``.
Training uses the project's :class:`~hapnet_d2.engine.Trainer` in-process on ``synth_rgbt_train``
(128x128 crops, :data:`ITERATIONS` iterations, about 2 minutes on 2 idle cores). With
``HAPNET_TEST_CACHE_DIR`` the checkpoint is kept there, keyed by a hash of the training config, and
reused by later pytest runs; a file lock lets concurrent runs share one training.
"""
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
import yaml

from hapnet_d2.checkpoint import CheckpointError
from hapnet_d2.data.io import read_rgbt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "synth", "hapnet_tiny.yaml")
ITERATIONS = 300
CROP_SIZE = 128
SEED = 0
# bump when the training procedure changes in a way the config does not show (invalidates caches)
PROCEDURE_VERSION = 1
WEIGHTS_NAME = "model_tiny"


def config_overrides(output_dir: str) -> Dict:
    """What the fixture's YAML changes in ``configs/synth/hapnet_tiny.yaml``: a short schedule,
    the CPU, no test-time augmentation, no data-loader workers."""
    return {
        "DATASETS": {"TRAIN": ["synth_rgbt_train"], "TEST": ["synth_rgbt_test"]},
        "MODEL": {"DEVICE": "cpu"},
        "INPUT": {"CROP": {"SIZE": [CROP_SIZE, CROP_SIZE]}},
        "SOLVER": {"MAX_ITER": ITERATIONS, "WARMUP_ITERS": 30, "CHECKPOINT_PERIOD": 10**6},
        "TEST": {"EVAL_PERIOD": 0, "AUG": {"ENABLED": False}},
        "DATALOADER": {"NUM_WORKERS": 0},
        "OUTPUT_DIR": output_dir,
    }


def config_text(output_dir: str) -> str:
    """The fixture's YAML: ``_BASE_`` the tiny config plus :func:`config_overrides`."""
    header = "# written by tests/trained_tiny.py (pytest fixture trained_tiny)\n"
    return header + yaml.safe_dump({"_BASE_": BASE_CONFIG, **config_overrides(output_dir)}, sort_keys=False)


def cache_key() -> str:
    """A hash of everything that decides the trained weights: the full resolved config (defaults,
    the tiny config's ``_BASE_`` chain, the overrides), the seed and :data:`PROCEDURE_VERSION`."""
    from hapnet_d2.config import get_hapnet_cfg

    overrides = config_overrides("")
    cfg = get_hapnet_cfg(BASE_CONFIG)
    material = json.dumps([BASE_CONFIG, cfg.dump(), overrides, SEED, PROCEDURE_VERSION, torch.__version__])
    return hashlib.sha256(material.encode()).hexdigest()[:12]


class TrainedTiny(Mapping):
    """The fixture's value; also readable as a dict (``trained_tiny["weights"]``).

    Attributes:
        config_file (str): absolute path of the YAML (usable with ``get_hapnet_cfg`` and
            ``demo/demo.py --config-file``); ``MODEL.WEIGHTS`` is not set in it.
        weights (str): absolute path of the checkpoint (Detectron2 format, key ``"model"``).
        datasets_root (str): the ``DETECTRON2_DATASETS`` holding ``synth_rgbt``.
    """

    _KEYS = ("config_file", "weights", "datasets_root", "cfg")

    def __init__(self, config_file: str, weights: str, datasets_root: str):
        self.config_file = config_file
        self.weights = weights
        self.datasets_root = datasets_root

    def cfg(self, opts: Sequence = ()):
        """A fresh unfrozen CfgNode of :attr:`config_file` with ``MODEL.WEIGHTS`` set, then ``opts``."""
        from hapnet_d2.config import get_hapnet_cfg

        return get_hapnet_cfg(self.config_file, ["MODEL.WEIGHTS", self.weights, *opts])

    make_cfg = cfg

    def model(self, opts: Sequence = ()):
        """The trained model in eval mode (built from :meth:`cfg`)."""
        from detectron2.modeling import build_model

        from hapnet_d2.checkpoint import HAPNetCheckpointer

        cfg = self.cfg(opts)
        model = build_model(cfg).eval()
        HAPNetCheckpointer.for_inference(model, cfg).load(cfg.MODEL.WEIGHTS)
        return model

    def __getitem__(self, key):
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self):
        return len(self._KEYS)

    def __repr__(self):
        return f"TrainedTiny(config_file={self.config_file!r}, weights={self.weights!r})"


def mfnet_style_inputs(path: str, height: int, width: int) -> Dict:
    """A 4-channel R, G, B, thermal PNG (MFNet layout, read by the project's own reader) resized
    to ``height`` x ``width``, as a model input: ``image`` [3, H, W] uint8 and ``thermal``
    [1, H, W] float on 0-255."""
    rgb, thermal = read_rgbt({"file_name": path, "rgbt_layout": "mfnet4"})
    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    thermal = cv2.resize(thermal, (width, height), interpolation=cv2.INTER_LINEAR)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
        "thermal": torch.from_numpy(thermal[None]),  # float32 from read_rgbt and cv2.resize
        "height": height,
        "width": width,
    }


@torch.no_grad()
def predict_labels(model, inputs: List[Dict]) -> List[np.ndarray]:
    """Arg-max label maps ``[H, W]`` of ``model`` for model input dicts, one at a time."""
    return [model([x])[0]["sem_seg"].argmax(0).numpy() for x in inputs]


def synthetic_test_inputs(cfg, dataset_name: str, count: int) -> List[Dict]:
    """The first ``count`` images of ``dataset_name`` through the test mapper of ``cfg``."""
    from detectron2.data import DatasetCatalog

    from hapnet_d2.data import build_dataset_mapper

    mapper = build_dataset_mapper(cfg, is_train=False)
    return [mapper(d) for d in DatasetCatalog.get(dataset_name)[:count]]


def _train(config_file: str, weights_dir: str) -> None:
    """Train with the project's Trainer (no evaluation) and save ``weights_dir/model_tiny.pth``
    holding the model only."""
    from detectron2.utils.env import seed_all_rng

    from hapnet_d2.checkpoint import HAPNetCheckpointer
    from hapnet_d2.config import get_hapnet_cfg
    from hapnet_d2.engine import Trainer

    work_dir = os.path.join(weights_dir, "training")
    shutil.rmtree(work_dir, ignore_errors=True)
    cfg = get_hapnet_cfg(config_file, ["DATASETS.TEST", (), "OUTPUT_DIR", work_dir])
    seed_all_rng(SEED)  # model init and the sampler's shared seed
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    threads = torch.get_num_threads()
    # every core: under pytest-xdist the other workers that need this model wait on the lock
    torch.set_num_threads(os.cpu_count() or threads)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    HAPNetCheckpointer(trainer.model, weights_dir).save(WEIGHTS_NAME)  # atomic
    shutil.rmtree(work_dir, ignore_errors=True)


def _check_non_trivial(trained: TrainedTiny) -> None:
    """Raise if the model predicts a single class on a synthetic day or night test image."""
    model = trained.model()
    cfg = trained.cfg()
    for name in ("synth_rgbt_test_day", "synth_rgbt_test_night"):
        (labels,) = predict_labels(model, synthetic_test_inputs(cfg, name, 1))
        if len(np.unique(labels)) < 2:
            raise AssertionError(f"trained_tiny predicts only class {labels.flat[0]} on the first image of {name}")


def prepare_trained_tiny(base_dir: str, datasets_root: str) -> TrainedTiny:
    """Train the tiny model into ``base_dir/trained_tiny-<key>`` unless a checkpoint of the same
    key is already there.

    Args:
        base_dir: the cache dir (``HAPNET_TEST_CACHE_DIR``) or a temporary folder.
        datasets_root: the session's ``DETECTRON2_DATASETS`` (where ``synth_rgbt_*`` are registered).

    Returns:
        TrainedTiny: paths of the config, the weights and the datasets root.
    """
    key_dir = os.path.join(base_dir, f"trained_tiny-{cache_key()}")
    os.makedirs(key_dir, exist_ok=True)
    with open(key_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one training per key, even across pytest processes
        config_file = os.path.join(key_dir, "config.yaml")
        text = config_text(os.path.join(key_dir, "output"))
        if not os.path.isfile(config_file) or open(config_file).read() != text:
            with open(config_file + ".tmp", "w") as f:
                f.write(text)
            os.replace(config_file + ".tmp", config_file)
        trained = TrainedTiny(config_file, os.path.join(key_dir, WEIGHTS_NAME + ".pth"), datasets_root)
        if os.path.isfile(trained.weights):
            try:
                _check_non_trivial(trained)
                return trained
            except CheckpointError:  # a cached checkpoint of an older model: train again
                os.remove(trained.weights)
        _train(config_file, key_dir)
        _check_non_trivial(trained)
    return trained
