"""Latency stage: end-to-end prefill and decode, candidate and dense reference in one process.

    metrics = measure(candidate, reference, LatencySpec(), vocab_size=..., seed=0)

Both regimes are measured: prefill (one forward over `prefill_length` tokens, batch 1: compute-bound
matrix-matrix) and decode (`decode_tokens` greedy steps with a KV cache after a `prompt_length` prompt,
at each batch of `decode_batch`: memory-bound matrix-vector). The candidate (pruned model on its kernel
backend) and the reference (the dense model on PyTorch's dense kernels) alternate in ABBA order through
`warmup` unrecorded rounds and `repeats` recorded ones, so machine drift cancels in their ratio. The
figures are medians with p10/p90 and the count. Speedup is the median over rounds of the paired ratio
reference time / candidate time (the two timings of a round share the machine's state), stored with the
p10/p90 of those ratios: a dense model timed against itself shows the noise floor of the measurement.

Per unique layer shape (`measure_layers`), the candidate's layer and the reference's dense nn.Linear are
timed the same way on activations of each decode batch, with the bytes of weights each call reads turned
into GB/s and a fraction of the machine's read bandwidth, measured in the same job (`read_bandwidth`).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import torch

from bench.spec.protocols import LatencySpec  # noqa: F401 (the protocol; imported from here too)
from bench.stats import Summary, metric


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Seconds taken by fn; on CUDA measured with events after a synchronisation."""
    if device.type == "cuda":
        def run(fn):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(stop) / 1e3
        return run

    def run(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


@torch.inference_mode()
def _decode(model, prompt: torch.Tensor, steps: int) -> Callable[[], None]:
    """Prefill the prompt (untimed) and return a closure that decodes `steps` greedy tokens."""
    out = model(prompt, use_cache=True)
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)

    def run():
        nonlocal cache, nxt
        with torch.inference_mode():
            for _ in range(steps):
                out = model(nxt, past_key_values=cache, use_cache=True)
                cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return run


def measure(candidate, reference, spec: LatencySpec, vocab_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Interleaved measurement; returns metric rows (name, value, unit, higher_is_better, details)."""
    device = next(candidate.parameters()).device
    timer = _timer(device)
    gen = torch.Generator().manual_seed(seed)
    prefill_ids = torch.randint(0, vocab_size, (1, spec.prefill_length), generator=gen).to(device)
    prompts = {b: torch.randint(0, vocab_size, (b, spec.prompt_length), generator=gen).to(device) for b in spec.decode_batch}
    models = {"candidate": candidate, "reference": reference}
    times: dict[tuple[str, str], list[float]] = {}

    def prefill(model):
        with torch.inference_mode():
            model(prefill_ids, use_cache=False)

    for r in range(spec.warmup + spec.repeats):
        order = ("candidate", "reference") if r % 2 == 0 else ("reference", "candidate")
        for who in order:
            model = models[who]
            t = timer(lambda: prefill(model))
            if r >= spec.warmup:
                times.setdefault((who, "prefill"), []).append(t)
            for b, prompt in prompts.items():
                t = timer(_decode(model, prompt, spec.decode_tokens))
                if r >= spec.warmup:
                    times.setdefault((who, f"decode_b{b}"), []).append(t)

    def summarise(regime: str, extra: dict[str, Any]) -> tuple[Summary, dict[str, Any]]:
        cand_t, ref_t = times[("candidate", regime)], times[("reference", regime)]
        ratios = Summary.paired_ratios(ref_t, cand_t)
        cand = Summary.from_values(cand_t)
        details = {"candidate_s": cand.to_dict(), "reference_s": Summary.from_values(ref_t).to_dict(),
                   "speedup_paired": ratios.to_dict(), **extra}
        return cand, details

    rows = []
    cand, details = summarise("prefill", {"tokens": spec.prefill_length, "batch": 1})
    rows.append(_row("prefill_ms", cand.median * 1e3, "ms", False, details))
    rows.append(_row("prefill_speedup", details["speedup_paired"]["median"], "x", True, details))
    for b in spec.decode_batch:
        cand, details = summarise(f"decode_b{b}", {"tokens": spec.decode_tokens, "batch": b, "prompt_length": spec.prompt_length})
        rows.append(_row(f"decode_tok_s_b{b}", b * spec.decode_tokens / cand.median, "tokens/s", True, details))
        rows.append(_row(f"decode_speedup_b{b}", details["speedup_paired"]["median"], "x", True, details))
    return rows


def interleave(candidates: dict[str, Callable[[], Any]], warmup: int, repeats: int,
               timer: Callable[[Callable[[], None]], float] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each candidate over `repeats` recorded rounds after `warmup` unrecorded ones.

    Each round runs every candidate once, in forward order on even rounds and reverse order on odd
    ones (ABBA for two), so slow drift of the machine lands evenly on all of them.
    """
    timer = timer or _timer(torch.device("cpu"))
    names = list(candidates)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = timer(candidates[name])
            if r >= warmup:
                out[name].append(t)
    return out


def read_bandwidth(threads: int | None = None, mib: int = 256, repeats: int = 5) -> Summary:
    """Bytes per second that `threads` threads read from memory: a vector sum over `mib` MiB of floats
    (several times any last-level cache), by the native kernels' own instruction set."""
    from bench import _native

    threads = threads or torch.get_num_threads()
    buf = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    samples = interleave({"read": lambda: _native.read_sum(buf, threads)}, warmup=1, repeats=repeats)["read"]
    return Summary.from_values([buf.numel() * 4 / t for t in samples])


def _rotating(modules: list[torch.nn.Module], x: torch.Tensor) -> Callable[[], None]:
    """Calls the modules in turn: copies of one layer, so the weights come from memory, not cache."""
    cycle = itertools.cycle(modules)

    def run():
        with torch.inference_mode():
            next(cycle)(x)
    return run


def measure_layers(candidate: torch.nn.Module, reference: torch.nn.Module, kernel: dict[str, Any],
                   batches: tuple[int, ...], warmup: int, repeats: int, bandwidth: float, seed: int = 0,
                   footprint_bytes: int = 256 * 2**20) -> list[dict[str, Any]]:
    """Per unique layer shape in `kernel["shapes"]`: the candidate's layer against the reference's dense
    layer of the same name, at each batch. Every layer of that shape takes part in the rotation (up to a
    footprint of `footprint_bytes`), so a small model's weights are as cold as they are in a real forward."""
    from bench.model.walk import target_layers, weight_view

    ref = {name: m for name, _, m in target_layers(reference)}
    cand = {name: candidate.get_submodule(name) for name in ref}  # converted by the backend, same names
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for key, shape in kernel.get("shapes", {}).items():
        names = [n for n in ref if tuple(weight_view(ref[n]).shape) == (shape["N"], shape["K"])]  # (out, in)
        if not names:
            continue
        per_layer = max(shape["dense_weight_bytes"], 1)
        names = names[: max(1, footprint_bytes // per_layer)]
        dtype = ref[names[0]].weight.dtype
        for b in batches:
            x = torch.randn(b, shape["K"], generator=gen).to(dtype)
            t = interleave({"candidate": _rotating([cand[n] for n in names], x),
                            "reference": _rotating([ref[n] for n in names], x)}, warmup, repeats)
            cand_s, ref_s = Summary.from_values(t["candidate"]), Summary.from_values(t["reference"])
            ratios = Summary.paired_ratios(t["reference"], t["candidate"])
            gbps = shape["weight_bytes"] / cand_s.median
            details = {"shape": key, "batch": b, "format": shape["format"], "layers_rotated": len(names),
                       "weight_bytes": shape["weight_bytes"], "dense_weight_bytes": shape["dense_weight_bytes"],
                       "candidate_s": cand_s.to_dict(), "reference_s": ref_s.to_dict(),
                       "speedup_paired": ratios.to_dict(), "read_bandwidth_Bps": bandwidth,
                       "bandwidth_fraction": gbps / bandwidth if bandwidth else None,
                       "ideal_speedup": shape["dense_weight_bytes"] / max(shape["weight_bytes"], 1)}
            rows.append(_row(f"layer_speedup_b{b}:{key}", ratios.median, "x", True, details))
            rows.append(_row(f"layer_GBps_b{b}:{key}", gbps / 1e9, "GB/s", True, details))
    return rows


def _row(name, value, unit, higher_is_better, details):
    return metric(name, value, unit, higher_is_better, "latency", details)
