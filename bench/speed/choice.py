"""Which native format each layer shape runs in: a rule proposes one, a measurement may overrule it.

    default = rule_format(weight, pattern)                      # ("csr16", {}) for a 70% layer
    choice = choose_by_measurement(weights, pattern, batches=(1,))  # per shape group, timed side by side

The rule (`rule_format`) is what the kernel benchmark found on one machine: N:M masks in the nm format,
block masks in bsr, unstructured layers in csr16 from 65% sparsity and in the bitmask format below. Any
mask can also be held by the unstructured formats, and which one is fastest depends on the shape, the
batch, the instruction set and the machine's memory. So for every group of layers with one shape and
dtype, `choose_by_measurement` packs a few of them in every format that holds their mask and times sweeps
over those layers from a cold cache (the latency stage's own protocol, `run_rounds`), at each decode
batch. A format replaces the rule's only if it is faster at every batch, the lower end of each 95%
interval above 1; among several such formats the highest geometric mean over the batches wins. Noise
does not flip a choice, and the record says what was timed and why the choice fell as it did.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.patterns import NM, Block, Dense, Pattern
from bench.speed.packers import NM_RULE, PackError, SparseLinear, nm_supported

# Unstructured layers at or above this sparsity use CSR16, below it the bitmask format (the rule; see
# benchmarks/README.md: at 70% and above CSR16's cost per stored value beat the bitmask's cost per column).
CSR16_FROM_SPARSITY = 0.65
SAMPLE_LAYERS = 8  # layers of a group packed in each format and swept per timing


class NoFormat(Exception):
    """No native format holds this layer's mask; the message says why."""


def rule_format(weight: torch.Tensor, pattern: Pattern) -> tuple[str, dict[str, Any]]:
    """The format the rule gives `weight` under `pattern`: ("dense", {}) where there are no zeros to skip."""
    if isinstance(pattern, Dense) or pattern.sparsity == 0:
        return "dense", {}
    if isinstance(pattern, NM):
        if not nm_supported(pattern.n, pattern.m):
            raise NoFormat(f"{NM_RULE}, not {pattern.n}:{pattern.m}")
        return "nm", {"nm": (pattern.n, pattern.m)}
    if isinstance(pattern, Block):
        return "bsr", {"block": (pattern.rows, pattern.cols)}
    density = float((weight != 0).float().mean())
    return ("csr16" if 1 - density >= CSR16_FROM_SPARSITY else "bitmask"), {}


def alternatives(weight: torch.Tensor, pattern: Pattern) -> list[tuple[str, dict[str, Any]]]:
    """Every sparse format that holds the mask of `weight`, the rule's first."""
    first = rule_format(weight, pattern)
    if first[0] == "dense":
        return [first]
    return [first] + [(f, {}) for f in ("bitmask", "csr16") if f != first[0]]


def group_key(weight: torch.Tensor) -> str:
    return f"{weight.shape[0]}x{weight.shape[1]}:{str(weight.dtype).removeprefix('torch.')}"


def choose_by_measurement(weights: dict[str, torch.Tensor], pattern: Pattern, batches: tuple[int, ...] = (1,),
                          seconds: float = 2.0, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per group of `weights` (layer name -> (N, K) weight with zeros) of one shape and dtype: the format
    to run and the record of how it was chosen. `seconds` caps each group's timing at each batch."""
    from bench.speed.latency import Evict, _sweep, cold, run_rounds
    from bench.stats import Speedup, Summary

    groups: dict[str, list[str]] = {}
    for name, w in weights.items():
        groups.setdefault(group_key(w), []).append(name)
    evict = None
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, Any]] = {}
    for key, names in groups.items():
        sample = names[:SAMPLE_LAYERS]
        first = weights[sample[0]]
        options = alternatives(first, pattern)
        record: dict[str, Any] = {"rule": options[0][0], "layers": len(names), "sampled_layers": len(sample),
                                  "candidates": [f for f, _ in options]}
        if len(options) == 1:
            out[key] = {"format": options[0][0], "kw": options[0][1], **record, "chosen_by": "rule (no alternative)"}
            continue
        packed: dict[str, list[SparseLinear]] = {}
        for fmt, kw in options:
            try:
                packed[fmt] = [_linear(weights[n], fmt, kw) for n in sample]
            except PackError as err:
                record.setdefault("not_packable", {})[fmt] = str(err)
        rule = options[0][0]
        if rule not in packed or len(packed) == 1:
            out[key] = {"format": rule, "kw": options[0][1], **record, "chosen_by": "rule (no alternative packs)"}
            continue
        evict = evict or Evict()
        speedups: dict[str, dict[int, Speedup]] = {f: {} for f in packed if f != rule}
        timing: dict[str, Any] = {}
        for b in batches:
            x = torch.randn(b, first.shape[1], generator=gen)
            slots = {f: cold(_sweep(mods, x), evict) for f, mods in packed.items()}
            rounds = run_rounds(slots, [(rule, f) for f in speedups], warmup=1, repeats=5, max_repeats=15,
                                precision=0.05, max_seconds=seconds)
            timing[str(b)] = {"median_s": {f: Summary.from_values(t).median for f, t in rounds.times.items()},
                              **rounds.record(0.05)}
            for f in speedups:
                speedups[f][b] = rounds.speedup(rule, f)
        chosen = decide(rule, speedups)
        kw = dict(options)[chosen]
        record.update({"timing": timing, "speedup_over_rule": {f: {str(b): s.to_dict() for b, s in by.items()}
                                                                for f, by in speedups.items()}})
        out[key] = {"format": chosen, "kw": kw, **record,
                    "chosen_by": "measurement (faster than the rule at every batch, 95% interval above 1)"
                    if chosen != rule else "rule (no alternative measured faster at every batch)"}
    return out


def decide(rule: str, speedups: dict[str, dict[int, Any]]) -> str:
    """The format to run: among the alternatives (format -> batch -> `Speedup` over the rule's format) those
    faster at every batch with the lower end of each interval above 1, the highest geometric mean of their
    medians; the rule's format where there is none."""
    better = {f: math.exp(sum(math.log(s.median) for s in by.values()) / len(by)) for f, by in speedups.items()
              if by and all(s.lo > 1 for s in by.values())}
    return max(better, key=better.get) if better else rule


def _linear(weight: torch.Tensor, fmt: str, kw: dict[str, Any]) -> SparseLinear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
    return SparseLinear.from_linear(linear, fmt, **kw)

