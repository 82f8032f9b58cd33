"""The panoptic additions to the synthetic generator changed no pixel of the semantic dataset.

The hashes were recorded with the generator as it was before it learnt panoptic labels
(numpy 1.26.4, opencv-python-headless 4.10.0.84, Pillow 13.0.0). The pixel hash is over the
decoded images/labels and the split lists (independent of the PNG compressor); the file hash
is over the exact bytes of images/, labels/, the lists and synth_meta.json.
"""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from hapnet_d2.data.synth import SynthSpec, generate_dataset

RECORDED = {
    "tiny": (
        SynthSpec(seed=3, num_train=4, num_val=2, num_test=4),
        "327a01cd1c49e515205eebee4d48058bffcaea2df0e2069d45dac7339c984944",
        "be43cdce8ccde7ec2e09456406ee0b2bc9b243c3b32e037cb1bc5f907fb4fc7e",
    ),
    "320x240": (
        SynthSpec(seed=7, width=320, height=240, num_train=3, num_val=1, num_test=4),
        "b2f14ebcbb2a8298dd24a4d63d848dc85641d90388a638b898587a190c904270",
        "694ab600c9153cccceae081b7f97480eb9b156ee5a6333a96e35fa2d1d8bb942",
    ),
}


def _semantic_files(root):
    names = [os.path.join(sub, f) for sub in ("images", "labels") for f in sorted(os.listdir(os.path.join(root, sub)))]
    return names + sorted(f for f in os.listdir(root) if f.endswith(".txt") or f == "synth_meta.json")


def _pixel_hash(root):
    digest = hashlib.sha256()
    for sub in ("images", "labels"):
        for f in sorted(os.listdir(os.path.join(root, sub))):
            a = np.asarray(Image.open(os.path.join(root, sub, f)))
            digest.update(f"{sub}/{f}{a.shape}{a.dtype}".encode())
            digest.update(a.tobytes())
    for f in sorted(x for x in os.listdir(root) if x.endswith(".txt")):
        with open(os.path.join(root, f), "rb") as fh:
            digest.update(f.encode() + fh.read())
    return digest.hexdigest()


def _file_hash(root):
    digest = hashlib.sha256()
    for name in _semantic_files(root):
        with open(os.path.join(root, name), "rb") as fh:
            digest.update(name.encode() + fh.read())
    return digest.hexdigest()


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_semantic_files_equal_the_pre_panoptic_generator(tmp_path, key):
    spec, pixel_hash, file_hash = RECORDED[key]
    root = str(tmp_path / "synth_rgbt")
    generate_dataset(root, spec)
    assert _pixel_hash(root) == pixel_hash, "a pixel of the semantic synthetic dataset changed"
    assert _file_hash(root) == file_hash, "semantic file bytes changed (pixels equal: PNG encoder?)"
