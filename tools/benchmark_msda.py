#!/usr/bin/env python
"""Benchmark the compiled multi-scale deformable attention against the PyTorch reference.

Times :func:`hapnet_d2.ops.ms_deform_attn` with ``impl="kernel"`` and ``impl="pytorch"`` at the
shapes HAPNet uses for a 480x480 input (batch 1), and reports the speed-ups and the largest
differences of outputs and gradients. Example::

    python tools/benchmark_msda.py --iters 10 --threads 2 --json
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from tabulate import tabulate

from hapnet_d2.ops import kernel_available, level_start_index, ms_deform_attn


@dataclass(frozen=True)
class Case:
    """One MSDA call: Lq queries attending to the value levels ``value_shapes``."""

    name: str
    num_queries: int
    value_shapes: Tuple[Tuple[int, int], ...]
    heads: int
    head_dim: int
    points: int


# HAPNet at 480x480: ViT tokens at stride 16 (30x30), spatial prior at strides 8/16/32.
CASES = (
    Case("GLCA injector", 30 * 30, ((60, 60), (30, 30), (15, 15)), 12, 384 // 12, 4),
    Case("CCG extractor", 60 * 60 + 30 * 30 + 15 * 15, ((30, 30),), 12, 384 // 12, 4),
    Case(
        "pixel decoder layer", 60 * 60 + 30 * 30 + 15 * 15, ((60, 60), (30, 30), (15, 15)), 8, 32, 4
    ),
)


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> List[torch.Tensor]:
    """Random inputs for ``case`` (batch 1, float32), locations spilling slightly off the maps.

    Returns:
        list: value [1, S, M, D], spatial_shapes [L, 2], level_start_index [L],
        sampling_locations [1, Lq, M, L, P, 2], attention_weights [1, Lq, M, L, P].
    """
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(case.value_shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(dim=1)
    start_index = level_start_index(spatial_shapes)
    levels = len(case.value_shapes)
    value = torch.randn(1, int(sizes.sum()), case.heads, case.head_dim, generator=generator)
    locations = torch.rand(
        1, case.num_queries, case.heads, levels, case.points, 2, generator=generator
    )
    logits = torch.randn(1, case.num_queries, case.heads, levels * case.points, generator=generator)
    weights = logits.softmax(-1).view(1, case.num_queries, case.heads, levels, case.points)
    inputs = [value, spatial_shapes, start_index, locations * 1.1 - 0.05, weights]
    return [t.to(device) for t in inputs]


def median_seconds(
    fns: Dict[str, Callable[[], None]], iters: int, warmup: int, device: torch.device
) -> Dict[str, float]:
    """Median wall time of each ``fn()`` over ``iters`` runs after ``warmup`` untimed runs.

    The functions run in turn within each iteration, so that a load change on a shared
    machine affects all of them alike.
    """
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for i in range(warmup + iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def run_case(case: Case, args: argparse.Namespace) -> Dict[str, object]:
    """Time both implementations on ``case`` and compare their outputs and gradients."""
    device = torch.device(args.device)
    value, spatial_shapes, start_index, locations, weights = make_inputs(case, device)
    grad_output = torch.randn(1, case.num_queries, case.heads * case.head_dim, device=device)

    def forward(impl: str, leaves: Sequence[torch.Tensor]) -> torch.Tensor:
        return ms_deform_attn(
            leaves[0], spatial_shapes, start_index, leaves[1], leaves[2], impl=impl
        )

    row: Dict[str, object] = {
        "case": case.name,
        "queries": case.num_queries,
        "values": int(spatial_shapes.prod(dim=1).sum()),
        "levels": len(case.value_shapes),
        "heads": case.heads,
        "head_dim": case.head_dim,
        "points": case.points,
    }
    impls = ("pytorch", "kernel")
    leaves = {
        impl: [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        for impl in impls
    }

    def run_forward(impl: str) -> None:
        with torch.no_grad():
            forward(impl, leaves[impl])

    def run_forward_backward(impl: str) -> torch.Tensor:
        for leaf in leaves[impl]:
            leaf.grad = None
        output = forward(impl, leaves[impl])
        output.backward(grad_output)
        return output.detach()

    for mode, run in (("fwd", run_forward), ("fwd_bwd", run_forward_backward)):
        fns = {impl: functools.partial(run, impl) for impl in impls}
        medians = median_seconds(fns, args.iters, args.warmup, device)
        for impl in impls:
            row[f"{impl}_{mode}_ms"] = 1e3 * medians[impl]

    results = {impl: (run_forward_backward(impl), [x.grad for x in leaves[impl]]) for impl in impls}
    (ref_out, ref_grads), (ker_out, ker_grads) = results["pytorch"], results["kernel"]
    row["fwd_speedup"] = row["pytorch_fwd_ms"] / row["kernel_fwd_ms"]
    row["fwd_bwd_speedup"] = row["pytorch_fwd_bwd_ms"] / row["kernel_fwd_bwd_ms"]
    row["max_abs_diff_out"] = (ref_out - ker_out).abs().max().item()
    for name, ref, ker in zip(("value", "locations", "weights"), ref_grads, ker_grads):
        # Location gradients scale with the map size (hundreds here): report relative errors too.
        row[f"max_abs_diff_grad_{name}"] = (ref - ker).abs().max().item()
        row[f"max_rel_diff_grad_{name}"] = row[f"max_abs_diff_grad_{name}"] / ref.abs().max().item()
    return row


def format_table(rows: List[Dict[str, object]]) -> str:
    """A readable table of the benchmark rows."""
    headers = [
        "case",
        "Lq",
        "S",
        "ref fwd ms",
        "kernel fwd ms",
        "fwd x",
        "ref f+b ms",
        "kernel f+b ms",
        "f+b x",
        "max|d out|",
        "max|d grad| / max|grad|",
    ]
    table = [
        [
            r["case"],
            r["queries"],
            r["values"],
            f"{r['pytorch_fwd_ms']:.1f}",
            f"{r['kernel_fwd_ms']:.1f}",
            f"{r['fwd_speedup']:.1f}",
            f"{r['pytorch_fwd_bwd_ms']:.1f}",
            f"{r['kernel_fwd_bwd_ms']:.1f}",
            f"{r['fwd_bwd_speedup']:.1f}",
            f"{r['max_abs_diff_out']:.1e}",
            f"{max(r[f'max_rel_diff_grad_{n}'] for n in ('value', 'locations', 'weights')):.1e}",
        ]
        for r in rows
    ]
    return tabulate(table, headers=headers, tablefmt="github")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the results as JSON last")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--iters and --threads must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not kernel_available(args.device):
        sys.exit(
            f"benchmark_msda.py: the compiled torch_ms_deform_attn kernel is not available on "
            f"{args.device}; install it with: pip install --no-build-isolation torch-ms-deform-attn"
        )
    torch.set_num_threads(args.threads)
    rows = [run_case(case, args) for case in CASES]
    print(
        f"MSDA kernel vs PyTorch reference, batch 1, float32, {args.device}, "
        f"{args.threads} threads, median of {args.iters} runs after {args.warmup} warm-up, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(format_table(rows))
    if args.json:
        settings = {k: getattr(args, k) for k in ("device", "threads", "iters", "warmup")}
        settings["load_average"] = os.getloadavg()[0]
        print(json.dumps({**settings, "torch": torch.__version__, "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
