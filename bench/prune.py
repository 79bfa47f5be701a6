"""The pruning harness: it owns the model walk, methods see one layer at a time.

    report = prune_model(model, method, pattern)          # prunes in place
    report.layers                                          # per-layer shape and measured sparsity

Blocks are found without naming an architecture: the stack of transformer blocks is the largest
`nn.ModuleList` of identical modules that holds linear layers (`model.layers` in Llama, `h` in GPT-2,
`decoder.layers` in OPT...). Target layers are the linear layers inside those blocks (`nn.Linear`, and
GPT-2's transposed `Conv1D`), never the embeddings or the LM head, narrowed by a `LayerFilter`.
Every pruned layer is checked: zeros wherever the method's mask says pruned, and the pattern's verifier.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError
from bench.method import Method
from bench.patterns import Pattern, PatternViolation


@dataclass(frozen=True)
class LayerFilter:
    """Glob patterns on full module names (e.g. `*.mlp.*`); a layer is a target if it matches an include
    pattern and no exclude pattern."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __call__(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )


@dataclass
class PruneReport:
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def measured_sparsity(self) -> float:
        numel = sum(layer["numel"] for layer in self.layers)
        return sum(layer["zeros"] for layer in self.layers) / numel if numel else 0.0


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def weight_view(module: nn.Module) -> torch.Tensor:
    """The layer's weight as (out_features, in_features); GPT-2's Conv1D stores it transposed."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(c) for c in mod}) != 1 or not any(is_linear(m) for m in mod[0].modules()):
            continue
        size = sum(p.numel() for p in mod.parameters())
        if best is None or size > best[2]:
            best = (name, mod, size)
    if best is None:
        raise BenchError(
            f"found no stack of transformer blocks in {type(model).__name__} "
            "(an nn.ModuleList of identical modules holding linear layers)"
        )
    return best[0], best[1]


def target_layers(model: nn.Module, layer_filter: LayerFilter | None = None) -> list[tuple[str, int, nn.Module]]:
    """(full name, block index, module) of every target linear layer, in execution order of blocks."""
    layer_filter = layer_filter or LayerFilter()
    prefix, blocks = find_blocks(model)
    out = []
    for i, block in enumerate(blocks):
        for sub, mod in block.named_modules():
            name = f"{prefix}.{i}.{sub}" if prefix else f"{i}.{sub}"
            if is_linear(mod) and layer_filter(name):
                out.append((name, i, mod))
    if not out:
        raise BenchError("the layer filter leaves no linear layer to prune; loosen its include patterns")
    return out


@torch.no_grad()
def prune_model(model: nn.Module, method: Method, pattern: Pattern, layer_filter: LayerFilter | None = None) -> PruneReport:
    if pattern.kind not in method.patterns:
        raise BenchError(f"method '{method.name}' does not support the {pattern.kind} pattern ({pattern.label})")
    if method.needs_calibration:
        raise BenchError(f"method '{method.name}' needs calibration inputs; this harness prunes calibration-free methods only")
    start = time.perf_counter()
    report = PruneReport()
    for name, block, module in target_layers(model, layer_filter):
        w = weight_view(module)
        new_w, mask = method.pruner(name, w.detach()).prune(w.detach().clone(), pattern)
        if new_w.shape != w.shape or mask.shape != w.shape or mask.dtype != torch.bool:
            raise BenchError(f"method '{method.name}' returned a weight {tuple(new_w.shape)} and mask "
                             f"{tuple(mask.shape)} {mask.dtype} for layer {name} of shape {tuple(w.shape)}")
        new_w = new_w.to(w.dtype)
        if bool((new_w[~mask] != 0).any()):
            raise BenchError(f"method '{method.name}' left nonzero weights where its mask prunes, in layer {name}")
        try:
            measured = pattern.verify(new_w)
        except PatternViolation as err:
            raise BenchError(f"layer {name} breaks the {pattern.label} pattern after '{method.name}': {err}") from None
        w.copy_(new_w)
        report.layers.append({
            "layer": name, "block": block, "out_features": w.shape[0], "in_features": w.shape[1],
            "numel": measured["numel"], "zeros": measured["zeros"],
            "target_sparsity": pattern.sparsity, "measured_sparsity": measured["sparsity"],
        })
    report.seconds = time.perf_counter() - start
    return report
