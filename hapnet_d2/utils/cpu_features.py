"""Which vector and matrix units this CPU has, for choosing an inference precision.

bf16 inference is only fast on CPUs with bf16 arithmetic units: AVX-512-BF16 (Intel Cooper Lake
and later, AMD Zen 4 and later) or AMX (Intel Sapphire Rapids and later); on aarch64 the ``bf16``
extension. Elsewhere PyTorch emulates bf16 matmuls, about 100x slower than float32, and int8
dynamic quantization (:mod:`hapnet_d2.utils.cpu_inference`) is the faster choice.

Features come from the ``flags`` (x86) or ``Features`` (aarch64) lines of ``/proc/cpuinfo``;
where that file does not exist (macOS, Windows) from PyTorch's own CPU probes.
"""
import dataclasses
import os
from typing import Iterable, List, Optional, Set

import torch

__all__ = ["CPUFeatures", "cpu_flags_from_cpuinfo", "detect_cpu_features"]

CPUINFO = "/proc/cpuinfo"


@dataclasses.dataclass(frozen=True)
class CPUFeatures:
    """Instruction-set features relevant to inference speed.

    Attributes:
        avx2: 256-bit float vectors with FMA (the float32 baseline of current x86 CPUs).
        avx512: AVX-512 foundation (512-bit vectors).
        avx512_bf16: AVX-512 bf16 dot products (``vdpbf16ps``).
        amx_bf16: AMX tiles with bf16 matrix multiplication.
        amx_int8: AMX tiles with int8 matrix multiplication.
        vnni: int8 dot products (AVX-512-VNNI or AVX-VNNI), which speed up int8 matmuls.
        arm_bf16: aarch64 bf16 instructions (``BFMMLA``).
        capability: ``torch.backends.cpu.get_cpu_capability()``, the kernels PyTorch dispatches
            to (e.g. ``"AVX2"``, ``"AVX512"``, ``"DEFAULT"``).
        source: where the flags came from: the cpuinfo path or ``"torch"``.
    """

    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False
    amx_bf16: bool = False
    amx_int8: bool = False
    vnni: bool = False
    arm_bf16: bool = False
    capability: str = "DEFAULT"
    source: str = "torch"

    @property
    def has_bf16_units(self) -> bool:
        """Whether bf16 matrix products run in hardware (AVX-512-BF16, AMX-BF16 or arm bf16)."""
        return self.avx512_bf16 or self.amx_bf16 or self.arm_bf16

    def names(self) -> List[str]:
        """The features found, as short names in the order of the attributes
        (e.g. ``["AVX2", "AVX-512", "AVX-512-BF16", "AMX-BF16"]``)."""
        labels = [
            ("avx2", "AVX2"),
            ("avx512", "AVX-512"),
            ("avx512_bf16", "AVX-512-BF16"),
            ("amx_bf16", "AMX-BF16"),
            ("amx_int8", "AMX-INT8"),
            ("vnni", "VNNI"),
            ("arm_bf16", "ARM-BF16"),
        ]
        return [label for attr, label in labels if getattr(self, attr)]

    def summary(self) -> str:
        """One line, e.g. ``"AVX2 (torch kernels: AVX2)"``; ``"none"`` when nothing was found."""
        return f"{' '.join(self.names()) or 'none'} (torch kernels: {self.capability})"

    def bf16_refusal(self) -> Optional[str]:
        """None where bf16 is fast; otherwise one sentence saying why a bf16 run is refused."""
        if self.has_bf16_units:
            return None
        return (
            f"this CPU has no bf16 units (found {' '.join(self.names()) or 'no vector extensions'}; "
            f"needs AVX-512-BF16, AMX or arm bf16): PyTorch would emulate bf16 matmuls, about "
            f"100x slower than fp32; use --dtype fp32, or --quantize int8 for a faster CPU path"
        )


def cpu_flags_from_cpuinfo(text: str) -> Set[str]:
    """The feature flags of the first processor listed in a ``/proc/cpuinfo`` text.

    Args:
        text: file contents; x86 lists ``flags : fpu ... avx2 ...``, aarch64 ``Features : ...``.
    Returns:
        the lower-case flags (empty when no such line exists).
    """
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def _features_from_flags(flags: Iterable[str], capability: str, source: str) -> CPUFeatures:
    flags = set(flags)
    return CPUFeatures(
        avx2="avx2" in flags and "fma" in flags,
        avx512="avx512f" in flags,
        avx512_bf16="avx512_bf16" in flags,
        amx_bf16="amx_bf16" in flags and "amx_tile" in flags,
        amx_int8="amx_int8" in flags and "amx_tile" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni"} & flags),
        arm_bf16="bf16" in flags,
        capability=capability,
        source=source,
    )


def _torch_probe(name: str) -> bool:
    """One of PyTorch's private ``torch.cpu._is_*_supported`` probes; False if it is missing."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def detect_cpu_features(cpuinfo: str = CPUINFO) -> CPUFeatures:
    """The features of this machine's CPU.

    Args:
        cpuinfo: path of the cpuinfo file to parse; when it does not exist or lists no flags,
            PyTorch's probes are used instead.
    Returns:
        :class:`CPUFeatures`.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if os.path.isfile(cpuinfo):
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = cpu_flags_from_cpuinfo(f.read())
        if flags:
            return _features_from_flags(flags, capability, cpuinfo)
    return CPUFeatures(
        avx2=_torch_probe("_is_avx2_supported"),
        avx512=_torch_probe("_is_avx512_supported"),
        avx512_bf16=_torch_probe("_is_avx512_bf16_supported"),
        amx_bf16=_torch_probe("_is_amx_tile_supported"),
        amx_int8=_torch_probe("_is_amx_tile_supported"),
        vnni=_torch_probe("_is_vnni_supported"),
        capability=capability,
        source="torch",
    )
