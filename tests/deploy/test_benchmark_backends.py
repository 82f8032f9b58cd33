"""tools/benchmark.py --backend: the exported model timed by TorchScript / ONNX Runtime, with
the same JSON keys as PyTorch and its agreement with the PyTorch fp32 model."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "synth" / "hapnet_tiny.yaml")

spec = importlib.util.spec_from_file_location("benchmark_for_backends", REPO / "tools" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def _report(capsys, *args):
    code = benchmark.main(["--config-file", TINY, "--threads", "1", "--json", "--size", "64", "96", "--iters", "1",
                           "--warmup", "0", *args, "INPUT.CROP.SIZE", "(64, 64)", "MODEL.DEVICE", "cpu"])
    captured = capsys.readouterr()
    return code, captured


def test_exported_backend_refuses_what_it_cannot_run(capsys):
    code, captured = _report(capsys, "--backend", "onnxruntime", "--batch", "2")
    assert code == 2
    assert captured.err.strip().splitlines() == [
        "benchmark.py: error: --backend onnxruntime runs the exported fp32 whole-image model: use --batch 1, "
        "--mode whole, --dtype fp32, no --compile and a --size of multiples of 32"]


# the keys of the PyTorch backend's report (tests/tools/test_benchmark.py checks their values)
TORCH_KEYS = {"params", "gflops", "latency_ms_p50", "latency_ms_p90", "fps", "peak_memory_mb", "gemm_peak_gflops",
              "mfu", "dtype", "size", "batch", "mode", "compile", "threads", "device", "quantize", "inference_path"}


@pytest.mark.slow
def test_onnxruntime_backend_reports_the_torch_keys_and_agrees_with_pytorch(capsys):
    """One run (ONNX export, flop count and timing of the tiny model, ~40 s on a loaded CPU); the
    TorchScript backend shares the code path up to the runtime call (tests/deploy/test_export.py
    checks the TorchScript file itself)."""
    code, captured = _report(capsys, "--backend", "onnxruntime")
    assert code == 0, captured.err
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert TORCH_KEYS <= set(report)
    assert report["backend"] == "onnxruntime" and report["inference_path"] == "exported onnxruntime fp32"
    assert report["argmax_agreement_vs_fp32"] == 1.0 and report["scores_rel_l2_vs_fp32"] < 1e-5
    assert report["latency_ms_p50"] > 0 and report["gflops"] > 0


def test_several_backends_in_one_run_are_compared_side_by_side(capsys):
    code, captured = _report(capsys, "--backend", "torch,torch")
    assert code == 0, captured.err
    reports = json.loads(captured.out.strip().splitlines()[-1])
    assert [r["backend"] for r in reports] == ["torch", "torch"]
    table = benchmark.compare_runs(reports)
    ratio = round(reports[1]["latency_ms_p50"] / reports[0]["latency_ms_p50"], 3)
    assert table.splitlines()[0].split("|")[5].strip() == "p50 / first"
    assert float(table.splitlines()[2].split("|")[5]) == 1.0  # the first row is the reference
    assert float(table.splitlines()[3].split("|")[5]) == ratio
