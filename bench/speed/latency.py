"""Latency stage: end-to-end prefill and decode, candidate and dense reference in one process.

    metrics = measure(candidate, reference, LatencySpec(), vocab_size=..., seed=0)

Both regimes are measured: prefill (one forward over `prefill_length` tokens, batch 1: compute-bound
matrix-matrix) and decode (`decode_tokens` greedy steps with a KV cache after a `prompt_length` prompt,
at each batch of `decode_batch`: memory-bound matrix-vector).

Three timings make a round: the candidate (the pruned model on its kernel backend), the reference (the
dense model on PyTorch's dense kernels) and the reference again (A/A). Their order is reversed on every
other round, so drift of the machine lands evenly on all three. After `warmup` unrecorded rounds, rounds go
on until every ratio's interval is within `precision` of its median (at least `repeats` rounds), or until
`max_repeats` rounds or `max_seconds` of recorded rounds; which one stopped it is recorded.

A speedup is the median over rounds of the paired ratio reference time / candidate time, with its
distribution-free 95% interval (`bench.stats.Speedup`). The reference against itself (A/A) is the stage's
noise floor: how far from 1 a ratio that is truly 1 reads on this machine now. Its verdict is `faster`,
`slower` or `no measurable difference` against that floor. A dense candidate (kernel status "dense": the
same model on the same kernels as the reference) is 1x by definition and is not timed as a third party;
its row carries the A/A figure.

Per layer shape (`measure_layers`), candidate, reference and reference again are timed the same way, as
cold-cache sweeps over every layer of the shape at each decode batch (random activations, or each layer's
own captured from a decode under an activation rule); bytes read become GB/s and a fraction of the read
bandwidth measured in the job (`read_bandwidth`). `decode_shares` times the dense model's pruned layers in
a decode (forward hooks), so that `amdahl` predicts the end-to-end speedup and the share outside them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench.spec.protocols import LatencySpec  # noqa: F401 (the protocol; imported from here too)
from bench.stats import Speedup, Summary, metric


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


@dataclass(frozen=True)
class Rounds:
    """What `run_rounds` measured: seconds per slot per recorded round, and why it stopped."""

    times: dict[str, list[float]]
    rounds: int
    stop: str            # "precision", "max_repeats" or "max_seconds"
    seconds: float       # wall time of the recorded rounds

    def speedup(self, reference: str, candidate: str) -> Speedup:
        return Speedup.from_times(self.times[reference], self.times[candidate])

    def record(self, precision: float) -> dict[str, Any]:
        return {"rounds": self.rounds, "stopped_by": self.stop, "cap_hit": self.stop != "precision",
                "precision_target": precision, "recorded_s": self.seconds}


def run_rounds(slots: dict[str, Callable[[], Callable[[], None]]], pairs: list[tuple[str, str]], *,
               warmup: int, repeats: int, max_repeats: int, precision: float, max_seconds: float,
               timer: Callable[[Callable[[], None]], float] | None = None) -> Rounds:
    """Time every slot once per round until the ratios of `pairs` (reference slot, candidate slot) are
    precise enough: each slot is a factory whose own work is untimed and which returns the closure to time.

    Rounds alternate forward and reverse slot order. After `warmup` unrecorded rounds, at least `repeats`
    and at most `max_repeats` are recorded; from `repeats` on, the loop stops as soon as every pair's
    interval half-width is at most `precision` (relative to its median), or once the recorded rounds have
    taken `max_seconds`.
    """
    timer = timer or _timer(torch.device("cpu"))
    names = list(slots)
    times: dict[str, list[float]] = {n: [] for n in names}
    r, started, stop = 0, None, "max_repeats"
    while True:
        if r == warmup:
            started = time.perf_counter()
        for name in (names if r % 2 == 0 else names[::-1]):
            t = timer(slots[name]())
            if r >= warmup:
                times[name].append(t)
        r += 1
        done = r - warmup
        if done < 1:
            continue
        if done >= max_repeats:
            break
        if done < repeats:
            continue
        if all(Speedup.from_times(times[a], times[b]).half_width <= precision for a, b in pairs):
            stop = "precision"
            break
        if time.perf_counter() - started >= max_seconds:
            stop = "max_seconds"
            break
    return Rounds(times=times, rounds=r - warmup, stop=stop, seconds=time.perf_counter() - started)


def measure(candidate, reference, spec: LatencySpec, vocab_size: int, seed: int = 0,
            candidate_is_reference: bool = False) -> list[dict[str, Any]]:
    """Interleaved measurement; returns metric rows (name, value, unit, higher_is_better, details).

    `candidate_is_reference`: the candidate is the dense model on the reference's kernels (a dense job), so
    its speedup is 1 by definition; only the reference and its A/A twin are timed.
    """
    device = next(reference.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prefill_ids = torch.randint(0, vocab_size, (1, spec.prefill_length), generator=gen).to(device)
    prompts = {b: torch.randint(0, vocab_size, (b, spec.prompt_length), generator=gen).to(device) for b in spec.decode_batch}
    who = {"reference": reference, "reference_again": reference}
    if not candidate_is_reference:
        who = {"candidate": candidate, **who}

    def prefill(model):
        def run():
            with torch.inference_mode():
                model(prefill_ids, use_cache=False)
        return lambda: run

    def decode(model, prompt):
        return lambda: _decode(model, prompt, spec.decode_tokens)

    regimes = {"prefill": lambda m: prefill(m), **{f"decode_b{b}": (lambda m, p=p: decode(m, p)) for b, p in prompts.items()}}
    slots = {f"{w}|{regime}": make(m) for regime, make in regimes.items() for w, m in who.items()}
    pairs = [(f"reference|{g}", f"{w}|{g}") for g in regimes for w in who if w != "reference"]
    rounds = run_rounds(slots, pairs, warmup=spec.warmup, repeats=spec.repeats, max_repeats=spec.max_repeats,
                        precision=spec.precision, max_seconds=spec.max_seconds, timer=_timer(device))

    rows = []
    for regime in regimes:
        cand_key = f"reference|{regime}" if candidate_is_reference else f"candidate|{regime}"
        cand = Summary.from_values(rounds.times[cand_key])
        aa = rounds.speedup(f"reference|{regime}", f"reference_again|{regime}")
        if candidate_is_reference:
            speed, value, verdict = None, 1.0, "dense"
        else:
            speed = rounds.speedup(f"reference|{regime}", cand_key)
            value, verdict = speed.median, speed.verdict(aa)
        extra = ({"tokens": spec.prefill_length, "batch": 1} if regime == "prefill" else
                 {"tokens": spec.decode_tokens, "batch": int(regime.removeprefix("decode_b")),
                  "prompt_length": spec.prompt_length})
        details = {"candidate_s": cand.to_dict(), "reference_s": Summary.from_values(rounds.times[f"reference|{regime}"]).to_dict(),
                   "speedup_paired": None if speed is None else speed.to_dict(), "verdict": verdict,
                   "by_definition": candidate_is_reference, "aa": aa.to_dict(), **rounds.record(spec.precision), **extra}
        if regime == "prefill":
            rows.append(_row("prefill_ms", cand.median * 1e3, "ms", False, details))
            rows.append(_row("prefill_speedup", value, "x", True, details))
            rows.append(_row("aa_prefill_speedup", aa.median, "x", None, details))
        else:
            b = extra["batch"]
            rows.append(_row(f"decode_tok_s_b{b}", b * spec.decode_tokens / cand.median, "tokens/s", True, details))
            rows.append(_row(f"decode_speedup_b{b}", value, "x", True, details))
            rows.append(_row(f"aa_decode_speedup_b{b}", aa.median, "x", None, details))
    return rows


def interleave(candidates: dict[str, Callable[[], Any]], warmup: int, repeats: int,
               timer: Callable[[Callable[[], None]], float] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each candidate over `repeats` recorded rounds after `warmup` unrecorded ones.

    Each round runs every candidate once, in forward order on even rounds and reverse order on odd
    ones (ABBA for two), so slow drift of the machine lands evenly on all of them.
    """
    slots = {name: (lambda fn=fn: fn) for name, fn in candidates.items()}  # nothing untimed to prepare
    return run_rounds(slots, [], warmup=warmup, repeats=repeats, max_repeats=repeats, precision=1.0,
                      max_seconds=math.inf, timer=timer).times


def read_bandwidth(threads: int | None = None, mib: int = 256, repeats: int = 5) -> Summary:
    """Bytes per second that `threads` threads read from memory: a vector sum over `mib` MiB of floats
    (several times any last-level cache), by the native kernels' own instruction set."""
    from bench import _native

    threads = threads or torch.get_num_threads()
    buf = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    samples = interleave({"read": lambda: _native.read_sum(buf, threads)}, warmup=1, repeats=repeats)["read"]
    return Summary.from_values([buf.numel() * 4 / t for t in samples])


class Evict:
    """Reads a buffer of twice the last-level cache (at least 64 MiB) with the native kernels' vector sum,
    so that the weights timed next come from memory, as they do in a decode that streams the whole model."""

    def __init__(self, mib: int | None = None):
        from bench import _native

        self._sum = _native.read_sum
        self.buf = torch.ones(max(64, 2 * _l3_mib()) * 2**20 // 4 if mib is None else mib * 2**20 // 4,
                              dtype=torch.float32)

    def __call__(self) -> None:
        self._sum(self.buf, torch.get_num_threads())


def _l3_mib() -> int:
    try:
        import os

        return max(1, os.sysconf("SC_LEVEL3_CACHE_SIZE") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 32


def _sweep(modules: list[torch.nn.Module], x: torch.Tensor | list[torch.Tensor]) -> Callable[[], None]:
    """Calls every module once, back to back, as a forward calls the layers of one shape (on the same
    activations, or with a list, each module on its own)."""
    xs = x if isinstance(x, list) else [x] * len(modules)
    def run():
        with torch.inference_mode():
            for module, xi in zip(modules, xs):
                module(xi)
    return run


def cold(run: Callable[[], None], evict: Callable[[], None]) -> Callable[[], Callable[[], None]]:
    """A `run_rounds` slot: the cache is evicted (untimed), then `run` is timed."""
    def factory():
        evict()
        return run
    return factory


def measure_layers(candidate: torch.nn.Module, reference: torch.nn.Module, kernel: dict[str, Any],
                   spec: LatencySpec, bandwidth: float, seed: int = 0,
                   evict: Callable[[], None] | None = None,
                   inputs: dict[int, dict[str, torch.Tensor]] | None = None) -> list[dict[str, Any]]:
    """Per unique layer shape in `kernel["shapes"]`: the candidate's layers against the reference's dense
    layers of the same names and those again (A/A), at each decode batch, in rounds as `run_rounds` runs
    them (every loop gets an equal share of `spec.max_seconds`).

    One timing is a sweep: every layer of that shape called once, back to back, on the same activations,
    after the cache has been evicted (untimed): each weight comes from memory, as in a decode, and the fixed
    cost of a call lands as often as in a forward (one call at a time between the other slots' calls read
    576x576 2:4 at 0.85x where the same layers back to back read 1.48x).

    With `inputs` (per batch, per layer name: `capture_inputs`), each layer runs on its own real input, as
    an activation rule needs; layers whose kernels skip inputs report the fraction they skipped, and the
    ideal from bytes counts only the weights of the inputs kept."""
    from bench.model.walk import target_layers, weight_view
    from bench.speed.packers import skip_counter

    ref = {name: m for name, _, m in target_layers(reference)}
    cand = {name: candidate.get_submodule(name) for name in ref}  # converted by the backend, same names
    gen = torch.Generator().manual_seed(seed)
    evict = evict or Evict()
    shapes = kernel.get("shapes", {})
    budget = spec.max_seconds / max(1, len(shapes) * len(spec.decode_batch))
    rows = []
    for key, shape in shapes.items():
        names = [n for n in ref if tuple(weight_view(ref[n]).shape) == (shape["N"], shape["K"])]  # (out, in)
        if not names:
            continue
        dtype = ref[names[0]].weight.dtype
        for b in spec.decode_batch:
            x = _inputs(inputs, names, b, shape["K"], dtype, gen)
            skipped = skip_counter([cand[n] for n in names])  # what the timed sweeps skip, below
            slots = {"candidate": cold(_sweep([cand[n] for n in names], x), evict),
                     "reference": cold(_sweep([ref[n] for n in names], x), evict),
                     "reference_again": cold(_sweep([ref[n] for n in names], x), evict)}
            rounds = run_rounds(slots, [("reference", "candidate"), ("reference", "reference_again")],
                                warmup=spec.warmup, repeats=spec.repeats, max_repeats=spec.max_repeats,
                                precision=spec.precision, max_seconds=budget)
            cand_s, ref_s = Summary.from_values(rounds.times["candidate"]), Summary.from_values(rounds.times["reference"])
            speed, aa = rounds.speedup("reference", "candidate"), rounds.speedup("reference", "reference_again")
            calls, skipped = len(names), skipped()
            read_bytes = shape["weight_bytes"] * (1 - (skipped or 0.0))  # the weights of the kept inputs
            gbps = read_bytes * calls / cand_s.median
            details = {"shape": key, "batch": b, "format": shape["format"], "layers_per_sweep": calls,
                       "timing": "one sweep over every layer of the shape, cache evicted before it",
                       "weight_bytes": shape["weight_bytes"], "dense_weight_bytes": shape["dense_weight_bytes"],
                       "candidate_s": cand_s.to_dict(), "reference_s": ref_s.to_dict(),
                       "speedup_paired": speed.to_dict(), "verdict": speed.verdict(aa), "aa": aa.to_dict(),
                       **rounds.record(spec.precision), "read_bandwidth_Bps": bandwidth,
                       "bandwidth_fraction": gbps / bandwidth if bandwidth else None,
                       "ideal_speedup": ideal_speedup({**shape, "weight_bytes": read_bytes}),
                       "inputs": "captured from a decode" if isinstance(x, list) else "random normal"}
            if skipped is not None:
                details.update(inputs_skipped=skipped, weight_bytes_read=read_bytes,
                               note_inputs="inputs skipped: under the threshold in every row of the batch")
            rows.append(_row(f"layer_speedup_b{b}:{key}", speed.median, "x", True, details))
            rows.append(_row(f"layer_GBps_b{b}:{key}", gbps / 1e9, "GB/s", True, details))
    return rows


def _inputs(inputs, names: list[str], b: int, k: int, dtype, gen) -> torch.Tensor | list[torch.Tensor]:
    """One sweep's activations: each layer's captured input where all have one, else one random batch."""
    if inputs is not None and all(n in inputs.get(b, {}) for n in names):
        return [inputs[b][n].to(dtype) for n in names]
    return torch.randn(b, k, generator=gen).to(dtype)


def ideal_speedup(shape: dict[str, Any]) -> float:
    """The speedup from bytes alone of one layer shape of a backend's provenance: dense bytes / bytes read."""
    return shape["dense_weight_bytes"] / max(shape["weight_bytes"], 1)


def decode_shares(model: torch.nn.Module, spec: LatencySpec, vocab_size: int, seed: int = 0,
                  passes: int = 2) -> dict[int, dict[str, Any]]:
    """Per decode batch: seconds of `passes` decodes of the model and, per layer shape ("NxK"), the seconds
    spent inside its target layers, timed by forward hooks around each layer (their own cost, a few
    microseconds a call, lands in the layers' share). One untimed decode first."""
    from bench.model.walk import target_layers, weight_view

    device = next(model.parameters()).device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    shape_of = {m: "x".join(map(str, weight_view(m).shape)) for _, _, m in target_layers(model)}
    spent: dict[str, float] = {}
    started: dict[int, float] = {}
    timing = [False]  # the hooks record only inside the timed decode, not the prompt before it

    def before(module, args):
        if timing[0]:
            sync()
            started[id(module)] = time.perf_counter()

    def after(module, args, output):
        if timing[0]:
            sync()
            key = shape_of[module]
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - started.pop(id(module))

    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    handles = [m.register_forward_pre_hook(before) for m in shape_of] + [m.register_forward_hook(after) for m in shape_of]
    try:
        for b in spec.decode_batch:
            prompt = torch.randint(0, vocab_size, (b, spec.prompt_length), generator=gen).to(device)
            _decode(model, prompt, spec.decode_tokens)()  # warm, untimed
            spent.clear()
            total = 0.0
            for _ in range(passes):
                run = _decode(model, prompt, spec.decode_tokens)
                sync()
                timing[0] = True
                t0 = time.perf_counter()
                run()
                sync()
                total += time.perf_counter() - t0
                timing[0] = False
            out[b] = {"decode_s": total, "layers_s": dict(spent), "passes": passes}
    finally:
        timing[0] = False
        for h in handles:
            h.remove()
    return out


def amdahl(shares: dict[str, Any], layer_speedups: dict[str, float],
           ideal: dict[str, float] | None = None) -> dict[str, Any]:
    """The end-to-end speedup the per-shape speedups predict: 1 / ((1 - sum f) + sum f_s / s_s), with f_s
    the share of the dense decode spent in layers of shape s and s_s their measured speedup (1 for a shape
    not measured), and the share of the decode outside the pruned layers. With `ideal` (per shape, dense
    bytes / bytes read), also the bound: the same with every layer at its ideal speedup."""
    total = shares["decode_s"]
    fractions = {k: v / total for k, v in shares["layers_s"].items()}
    outside = max(0.0, 1 - sum(fractions.values()))
    inside = sum(f / layer_speedups.get(k, 1.0) for k, f in fractions.items())
    out = {"predicted_speedup": 1 / (outside + inside), "outside_share": outside,
           "layer_shares": fractions, "layer_speedups": {k: layer_speedups.get(k) for k in fractions}}
    if ideal is not None:
        out["bound_from_bytes"] = 1 / (outside + sum(f / ideal.get(k, 1.0) for k, f in fractions.items()))
    return out


def _row(name, value, unit, higher_is_better, details):
    return metric(name, value, unit, higher_is_better, "latency", details)
