#!/usr/bin/env python
"""Inference speed of a HAPNet config, measured against the machine's own GEMM peak.

    python tools/benchmark.py --config-file configs/mfnet/hapnet_beitv2_b.yaml \
        --size 480 480 --dtype fp32 --threads 2 --iters 10 --warmup 2 --json

Builds the model (random weights unless MODEL.WEIGHTS is given), times ``--iters`` inference
calls on a random RGB-T batch after ``--warmup`` untimed ones, and reports:

* ``params``: parameters used at inference (the training-only aux head left out);
* ``gflops``: real GFLOPs of one call (2 x fvcore's multiply-add count, the whole batch);
* ``latency_ms_p50`` / ``latency_ms_p90`` of one call, ``fps`` = batch / p50;
* ``peak_memory_mb``: growth of the peak RSS during inference on CPU (``resource``), or
  ``torch.cuda.max_memory_allocated`` on GPU;
* ``gemm_peak_gflops``: a large square matmul of the same dtype, timed after every timed call
  (best of 3 products each time, median over the calls), so that both see the same load;
* ``mfu`` = gflops / p50 / gemm_peak_gflops (model FLOP utilisation).

On the CPU the model is converted once for inference
(:func:`hapnet_d2.utils.cpu_inference.prepare_for_cpu_inference`) and freed memory is kept for
reuse (``retain_freed_memory``); ``--dtype bf16`` runs the converted bf16 model (weights in bf16,
float32 islands for the deformable sampling, the norms and the final scores) and is refused with
one line on a CPU without bf16 units (``cpu_features`` in the report: AVX2, AVX-512,
AVX-512-BF16, AMX). ``--quantize int8`` runs the Linear layers int8-quantized (dynamic
quantization, for CPUs without bf16 units) and reports ``argmax_agreement_vs_fp32`` and
``scores_rel_l2_vs_fp32`` against float32 scores of the same inputs (bf16 reports them too).
``fp16`` and GPU runs use ``torch.autocast`` (the deformable attention sampling, its softmax and
the normalisations stay in float32). With ``--json`` the last line printed is one JSON object
(a list of them, one per run, for several ``--backend`` or ``--dtype`` values: ``--dtype fp32,bf16``
measures both precisions in one run).

``--backend torchscript|onnxruntime`` exports the fp32 model at ``--size`` (hapnet_d2.export, as
tools/deploy/export_model.py) and times that runtime on the same input (one image, whole-image);
``--quantize int8`` with onnxruntime times ONNX Runtime's dynamic int8 quantization. Both report
``argmax_agreement_vs_fp32`` and ``scores_rel_l2_vs_fp32`` against the PyTorch fp32 model.

On a machine shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads
that wait for a descheduled peer made a 2-thread run 20x slower here (README "Speed").
"""
import argparse
import contextlib
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import hapnet_d2  # noqa: F401  (first: registration, and the filter for Detectron2's import-time warnings)
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.config import get_hapnet_cfg_or_exit
from hapnet_d2.export.backends import BACKENDS, benchmark_backend
from hapnet_d2.utils.analysis import flop_counter, parameters_by_component
from hapnet_d2.utils.cpu_features import CPUFeatures, detect_cpu_features
from hapnet_d2.utils.cpu_inference import prepare_for_cpu_inference, retain_freed_memory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# GEMM probe size: grows from GEMM_MIN_SIZE until one product takes GEMM_TARGET_SECONDS (or
# reaches GEMM_MAX_SIZE), so machines without fast bf16/fp16 units are not stalled.
GEMM_MIN_SIZE, GEMM_MAX_SIZE, GEMM_TARGET_SECONDS = 256, 4096, 0.25

logger = logging.getLogger("hapnet_d2.benchmark")


def _comma_list(text: str, allowed, what: str) -> List[str]:
    """One name or several, comma-separated, each one of ``allowed``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what} from {', '.join(allowed)}, comma-separated")
    return names


def backend_list(text: str) -> List[str]:
    """``--backend`` value: one backend or several, comma-separated, each one of BACKENDS."""
    return _comma_list(text, BACKENDS, "backends")


def dtype_list(text: str) -> List[str]:
    """``--dtype`` value: one precision or several, comma-separated, each one of DTYPES."""
    return _comma_list(text, sorted(DTYPES), "dtypes")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--size", nargs=2, type=int, default=(480, 480), metavar=("H", "W"))
    parser.add_argument("--dtype", type=dtype_list, default=["fp32"], metavar="{" + ",".join(sorted(DTYPES)) + "}[,...]",
                        help="precision; several, comma-separated (e.g. fp32,bf16): measured one after the "
                        "other in this run and compared side by side (latency ratio to the first)")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--iters", type=int, default=10, help="timed calls")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--mode", choices=["whole", "slide"], default="whole",
                        help="whole-image or sliding-window inference (TEST.MODE)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbone and the head")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8 dynamic quantization of the Linear layers (CPU, --dtype fp32)")
    parser.add_argument("--backend", type=backend_list, default=["torch"], metavar="{" + ",".join(BACKENDS) + "}[,...]",
                        help="torch: the PyTorch model; torchscript / onnxruntime: the model exported at "
                        "--size (tools/deploy/export_model.py) and run by that runtime (fp32, batch 1, "
                        "whole-image; with --quantize int8, ONNX Runtime's dynamic int8 quantization). "
                        "Several, comma-separated (e.g. torch,torchscript,onnxruntime): measured one after "
                        "the other in this run and compared side by side (latency ratio to the first)")
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def setup(args):
    """Config from ``--config-file`` and overrides; TEST.MODE from ``--mode``."""
    cfg = get_hapnet_cfg_or_exit(args.config_file, args.opts)  # config errors: one line, exit 2
    cfg.TEST.MODE = args.mode
    cfg.freeze()
    return cfg


def check_args(args) -> None:
    """Raise ValueError on arguments that cannot be benchmarked."""
    if not os.path.isfile(args.config_file):
        raise ValueError(f"{args.config_file}: config file does not exist")
    h, w = args.size
    if h <= 0 or w <= 0 or args.batch <= 0 or args.iters <= 0 or args.warmup < 0:
        raise ValueError(
            f"--size, --batch and --iters must be positive and --warmup >= 0, got size {h}x{w}, "
            f"batch {args.batch}, iters {args.iters}, warmup {args.warmup}"
        )
    if args.mode == "slide" and args.batch != 1:
        raise ValueError("--mode slide runs one image at a time (its windows form the batch): "
                         "use --batch 1")
    if args.backend != "torch" and (args.batch != 1 or args.mode != "whole" or args.compile
                                    or args.dtype != "fp32" or h % 32 or w % 32):
        raise ValueError(f"--backend {args.backend} runs the exported fp32 whole-image model: use --batch 1, "
                         f"--mode whole, --dtype fp32, no --compile and a --size of multiples of 32")


def check_precision(args, device: torch.device, features: CPUFeatures) -> None:
    """Raise ValueError (one line) on a precision this device cannot run usefully: bf16 on a CPU
    without bf16 units (emulated, ~100x slower than fp32), int8 off the CPU or with another dtype."""
    if args.quantize == "int8" and (device.type != "cpu" or args.dtype != "fp32"):
        raise ValueError(f"--quantize int8 runs on the CPU with --dtype fp32, got device "
                         f"{device.type} and --dtype {args.dtype}")
    if device.type == "cpu" and args.dtype == "bf16" and features.bf16_refusal():
        raise ValueError(f"--dtype bf16 refused: {features.bf16_refusal()}")


def random_inputs(batch: int, height: int, width: int, seed: int = 0) -> List[Dict]:
    """``batch`` Detectron2-style input dicts: ``image`` [3, H, W] uint8 and ``thermal``
    [1, H, W] float (0-255), random."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
            "thermal": torch.randint(0, 256, (1, height, width), generator=g).float(),
        }
        for _ in range(batch)
    ]


def autocast(device_type: str, dtype: torch.dtype):
    """``torch.autocast`` to ``dtype``, or a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], iters: int, warmup: int, device: torch.device
) -> List[float]:
    """Wall-clock seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def gemm_size(dtype: torch.dtype, device: torch.device) -> int:
    """Side ``n`` of the square GEMM probe: doubles from ``GEMM_MIN_SIZE`` until one ``n x n``
    product takes ``GEMM_TARGET_SECONDS`` or ``n`` reaches ``GEMM_MAX_SIZE``."""
    n = GEMM_MIN_SIZE
    while n < GEMM_MAX_SIZE:
        a = torch.randn(n, n, device=device).to(dtype)
        if min(time_calls(lambda: torch.matmul(a, a), 1, 1, device)) >= GEMM_TARGET_SECONDS:
            break
        n *= 2
    return n


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device, n: int, repeats: int = 3) -> float:
    """Best real GFLOP/s (``2 n^3`` per product) of ``repeats`` square ``n x n`` matmuls."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = min(time_calls(lambda: torch.matmul(a, b), repeats, 1, device))
    return 2 * n**3 / seconds / 1e9


def time_with_gemm_peak(
    fn: Callable[[], object], iters: int, warmup: int, dtype: torch.dtype, device: torch.device
) -> Tuple[List[float], List[float]]:
    """Time ``fn`` and probe the GEMM peak right after each timed call.

    On a shared machine the load changes during a run; interleaving gives the model and the
    GEMM probe the same conditions, so their medians can be compared (the MFU).

    Returns:
        seconds of each of the ``iters`` calls, and the GEMM peak (GFLOP/s) after each.
    """
    n = gemm_size(dtype, device)
    for _ in range(warmup):
        fn()
    times, peaks = [], []
    for _ in range(iters):
        times += time_calls(fn, 1, 0, device)
        peaks.append(gemm_peak_gflops(dtype, device, n))
    return times, peaks


def inference_gflops(model: torch.nn.Module, inputs: List[Dict]) -> float:
    """Real GFLOPs (2 x fvcore multiply-adds) of one ``model(inputs)`` call in eval mode."""
    with torch.no_grad():
        return 2 * flop_counter(model, inputs).total() / 1e9


def inference_params(model: torch.nn.Module) -> int:
    """Parameters used at inference: all but the training-only aux head."""
    counts = parameters_by_component(model)
    return counts["total"] - counts["aux head (training only)"]


def semantic_scores(model: torch.nn.Module, inputs: List[Dict]) -> List[torch.Tensor]:
    """The ``sem_seg`` scores ``[K, H, W]`` of one float32 ``model(inputs)`` call."""
    with torch.no_grad():
        return [o["sem_seg"].float() for o in model(inputs)]


def score_agreement(reference: List[torch.Tensor], scores: List[torch.Tensor]) -> Dict[str, float]:
    """How close ``scores`` are to the float32 ``reference`` (lists of ``[K, H, W]``).

    Returns:
        ``argmax_agreement_vs_fp32``: fraction of the pixels with the same top class;
        ``scores_rel_l2_vs_fp32``: ||scores - reference|| / ||reference|| over all images.
    """
    same = sum((s.argmax(0) == r.argmax(0)).sum().item() for s, r in zip(scores, reference))
    pixels = sum(r[0].numel() for r in reference)
    diff = sum(((s.float() - r) ** 2).sum().item() for s, r in zip(scores, reference))
    norm = sum((r**2).sum().item() for r in reference)
    return {
        "argmax_agreement_vs_fp32": round(same / pixels, 5),
        "scores_rel_l2_vs_fp32": float(f"{(diff / max(norm, 1e-30)) ** 0.5:.3g}"),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(args) -> Dict[str, object]:
    """Build the model of ``args`` and measure it; returns the report dict."""
    check_args(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = setup(args)
    device = torch.device(cfg.MODEL.DEVICE)
    features = detect_cpu_features()
    check_precision(args, device, features)
    dtype = DTYPES[args.dtype]
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ValueError(f"{weights}: MODEL.WEIGHTS file does not exist")
    malloc_retained = device.type == "cpu" and retain_freed_memory()
    model = build_model(cfg).eval()
    if weights:
        HAPNetCheckpointer(model, allow_unsafe=cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS).load(weights)
    inputs = random_inputs(args.batch, *args.size)
    params = inference_params(model)
    exported, exported_report, workdir = None, {}, None
    if args.backend != "torch":  # exported from the fp32 model, int8 by ONNX Runtime's quantizer
        workdir = tempfile.TemporaryDirectory(prefix="hapnet_benchmark_")
        exported, exported_report = benchmark_backend(args.backend, model, cfg, inputs, workdir.name,
                                                      torch.get_num_threads(), args.quantize)
    # CPU: the model converted once (fp32 / bf16 / int8); fp16 and GPUs: autocast
    precision = "int8" if args.quantize == "int8" else args.dtype
    converted = exported is None and device.type == "cpu" and precision in ("fp32", "bf16", "int8")
    reference, gflops = None, None
    if converted and precision != "fp32":
        # float32 scores of the same inputs and the FLOPs, before the weights change
        reference = semantic_scores(model, inputs)
        gflops = inference_gflops(model, inputs)
    if converted:
        prepare_for_cpu_inference(model, precision)
    autocast_dtype = torch.float32 if converted else dtype
    eager_parts = model.backbone, model.sem_seg_head
    if args.compile:
        model.backbone = torch.compile(model.backbone)
        model.sem_seg_head = torch.compile(model.sem_seg_head)

    def run():
        if exported is not None:
            return exported()
        with torch.no_grad(), autocast(device.type, autocast_dtype):
            return model(inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mb()
    times, gemm_peaks = time_with_gemm_peak(run, args.iters, args.warmup, dtype, device)
    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_memory = peak_rss_mb() - rss_before
    # FLOPs are counted on the eager modules, after timing so that tracing does not raise the
    # peak RSS first
    model.backbone, model.sem_seg_head = eager_parts
    if gflops is None:
        gflops = inference_gflops(model, inputs)
    gemm_peak = statistics.median(gemm_peaks)
    agreement = {}
    if reference is not None:
        agreement = score_agreement(reference, [o["sem_seg"] for o in run()])

    p50 = statistics.median(times)
    p90 = float(np.percentile(times, 90))
    cpu = {"cpu_features": features.names(), "cpu_capability": features.capability}
    return {
        "params": params,
        "gflops": round(gflops, 2),
        "latency_ms_p50": round(1000 * p50, 1),
        "latency_ms_p90": round(1000 * p90, 1),
        "fps": round(args.batch / p50, 3),
        "peak_memory_mb": round(peak_memory, 1),
        "gemm_peak_gflops": round(gemm_peak, 1),
        "mfu": round(gflops / p50 / gemm_peak, 3),
        "dtype": args.dtype,
        "size": list(args.size),
        "batch": args.batch,
        "mode": args.mode,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "device": device.type,
        "quantize": args.quantize,
        "backend": args.backend,
        "inference_path": (f"exported {args.backend} {precision}" if exported is not None
                           else f"converted {precision}" if converted else f"autocast {args.dtype}"),
        **exported_report,
        **agreement,
        **(cpu if device.type == "cpu" else {}),
        "malloc_retained": malloc_retained,
    }


def compare_runs(reports: List[Dict[str, object]]) -> str:
    """A side-by-side table of several runs' reports (backends, precisions): latency, FPS, MFU,
    ratio to the first."""
    first = reports[0]["latency_ms_p50"]
    rows = [[r["inference_path"], r["latency_ms_p50"], r["fps"], r["mfu"], round(r["latency_ms_p50"] / first, 3),
             r.get("argmax_agreement_vs_fp32", "")] for r in reports]
    return tabulate(rows, headers=["run", "p50 ms", "FPS", "MFU", "p50 / first", "argmax vs fp32"],
                    tablefmt="github")


def runs_of(args) -> List[argparse.Namespace]:
    """One set of arguments per (backend, dtype) of ``args``; every one is checked before any is
    measured, so that a refused second run does not come after minutes of the first (ValueError)."""
    runs = [argparse.Namespace(**{**vars(args), "backend": backend, "dtype": dtype})
            for backend in args.backend for dtype in args.dtype]
    features = detect_cpu_features()
    for run in runs:
        check_args(run)
        check_precision(run, torch.device(setup(run).MODEL.DEVICE), features)
    return runs


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore", abbrev_name="fvcore")
    setup_logger(name="hapnet_d2", abbrev_name="hapnet")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    reports = []
    try:
        runs = runs_of(args)
    except ValueError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    for run in runs:
        try:
            report = benchmark(run)
        except ValueError as e:
            print(f"benchmark.py: error: {e}", file=sys.stderr)
            return 2
        rows = [[k, v] for k, v in report.items()]
        logger.info("Inference benchmark of %s:\n%s", args.config_file,
                    tabulate(rows, headers=["metric", "value"], tablefmt="github"))
        reports.append(report)
    if len(reports) > 1:
        logger.info("Runs compared (%s, %dx%d):\n%s", args.config_file, *args.size, compare_runs(reports))
    if args.json:  # one object per run: one object, or a list of them
        print(json.dumps(reports[0] if len(reports) == 1 else reports), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
