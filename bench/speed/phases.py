"""Which kernels ran each phase of the latency stage (prefill, decode at each batch): a phase whose calls
all fell back to PyTorch's dense kernel (a prefill longer than the native kernels' batch limit, say) is
"dense fallback", not "accelerated".

    phases = phase_calls(model, spec, vocab_size)       # {"prefill": {"dense_batch_above_max": 30}, ...}
    phase_status(phases["prefill"], "accelerated")      # "dense fallback"
    annotate(rows, phases)                              # each end-to-end row's details get its phase's
"""

from __future__ import annotations

import re
from typing import Any

import torch

from bench.spec.protocols import LatencySpec
from bench.speed.backends import call_counts
from bench.speed.latency import _decode


def phase_calls(model, spec: LatencySpec, vocab_size: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """Per phase of the latency stage (`prefill`, and `decode_b{B}` at each decode batch): the pruned layers'
    calls by the path they took (`native`, or `dense_<reason>` where a layer fell back to PyTorch's dense
    kernel), from one untimed pass of the phase's shape, counted by the layers' own counters ({} where the
    backend's layers count nothing). The decode's prompt is not counted: only its decode steps."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 2)

    def counted(fn) -> dict[str, int]:
        before = call_counts(model)
        fn()
        after = call_counts(model)
        return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}

    out = {}
    ids = torch.randint(0, vocab_size, (1, spec.prefill_length), generator=gen).to(device)
    with torch.inference_mode():
        out["prefill"] = counted(lambda: model(ids, use_cache=False))
        for b in spec.decode_batch:
            run = _decode(model, torch.randint(0, vocab_size, (b, spec.prompt_length), generator=gen).to(device),
                          spec.decode_tokens)
            out[f"decode_b{b}"] = counted(run)
    return out


def phase_status(calls: dict[str, int], prepared: str) -> str:
    """What ran a phase: `accelerated` (every counted call on the backend's kernels), `dense fallback` (none:
    every call fell back to PyTorch's dense kernel), `partly accelerated`; where nothing was counted, the
    backend's own status (`prepared`: dense, mask only)."""
    fell = sum(n for k, n in calls.items() if k.startswith("dense_"))
    ran = sum(calls.values()) - fell
    if not calls:
        return prepared
    return "accelerated" if not fell else "dense fallback" if not ran else "partly accelerated"


# The end-to-end rows of the latency stage, by phase: each says which kernels ran it (details.kernel_phase).
_PHASE_ROW = re.compile(r"(?:aa_)?(?:(prefill)_(?:ms|speedup)|decode_(?:tok_s|speedup)_b(\d+))")


def of_backend(model, spec: LatencySpec, vocab_size: int, prepared: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per phase, its counted calls and status (`phase_calls`, `phase_status`)."""
    return {phase: {"calls": calls, "status": phase_status(calls, prepared)}
            for phase, calls in phase_calls(model, spec, vocab_size, seed=seed).items()}


def annotate(rows: list[dict[str, Any]], phases: dict[str, dict[str, Any]]) -> None:
    """Each end-to-end latency row (prefill and decode timings, speedups, A/A) gets `kernel_phase` in its
    details: the phase it measured, that phase's calls and status."""
    for row in rows:
        found = _PHASE_ROW.fullmatch(row["name"])
        phase = found and (found.group(1) or f"decode_b{found.group(2)}")
        if phase in phases:
            row["details"] = {**row["details"], "kernel_phase": {"phase": phase, **phases[phase]}}
