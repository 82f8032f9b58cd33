"""tools/benchmark.py on the CPU: the features it reports, the bf16 refusal, the converted bf16
path and --quantize int8 with its agreement against float32."""
import importlib.util
import json
from pathlib import Path

import pytest

from hapnet_d2.utils.cpu_features import CPUFeatures, detect_cpu_features

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "synth" / "hapnet_tiny.yaml")
SMALL = ["--size", "64", "64", "--iters", "1", "--warmup", "0", "INPUT.CROP.SIZE", "(64, 64)"]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = _load("benchmark_tool_cpu", REPO / "tools" / "benchmark.py")


def _report(capsys, *args):
    code = benchmark.main(["--config-file", TINY, "--threads", "1", "--json", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def test_bf16_is_refused_in_one_line_without_bf16_units(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "detect_cpu_features", lambda: CPUFeatures(avx2=True, capability="AVX2"))
    monkeypatch.setattr(benchmark, "build_model", lambda cfg: pytest.fail("no model may be built"))
    assert benchmark.main(["--config-file", TINY, "--dtype", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("benchmark.py: error: --dtype bf16 refused: this CPU has no bf16 units")
    assert "found AVX2" in err and "--quantize int8" in err


def test_a_refused_precision_is_refused_before_the_first_run_is_measured(capsys, monkeypatch):
    """``--dtype fp32,bf16`` on a CPU without bf16 units stops before the fp32 run, not after it."""
    monkeypatch.setattr(benchmark, "detect_cpu_features", lambda: CPUFeatures(avx2=True, capability="AVX2"))
    monkeypatch.setattr(benchmark, "build_model", lambda cfg: pytest.fail("no model may be built"))
    assert benchmark.main(["--config-file", TINY, "--dtype", "fp32,bf16"]) == 2
    assert capsys.readouterr().err.startswith("benchmark.py: error: --dtype bf16 refused")


def test_several_precisions_in_one_run_are_compared_side_by_side(capsys, monkeypatch):
    units = CPUFeatures(avx2=True, avx512=True, avx512_bf16=True, capability="AVX512")
    monkeypatch.setattr(benchmark, "detect_cpu_features", lambda: units)
    code = benchmark.main(["--config-file", TINY, "--threads", "1", "--json", "--dtype", "fp32,bf16", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    fp32, bf16 = json.loads(captured.out.strip().splitlines()[-1])
    assert (fp32["inference_path"], bf16["inference_path"]) == ("converted fp32", "converted bf16")
    assert bf16["gflops"] == pytest.approx(fp32["gflops"], rel=1e-3)
    ratio = round(bf16["latency_ms_p50"] / fp32["latency_ms_p50"], 3)
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in benchmark.compare_runs([fp32, bf16]).splitlines()]
    assert rows[0][:5] == ["run", "p50 ms", "FPS", "MFU", "p50 / first"]
    assert rows[2][0] == "converted fp32" and float(rows[2][4]) == 1.0
    assert rows[3][0] == "converted bf16" and float(rows[3][4]) == ratio


def test_int8_needs_fp32(capsys):
    assert benchmark.main(["--config-file", TINY, "--dtype", "bf16", "--quantize", "int8"]) == 2
    assert "--quantize int8 runs on the CPU with --dtype fp32" in capsys.readouterr().err


def test_fp32_report_names_the_cpu_features(capsys):
    report = _report(capsys, *SMALL)
    assert report["cpu_features"] == detect_cpu_features().names()
    assert report["cpu_capability"] == detect_cpu_features().capability
    assert report["inference_path"] == "converted fp32" and report["quantize"] == "none"
    assert "argmax_agreement_vs_fp32" not in report


def test_int8_report_agrees_with_fp32_and_counts_the_same_work(capsys):
    fp32 = _report(capsys, *SMALL)
    int8 = _report(capsys, "--quantize", "int8", *SMALL)
    assert int8["inference_path"] == "converted int8" and int8["quantize"] == "int8"
    assert int8["params"] == fp32["params"]  # counted before quantization
    assert int8["gflops"] == pytest.approx(fp32["gflops"], rel=1e-3)
    assert 0.9 <= int8["argmax_agreement_vs_fp32"] <= 1.0
    assert 0 < int8["scores_rel_l2_vs_fp32"] < 0.05


def test_bf16_runs_the_converted_path_where_bf16_units_exist(capsys, monkeypatch):
    units = CPUFeatures(avx2=True, avx512=True, avx512_bf16=True, capability="AVX512")
    monkeypatch.setattr(benchmark, "detect_cpu_features", lambda: units)
    report = _report(capsys, "--dtype", "bf16", *SMALL)
    assert report["inference_path"] == "converted bf16"
    assert report["cpu_features"] == ["AVX2", "AVX-512", "AVX-512-BF16"]
    assert report["argmax_agreement_vs_fp32"] >= 0.95
    assert report["scores_rel_l2_vs_fp32"] < 0.02


def test_score_agreement_by_hand():
    import torch

    reference = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])]  # [2, 2, 2]
    scores = [torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])]  # last pixel flips
    out = benchmark.score_agreement(reference, scores)
    assert out["argmax_agreement_vs_fp32"] == 0.75
    assert out["scores_rel_l2_vs_fp32"] == pytest.approx((2 / 4) ** 0.5, rel=1e-3)
