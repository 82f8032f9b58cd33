from setuptools import find_packages, setup

setup(
    name="hapnet_d2",
    version="0.1.0",
    description="HAPNet (hybrid asymmetric RGB-thermal scene parsing) on Detectron2",
    packages=find_packages(include=["hapnet_d2", "hapnet_d2.*"]),
    python_requires=">=3.10",
)
