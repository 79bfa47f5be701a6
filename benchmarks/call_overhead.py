"""The fixed cost of one native layer call, and what it weighs at SmolLM2-135M's layer shapes.

    python benchmarks/call_overhead.py [--threads 1,2] [--save benchmarks/results]

Per (shape, format, threads), batch 1, fp32, these are timed side by side in one interleaved loop
(`bench.speed.latency.run_rounds`: forward and reverse order on alternate rounds, at least 15 rounds):
- `torch`: F.linear on the dense weight (PyTorch's kernel, what the dense reference runs);
- `module`: SparseLinear.forward, the path a model's layer takes (Python checks, call counting, bias);
- `before`: the same layer call as it was before the extension took raw addresses (every call handed the
  activations and the output to the extension through DLPack), kept here to measure the difference;
- `module_spin`: the same with the native thread pool spinning `--spin-us` between calls instead of
  sleeping at once (`_native.set_spin_us`);
- `custom_op`: the same native call registered as a PyTorch operator (`torch.library.custom_op`, with a
  fake implementation, so that `torch.compile` could trace through it), called eagerly as a model would;
- `packed`: Packed.mm with a preallocated output (the Python wrapper around the extension);
- `raw_dlpack` and `raw_at`: the extension's two entry points with everything prepared: tensors exchanged
  through DLPack, or addresses (what is left is the kernel and the binding's own cost).
Each timing is one burst of calls (so the timer's resolution does not matter) divided by its length.
The shape 8x64 has almost no arithmetic: its time per call is the fixed cost. One weight per row is
called again and again, so it sits in cache: these are call costs, not the speed of a layer in a model
(whose weights stream from memory; the latency stage's per-shape figures rotate copies for that). Shapes are those of SmolLM2
(576x576 q/o, 192x576 k/v, 1536x576 gate/up, 576x1536 down); formats are those `native` picks for 2:4,
50% and 70%, and our dense kernel.

Medians with the distribution-free 95% interval of the median, per call, in microseconds; the instruction
set is the extension's (`SPARSEBENCH_ISA=avx2` lowers it).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import _native
from bench.patterns import NM, Unstructured
from bench.provenance import git_state, hardware_fingerprint, package_versions
from bench.speed.latency import run_rounds
from bench.speed.packers import MAX_BATCH, SparseLinear
from bench.stats import Summary, median_interval

from _results import save  # benchmarks/_results.py (these scripts run from benchmarks/)

SHAPES = ((8, 64), (576, 576), (192, 576), (1536, 576), (576, 1536))
FORMATS = {"dense": (None, "dense", {}), "2:4 nm": (NM(2, 4), "nm", {"nm": (2, 4)}),
           "50% bitmask": (Unstructured(0.5), "bitmask", {}), "70% csr16": (Unstructured(0.7), "csr16", {})}


def burst(fn, calls: int):
    def run():
        for _ in range(calls):
            fn()
    return run


def before(module: SparseLinear, x: torch.Tensor) -> torch.Tensor:
    """SparseLinear.forward as it was with tensors exchanged through DLPack on every call."""
    rows = x.numel() // module.in_features
    if x.device.type != "cpu" or rows > MAX_BATCH:
        raise ValueError("the benchmark times the native path only")
    module.calls["native"] += 1
    x2 = x.reshape(rows, module.in_features).to(torch.float32).contiguous()
    out = torch.empty(rows, module.out_features, dtype=torch.float32)
    module.packed.native.mm(x2, out, torch.get_num_threads())
    y = out.to(x.dtype)
    if module.bias is not None:
        y += module.bias
    return y.view(*x.shape[:-1], module.out_features)


_LAYERS: dict[int, SparseLinear] = {}  # what the operator's integer handle names (an op takes no Python objects)


@torch.library.custom_op("sparsebench_bench::native_linear", mutates_args=())
def native_linear(x: torch.Tensor, handle: int) -> torch.Tensor:
    module = _LAYERS[handle]
    out = torch.empty(x.shape[0], module.out_features, dtype=torch.float32)
    module.packed.native.mm_at(x.data_ptr(), out.data_ptr(), x.shape[0], torch.get_num_threads())
    return out


@native_linear.register_fake
def _(x: torch.Tensor, handle: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], _LAYERS[handle].out_features)


def measure(n: int, k: int, label: str, threads: int, rounds: int, calls: int, gen: torch.Generator,
            spin_us: int) -> dict:
    pattern, fmt, kw = FORMATS[label]
    w = torch.randn(n, k, generator=gen)
    if pattern is not None:
        w = w.masked_fill(~pattern.mask(w.abs()), 0)
    linear = torch.nn.Linear(k, n, bias=False)
    linear.weight = torch.nn.Parameter(w, requires_grad=False)
    module = SparseLinear.from_linear(linear, fmt, **kw)
    packed = module.packed
    x = torch.randn(1, k, generator=gen)
    out = torch.empty(1, n)
    torch.set_num_threads(threads)
    _LAYERS[id(module)] = module
    fns = {"torch": lambda: F.linear(x, w), "module": lambda: module(x), "before": lambda: before(module, x),
           "custom_op": lambda: native_linear(x, id(module)),
           "packed": lambda: packed.mm(x, threads, out), "raw_dlpack": lambda: packed.native.mm(x, out, threads),
           "raw_at": lambda: packed.native.mm_at(x.data_ptr(), out.data_ptr(), 1, threads)}
    spin = {"module_spin": spin_us}  # the same module call with the pool's threads spinning between calls
    with torch.inference_mode():
        torch.testing.assert_close(module(x), F.linear(x, w), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(before(module, x), module(x), atol=0, rtol=0)
        torch.testing.assert_close(native_linear(x, id(module)), module(x), atol=0, rtol=0)
        slots = {name: (lambda f=burst(f, calls): (lambda: (_native.set_spin_us(0), f()))) for name, f in fns.items()}
        slots["module_spin"] = lambda f=burst(fns["module"], calls): (lambda: (_native.set_spin_us(spin["module_spin"]), f()))
        got = run_rounds(slots, [],
                         warmup=2, repeats=rounds, max_repeats=rounds, precision=1.0, max_seconds=1e9)
    row = {"N": n, "K": k, "format": label, "threads": threads, "calls_per_timing": calls, "rounds": got.rounds}
    for name, times in got.times.items():
        per_call = [t / calls * 1e6 for t in times]
        lo, hi, coverage = median_interval(per_call)
        row[name] = {**Summary.from_values(per_call).to_dict(), "lo": lo, "hi": hi, "coverage": coverage}
    _native.set_spin_us(0)
    del _LAYERS[id(module)]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--spin-us", type=int, default=50, help="the pool's spin for the module_spin column")
    ap.add_argument("--save", type=Path, help="folder to write call-overhead-<isa>-<time>.json into")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for n, k in [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]:
            for label in FORMATS:
                row = measure(n, k, label, threads, args.rounds, args.calls, gen, args.spin_us)
                rows.append(row)
                cells = "  ".join(f"{c} {row[c]['median']:.2f} [{row[c]['lo']:.2f}-{row[c]['hi']:.2f}]"
                                  for c in ("torch", "before", "module", "custom_op", "module_spin", "raw_dlpack", "raw_at"))
                print(f"{n}x{k} {label:<12} t={threads}: {cells}  (us/call)", flush=True)
    record = {"benchmark": "call_overhead", "isa": _native.isa(), **git_state(), "versions": package_versions(),
              "hardware": hardware_fingerprint(), "finished_at": datetime.now(timezone.utc).isoformat(), "rows": rows}
    if args.save:
        print(save(args.save, f"call-overhead-{_native.isa()}", record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
