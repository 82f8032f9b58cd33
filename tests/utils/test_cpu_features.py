"""CPU feature detection from /proc/cpuinfo texts (x86 and aarch64) and from PyTorch's probes."""
import torch

from hapnet_d2.utils.cpu_features import CPUFeatures, cpu_flags_from_cpuinfo, detect_cpu_features

# abridged /proc/cpuinfo of an AMD EPYC (Zen 3): AVX2, no AVX-512
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu avx2 fma
"""
# abridged: an Intel Sapphire Rapids server
SPR = """processor : 0
flags : fpu avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
# abridged: an Intel Cooper Lake / AMD Zen 4 style AVX-512-BF16 CPU without AMX
AVX512_BF16 = "flags : avx2 fma avx512f avx512_vnni avx512_bf16\n"
# abridged: an aarch64 Neoverse V1
NEOVERSE = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm sve
"""


def _features(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return detect_cpu_features(str(path))


def test_flags_of_the_first_processor_are_read():
    flags = cpu_flags_from_cpuinfo(ZEN3)
    assert {"avx2", "fma", "sha_ni"} <= flags and "sysret_ss_attrs" not in flags
    assert cpu_flags_from_cpuinfo("processor : 0\n") == set()


def test_avx2_machine_has_no_bf16_units(tmp_path):
    f = _features(tmp_path, ZEN3)
    assert (f.avx2, f.avx512, f.avx512_bf16, f.amx_bf16, f.vnni) == (True, False, False, False, False)
    assert not f.has_bf16_units
    assert f.names() == ["AVX2"]
    assert f.source == str(tmp_path / "cpuinfo")
    reason = f.bf16_refusal()
    assert "no bf16 units" in reason and "found AVX2" in reason and "\n" not in reason


def test_sapphire_rapids_has_avx512_bf16_and_amx(tmp_path):
    f = _features(tmp_path, SPR)
    assert f.names() == ["AVX2", "AVX-512", "AVX-512-BF16", "AMX-BF16", "AMX-INT8", "VNNI"]
    assert f.has_bf16_units and f.bf16_refusal() is None


def test_avx512_bf16_without_amx(tmp_path):
    f = _features(tmp_path, AVX512_BF16)
    assert f.avx512_bf16 and not f.amx_bf16 and f.has_bf16_units


def test_amx_needs_the_tile_flag(tmp_path):
    f = _features(tmp_path, "flags : avx2 fma amx_bf16\n")
    assert not f.amx_bf16 and not f.has_bf16_units


def test_aarch64_bf16_extension(tmp_path):
    f = _features(tmp_path, NEOVERSE)
    assert f.arm_bf16 and f.has_bf16_units and not f.avx2
    assert f.names() == ["ARM-BF16"]


def test_without_cpuinfo_the_torch_probes_are_used(tmp_path):
    f = detect_cpu_features(str(tmp_path / "missing"))
    assert f.source == "torch"
    assert f.capability == torch.backends.cpu.get_cpu_capability()
    assert isinstance(f, CPUFeatures)
    if hasattr(torch.cpu, "_is_avx2_supported"):
        assert f.avx2 == torch.cpu._is_avx2_supported()


def test_summary_names_features_and_torch_kernels():
    f = CPUFeatures(avx2=True, capability="AVX2")
    assert f.summary() == "AVX2 (torch kernels: AVX2)"
    assert CPUFeatures().summary() == "none (torch kernels: DEFAULT)"


def test_avx512_without_bf16_is_not_enough(tmp_path):
    """Skylake-SP / Ice Lake: AVX-512 (and VNNI) but no bf16 instructions."""
    f = _features(tmp_path, "flags : avx2 fma avx512f avx512bw avx512vl avx512_vnni\n")
    assert f.avx512 and f.vnni and not f.avx512_bf16 and not f.has_bf16_units
    assert f.names() == ["AVX2", "AVX-512", "VNNI"]
    assert "found AVX2 AVX-512 VNNI" in f.bf16_refusal()
