"""Shared fixtures: configs of the tiny model, small synthetic RGB-T inputs, and a trained tiny model.

Generated datasets never go into the checkout: before the package registers its datasets (at
import, from ``$DETECTRON2_DATASETS``), ``DETECTRON2_DATASETS`` is pointed at a temporary folder
(``$HAPNET_TEST_CACHE_DIR/datasets[-<xdist worker>]`` when that is set, reused across runs), and child processes
inherit it. An autouse check fails any test that adds files to the checkout's ``datasets/`` or
``output/``.
"""
import atexit
import os
import shutil
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# HAPNET_TEST_CACHE_DIR: keep generated data and the trained tiny model between pytest runs
CACHE_DIR = os.path.abspath(os.environ["HAPNET_TEST_CACHE_DIR"]) if os.environ.get("HAPNET_TEST_CACHE_DIR") else ""


def _test_datasets_root() -> str:
    """The DETECTRON2_DATASETS of the test session: in the cache dir, else a temporary folder
    removed at exit."""
    if CACHE_DIR:
        # one folder per pytest-xdist worker: two workers must not generate the same files at once
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        root = os.path.join(CACHE_DIR, f"datasets-{worker}" if worker else "datasets")
        os.makedirs(root, exist_ok=True)
        return root
    root = tempfile.mkdtemp(prefix="hapnet_test_datasets_")
    atexit.register(shutil.rmtree, root, True)
    return root


TEST_DATASETS_ROOT = _test_datasets_root()
os.environ["DETECTRON2_DATASETS"] = TEST_DATASETS_ROOT  # must precede the first hapnet_d2 import
# the short OpenMP spin of train_net.py (a 2-thread run under contention is otherwise ~30x slower);
# must precede the first torch import
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist (`make test`: 2 workers on 2 cores) each worker computes on one thread, so that
# the two do not oversubscribe the cores; the child processes tests start keep their own defaults
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from hapnet_d2.config import get_hapnet_cfg  # noqa: E402

# real samples shared by the team (MFNet frame, KP split lists); tests using them skip if absent
SHARED_DATA = os.environ.get("HAPNET_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
MFNET_SAMPLE = os.path.join(SHARED_DATA, "mfnet_samples", "01477D.png")
requires_mfnet_sample = pytest.mark.skipif(not os.path.isfile(MFNET_SAMPLE), reason=f"{MFNET_SAMPLE} not available")


def load_cfg(path: str, opts=()):
    """A frozen-free config from a repo-relative YAML path plus ``opts`` overrides."""
    cfg = get_hapnet_cfg(os.path.join(REPO, path), opts)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture
def tiny_cfg():
    """The tiny config at 64x64 crops (4x4 ViT tokens), pure-PyTorch-free defaults, without the
    config's test-time augmentation (tests of TTA turn it on)."""
    return load_cfg("configs/synth/hapnet_tiny.yaml", ["INPUT.CROP.SIZE", (64, 64), "TEST.AUG.ENABLED", False])


def rgbt_pair(height: int, width: int, num_classes: int = 9, seed: int = 0):
    """A random RGB-T input dict with a label map, Detectron2 style."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
        "thermal": torch.rand(1, height, width, generator=g) * 255,
        "sem_seg": torch.randint(0, num_classes, (height, width), generator=g),
        "height": height,
        "width": width,
    }


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """The tiny model trained on ``synth_rgbt_train`` (tests/trained_tiny.py): a mapping with
    ``config_file``, ``weights``, ``datasets_root`` and ``cfg(opts=())`` (a fresh CfgNode with
    ``MODEL.WEIGHTS`` set). Trained once per test run (pytest-xdist workers share the run's base
    temporary folder; the first trains on all cores, the others wait on its lock), or once per
    cache key with ``HAPNET_TEST_CACHE_DIR``; tests using it are ``@pytest.mark.slow``."""
    from trained_tiny import prepare_trained_tiny

    if CACHE_DIR:
        base = CACHE_DIR
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        base = str(tmp_path_factory.getbasetemp().parent)  # the run's folder, above the workers' own
    else:
        base = str(tmp_path_factory.mktemp("trained_tiny"))
    return prepare_trained_tiny(base, TEST_DATASETS_ROOT)


# folders of the checkout that tests must not write into (generated data, training outputs)
CHECKOUT_OUTPUT_FOLDERS = ("datasets", "output")


def _checkout_output_entries() -> set:
    """What tests could have written into the checkout, cheaply (no listing of image folders): the
    paths one and two levels under ``datasets/`` and ``output/``, and for the folders two levels
    down, their modification time (it changes when a file is added inside)."""
    entries = set()
    for folder in CHECKOUT_OUTPUT_FOLDERS:
        for top in _listdir(os.path.join(REPO, folder)):
            entries.add(f"{folder}/{top}")
            for name in _listdir(os.path.join(REPO, folder, top)):
                path = os.path.join(REPO, folder, top, name)
                entries.add(f"{folder}/{top}/{name}")
                if os.path.isdir(path):
                    entries.add((f"{folder}/{top}/{name}/", os.stat(path).st_mtime_ns))
    return entries


def _listdir(path: str) -> list:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


@pytest.fixture(autouse=True)
def _no_writes_into_the_checkout():
    """Fail a test that adds files or folders to the checkout's ``datasets/`` or ``output/``: generated
    data belongs in the temporary DETECTRON2_DATASETS set above, outputs in ``tmp_path``."""
    before = _checkout_output_entries()
    yield
    added = sorted(e if isinstance(e, str) else e[0] for e in _checkout_output_entries() - before)
    if added:
        shown = ", ".join(added[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
        pytest.fail(
            f"the test wrote into the checkout: {shown}; use tmp_path for OUTPUT_DIR and the session's "
            f"DETECTRON2_DATASETS ({TEST_DATASETS_ROOT}) for data (or another process wrote there meanwhile)",
            pytrace=False,
        )
