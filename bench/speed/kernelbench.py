"""Kernel benchmark: native sparse formats against our dense kernel, PyTorch dense and PyTorch CSR.

    bench kernels                          # LLM layer shapes, batch 1/8/32, 50/70/90% and 2:4/4:8, fp32+bf16
    bench kernels --json                   # one JSON object per row on stdout
    bench kernels --quick                  # small shapes, a few repeats: a smoke run in seconds
    python benchmarks/kernels.py           # the full run, saved under benchmarks/results/

For every (shape, dtype, batch) the candidates below are timed in one interleaved loop (forward order on
even rounds, reverse on odd), each call on the next of several copies of its weight so that the weights
stream from memory as they do in a model, not from the last-level cache. Reported per row: median time
with p10/p90 and count, GB/s of weight bytes read (and as a fraction of the measured read bandwidth),
speedup against our dense kernel, PyTorch dense and PyTorch CSR at the same sparsity, each the median over
rounds of the paired ratio (the two calls of a round share the machine's state: memory bandwidth shared
with other tenants drifts by 2x within seconds on some machines), with p10/p90 of the ratio against our
dense kernel, and the ideal speedup: dense bytes / bytes this format reads.

Weights are random normal with magnitude masks from `bench.patterns` (unstructured: the smallest |w| of
the whole matrix; N:M: the smallest in each group), one mask per shape for every dtype. Only the zeros
matter to the kernels, not where the values came from.

Activation sparsity (`activations`, fractions of the input entries): the activations of those rows have
that fraction of entries zeroed, at random positions drawn independently per row (as magnitude thresholds
leave them), and the input-major formats run on them: `dense_in` on the dense weight, `bitmask_in` on the
50% and 2:4 weights. An input is skipped only when it is zero in every row of the batch, so at batch 8 and
above few are; each row records the fraction its kernel skipped, and its ideal counts only the weights of
the inputs kept. Their speedups are against our dense kernel on the dense activations (the same figure as
on the zeroed ones: a dense kernel multiplies zeros at full cost).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from bench.speed.latency import interleave
from bench.patterns import NM, Dense, Pattern, Unstructured
from bench.stats import Speedup, Summary

LLM_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096))
QUICK_SHAPES = ((256, 512), (384, 1024))


@dataclass(frozen=True)
class Config:
    shapes: tuple[tuple[int, int], ...] = LLM_SHAPES
    batches: tuple[int, ...] = (1, 8, 32)
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    nm: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    threads: int = 0  # 0: torch.get_num_threads()
    warmup: int = 3
    repeats: int = 15
    footprint_mib: int = 256  # copies of each weight so that one round touches at least this much
    seed: int = 0
    activations: tuple[float, ...] = (0.4, 0.5)  # activation sparsity: input entries zeroed, per row

    @staticmethod
    def quick() -> "Config":
        return Config(shapes=QUICK_SHAPES, batches=(1, 8), sparsities=(0.5, 0.9), nm=((2, 4),), warmup=1,
                      repeats=3, footprint_mib=16, activations=(0.5,))


def _copies(nbytes: int, footprint: int) -> int:
    return max(1, min(64, math.ceil(footprint / max(nbytes, 1))))


class _Candidate:
    """One kernel on one weight, called on its copies in turn."""

    def __init__(self, name: str, fmt: str, calls: list[Callable[[], Any]], weight_bytes: int,
                 activations: float | None = None, packs: list | None = None):
        self.name, self.format, self.weight_bytes = name, fmt, weight_bytes
        self.activations, self.packs = activations, packs or []  # input-major: what their counts say
        self._calls, self._i = calls, 0

    def skipped(self) -> float | None:
        """The fraction of inputs its input-major kernel skipped over the timed calls (None for the others)."""
        if not self.packs:
            return None
        counts = [p.activation_counts() for p in self.packs]
        return sum(c["inputs_skipped"] for c in counts) / max(1, sum(c["inputs"] for c in counts))

    def __call__(self):
        self._i = (self._i + 1) % len(self._calls)
        self._calls[self._i]()


def _native_candidate(name, fmt, w, x, footprint, threads, activations: float | None = None, **kw) -> _Candidate:
    from bench.speed.packers import Packed, pack

    first = pack(w, fmt, **kw)
    copies = [first] + [Packed(first.format, first.shape, first.dtype, {k: v.clone() for k, v in first.arrays.items()},
                               first.params) for _ in range(_copies(first.weight_bytes, footprint) - 1)]
    out = torch.empty(x.shape[0], w.shape[0])
    packs = copies if first.input_major else []  # their skip counts start with the benchmark's calls
    return _Candidate(name, fmt, [lambda p=p: p.mm(x, threads, out) for p in copies], first.weight_bytes,
                      activations, packs)


def _torch_dense_candidate(w, x, footprint) -> _Candidate:
    nbytes = w.numel() * w.element_size()
    ws = [w] + [w.clone() for _ in range(_copies(nbytes, footprint) - 1)]
    xd = x.to(w.dtype)
    return _Candidate("torch-dense", "dense", [lambda w=w: F.linear(xd, w) for w in ws], nbytes)


def _torch_csr_candidate(w, x, footprint) -> _Candidate | None:
    from bench.speed.backends import TorchCSR, torch_csr

    if str(w.dtype).removeprefix("torch.") not in TorchCSR.dtypes:  # no bfloat16 CSR matmul on CPU
        return None
    first, nbytes = torch_csr(w)
    mats = [first] + [first.clone() for _ in range(_copies(nbytes, footprint) - 1)]
    xt = x.T.contiguous()  # (K, B)
    return _Candidate("torch-csr", "csr (int32)", [lambda m=m: m @ xt for m in mats], nbytes)


def run(config: Config, bandwidth: float | None = None, log: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yields one row per (shape, dtype, batch, pattern, kernel)."""
    from bench.speed.choice import rule_format

    threads = config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    footprint = config.footprint_mib * 2**20
    gen = torch.Generator().manual_seed(config.seed)
    for (n, k) in config.shapes:
        base = torch.randn(n, k, generator=gen)
        # Keep-masks by magnitude, from the project's own patterns; computed once per shape, for every dtype.
        patterns: dict[str, Pattern] = {"dense": Dense()}
        patterns.update({f"{s * 100:g}%": Unstructured(s) for s in config.sparsities})
        patterns.update({f"{nn_}:{mm}": NM(nn_, mm) for (nn_, mm) in config.nm if k % mm == 0})
        masks = {label: p.mask(base.abs()) for label, p in patterns.items()}
        for dtype_name in config.dtypes:
            dtype = getattr(torch, dtype_name)
            weights = {label: base.masked_fill(~m, 0).to(dtype) for label, m in masks.items()}
            for b in config.batches:
                t0 = time.perf_counter()
                x = torch.randn(b, k, generator=gen)
                zeroed = {a: x.masked_fill(torch.rand(b, k, generator=gen) < a, 0.0) for a in config.activations}
                cands = _candidates(weights, patterns, x, footprint, threads, zeroed)
                names = {f"{p}|{c}": cand for (p, c), cand in cands.items()}
                times = interleave(names, config.warmup, config.repeats)

                def paired(ref_key: str, key: str) -> Summary | None:
                    return Summary.paired_ratios(times[ref_key], times[key]) if ref_key in times else None

                dense_bytes = cands[("dense", "native-dense")].weight_bytes
                for (pat, cname), cand in cands.items():
                    key = f"{pat}|{cname}"
                    summ = Summary.from_values(times[key])
                    vs_ours = paired("dense|native-dense", key)
                    vs_ours_ci = Speedup.from_times(times["dense|native-dense"], times[key])
                    vs_torch = paired("dense|torch-dense", key)
                    vs_csr = paired(f"{pat}|torch-csr", key)
                    sparsity = patterns[pat].sparsity
                    chosen = (cand.name == "native" and cand.activations is None
                              and cand.format == rule_format(weights[pat], patterns[pat])[0])
                    skipped = cand.skipped()
                    read = cand.weight_bytes * (1 - (skipped or 0.0))  # the weights of the inputs kept
                    gbps = read / summ.median / 1e9
                    yield {
                        "N": n, "K": k, "dtype": dtype_name, "batch": b, "pattern": pat, "sparsity": sparsity,
                        "activations": cand.activations, "inputs_skipped": skipped,
                        "kernel": cand.name, "format": cand.format, "native_default": chosen,
                        "time_s": summ.to_dict(), "weight_bytes": cand.weight_bytes, "weight_bytes_read": read, "GBps": gbps,
                        "bandwidth_fraction": gbps * 1e9 / bandwidth if bandwidth else None,
                        "speedup_vs_native_dense": vs_ours.median, "speedup_vs_native_dense_paired": vs_ours.to_dict(),
                        "speedup_vs_native_dense_interval": {k: getattr(vs_ours_ci, k) for k in ("lo", "hi", "coverage")},
                        "verdict_vs_native_dense": vs_ours_ci.verdict(),
                        "speedup_vs_torch_dense": vs_torch.median,
                        "speedup_vs_torch_csr": vs_csr.median if vs_csr else None,
                        "ideal_speedup": dense_bytes / max(read, 1.0),
                        "threads": threads,
                    }
                if log:
                    log(f"{n}x{k} {dtype_name} batch {b}: {len(cands)} kernels in {time.perf_counter() - t0:.1f} s")


def _candidates(weights: dict[str, torch.Tensor], patterns: dict[str, Pattern], x: torch.Tensor, footprint: int,
                threads: int, zeroed: dict[float, torch.Tensor] | None = None) -> dict[tuple[str, str], "_Candidate"]:
    """{(pattern, kernel): candidate} for one shape, dtype and batch: both dense references, then per
    pattern the native format(s) and PyTorch CSR where it runs, then per activation sparsity (`zeroed`:
    the activations with that fraction zeroed) the input-major formats."""
    from bench.speed.choice import rule_format

    cands: dict[tuple[str, str], _Candidate] = {
        ("dense", "native-dense"): _native_candidate("native-dense", "dense", weights["dense"], x, footprint, threads),
        ("dense", "torch-dense"): _torch_dense_candidate(weights["dense"], x, footprint),
    }
    for pat, w in weights.items():
        if pat == "dense":
            continue
        if isinstance(patterns[pat], NM):
            fmt, kw = rule_format(w, patterns[pat])
            cands[(pat, "native")] = _native_candidate("native", fmt, w, x, footprint, threads, **kw)
        else:
            for fmt in ("bitmask", "csr16"):
                cands[(pat, f"native:{fmt}")] = _native_candidate("native", fmt, w, x, footprint, threads)
        csr = _torch_csr_candidate(w, x, footprint)
        if csr is not None:
            cands[(pat, "torch-csr")] = csr
    for a, xa in (zeroed or {}).items():
        for pat, fmt in (("dense", "dense_in"), ("50%", "bitmask_in"), ("2:4", "bitmask_in")):
            if pat in weights:
                cands[(pat, f"native:{fmt} act {a * 100:g}%")] = _native_candidate("native", fmt, weights[pat], xa,
                                                                                 footprint, threads, activations=a)
    return cands


def machine(threads: int, bandwidth: Summary) -> dict[str, Any]:
    from bench import _native
    from bench.provenance import hardware_fingerprint, package_versions

    return {
        "hardware": hardware_fingerprint(), "isa": _native.isa(), "isas_supported": _native.available_isas(),
        "threads": threads, "read_bandwidth_Bps": bandwidth.to_dict(), "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": package_versions(), "measured_at": datetime.now(timezone.utc).isoformat(),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("shape", "dtype", "B", "pattern", "acts", "skipped", "kernel", "format", "ms", "[p10-p90]", "GB/s", "%bw",
            "vs ours", "[95%]", "verdict", "vs torch", "vs csr", "ideal")
    lines = [head]
    for r in rows:
        t = r["time_s"]
        acts, skipped = r.get("activations"), r.get("inputs_skipped")
        lines.append((f"{r['N']}x{r['K']}", r["dtype"], str(r["batch"]), r["pattern"],
                      "" if acts is None else f"{acts * 100:g}%", "" if skipped is None else f"{skipped * 100:.0f}%",
                      r["kernel"] + ("*" if r["native_default"] else ""), r["format"], f"{t['median'] * 1e3:.3f}",
                      f"{t['p10'] * 1e3:.3f}-{t['p90'] * 1e3:.3f}", f"{r['GBps']:.1f}",
                      "" if r["bandwidth_fraction"] is None else f"{100 * r['bandwidth_fraction']:.0f}%",
                      f"{r['speedup_vs_native_dense']:.2f}",
                      f"{r['speedup_vs_native_dense_interval']['lo']:.2f}-{r['speedup_vs_native_dense_interval']['hi']:.2f}",
                      r["verdict_vs_native_dense"],
                      f"{r['speedup_vs_torch_dense']:.2f}",
                      "" if r["speedup_vs_torch_csr"] is None else f"{r['speedup_vs_torch_csr']:.2f}",
                      f"{r['ideal_speedup']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out[:1] + ["  ".join("-" * w for w in widths)] + out[1:])


def save(folder: Path, meta: dict[str, Any], config: Config, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"kernels-{meta['isa']}-{stamp}.json"
    body = {"machine": meta, "config": json.loads(json.dumps(config.__dict__)), "rows": rows}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1))
    tmp.rename(path)  # never a half-written result
    path.with_suffix(".md").write_text(
        f"# Kernel benchmark {stamp}\n\nISA {meta['isa']}, {meta['threads']} threads, read bandwidth "
        f"{meta['read_bandwidth_Bps']['median'] / 1e9:.1f} GB/s (median of {meta['read_bandwidth_Bps']['count']}).\n"
        f"`*` marks the format the `native` backend picks. Speedups are medians of per-round paired ratios, with the distribution-free 95% interval of the median and its verdict.\n\n```\n"
        f"{format_table(rows)}\n```\n")
    return path
