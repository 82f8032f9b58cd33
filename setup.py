"""HAPNet-D2 package metadata.

Ranges only: the tested versions are pinned in ``requirements/constraints.txt`` (the one place),
which ``make install`` passes to pip with ``-c``. Reproduce the tested set elsewhere with
``pip install -c requirements/constraints.txt "<checkout>[export,dev]"``.

Detectron2 is deliberately not declared: PyPI has no upstream Detectron2, the ``sal-detectron2``
wheel that carries its sources is tagged for CPython 3.10 only (pip refuses it on 3.11+; ``dev/install.sh``
installs it with ``installer``), and a user who built Detectron2 from git has it as the distribution
``detectron2``, which a declared ``sal-detectron2`` would duplicate. Its runtime dependencies are
declared here instead, so ``pip install .`` brings everything else.
"""
from setuptools import find_packages, setup

# Detectron2's own runtime dependencies (as declared by the upstream setup.py / the wheel)
DETECTRON2_RUNTIME = [
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "matplotlib",
    "tensorboard",
    "packaging",
]

INSTALL_REQUIRES = [
    "torch>=2.4",
    "torchvision>=0.19",
    "numpy>=1.24,<2",  # Detectron2's evaluators and wheel need numpy 1.x
    "opencv-python-headless>=4.8,<4.11",  # 4.11+ needs numpy 2
    "ml_dtypes<0.6",  # pulled in by onnx; 0.6+ needs numpy 2
    "timm>=1.0,<1.1",
    "fvcore>=0.1.5",
    "iopath>=0.1.7",
    "pillow>=9",
    "scipy>=1.10",
    "panopticapi-lite>=0.2,<0.3",  # module panopticapi, used by Detectron2's COCOPanopticEvaluator
    *DETECTRON2_RUNTIME,
]

EXTRAS_REQUIRE = {
    # ONNX export (torch.onnx's exporter needs onnxscript) and ONNX Runtime inference
    "export": ["onnx>=1.17,<1.24", "onnxruntime>=1.20,<1.33", "onnxscript>=0.5,<0.8"],
    "dev": ["pytest>=8", "pytest-xdist>=3"],
}

setup(
    name="hapnet_d2",
    version="0.1.0",
    description="HAPNet (hybrid asymmetric RGB-thermal scene parsing) on Detectron2",
    packages=find_packages(include=["hapnet_d2", "hapnet_d2.*"]),
    python_requires=">=3.10,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
