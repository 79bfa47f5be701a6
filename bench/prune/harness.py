"""The pruning harness: it walks the model (bench.model.walk) and calibrates; methods see one layer at a time.

    report = prune_model(model, method, pattern)          # prunes in place
    report.layers                                          # per-layer shape and measured sparsity

Every pruned layer is checked: zeros wherever the method's mask says pruned, and the pattern's verifier.

Calibration (for methods that ask for it) runs block by block: the inputs of block 0 are captured once,
each block's target layers observe their inputs through forward hooks, the layers are pruned, and the
pruned block's outputs become the next block's inputs. Pruner state is freed after each block.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError
from bench.method import InputStats, Method
from bench.model.walk import find_blocks, target_layers, weight_view
from bench.patterns import Pattern, PatternViolation, Unstructured
from bench.spec.protocols import REFINEMENTS, LayerFilter, Refinement


@dataclass
class PruneReport:
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # layer name -> keep-mask (out, in), bool, on the CPU; only layers that pruning changed
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # layers whose kept weights the method also changed (SparseGPT's updates): their weights are not the
    # dense weights times the mask, so an artifact must store them
    rewritten: set[str] = field(default_factory=set)

    @property
    def measured_sparsity(self) -> float:
        numel = sum(layer["numel"] for layer in self.layers)
        return sum(layer["zeros"] for layer in self.layers) / numel if numel else 0.0


Call = tuple[torch.Tensor, tuple, dict]  # (hidden states, the other positional args, keyword args) of a block call


def _block_inputs(model: nn.Module, prefix: str, blocks: nn.ModuleList, tokens: torch.Tensor, batch_size: int) -> list[Call]:
    """Block 0's exact call arguments for each calibration batch.

    The model runs with its block list swapped for one holding only block 0, so a batch costs the
    embeddings and one block; a pre-hook records what the model passes to that block (hidden states,
    attention mask, position embeddings...) without naming any of it.
    """
    parent_name, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    calls: list[Call] = []

    def record(module, args, kwargs):
        if args:
            calls.append((args[0], args[1:], dict(kwargs)))
        else:
            kwargs = dict(kwargs)
            calls.append((kwargs.pop("hidden_states"), (), kwargs))

    handle = blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    setattr(parent, attr, nn.ModuleList([blocks[0]]))
    try:
        device = next(model.parameters()).device
        for batch in tokens.split(batch_size):
            model(batch.to(device), use_cache=False)
    finally:
        setattr(parent, attr, blocks)
        handle.remove()
    return calls


def _run_block(block: nn.Module, call: Call) -> torch.Tensor:
    hidden, args, kwargs = call
    out = block(hidden, *args, **kwargs)  # every decoder block takes its hidden states first
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def _old_objects_frozen():
    """Each block ends with gc.collect() (a pruner's state can be large); with everything made before
    pruning frozen (gc.freeze), that pass looks only at the objects made since, instead of every object of
    torch, transformers and the model (about 0.25 s a pass, 7.5 s for SmolLM2's 30 blocks)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@torch.no_grad()
def prune_model(model: nn.Module, method: Method, pattern: Pattern, layer_filter: LayerFilter | None = None,
                calibration: torch.Tensor | None = None, batch_size: int = 8,
                refine: Refinement | None = None) -> PruneReport:
    """Prune `model` in place. `calibration` is a (samples, seq_len) token tensor, needed by methods
    with `needs_calibration`, by non-uniform allocations and by `refine` (DSnoT)."""
    if pattern.kind not in method.patterns:
        raise BenchError(f"method '{method.name}' does not support the {pattern.kind} pattern ({pattern.label})")
    if method.needs_calibration and calibration is None:
        raise BenchError(f"method '{method.name}' needs calibration data; give the job a [calibration] spec")
    if refine is not None:
        from bench.prune.refine import SUPPORTED

        if refine.name not in REFINEMENTS:
            raise BenchError(f"unknown refinement {refine.name!r}; known: {', '.join(REFINEMENTS)}")
        if pattern.kind not in SUPPORTED:
            raise BenchError(f"DSnoT refines {' and '.join(SUPPORTED)} patterns, not {pattern.label}")
        if calibration is None:
            raise BenchError("DSnoT refines masks with calibration statistics; give the job a [calibration] spec")
    start = time.perf_counter()
    report = PruneReport()
    prefix, blocks = find_blocks(model)
    by_block: dict[int, list[tuple[str, nn.Module]]] = defaultdict(list)
    for name, block, module in target_layers(model, layer_filter):
        by_block[block].append((name, module))
    owl = isinstance(pattern, Unstructured) and pattern.allocation == "owl"
    if owl and calibration is None:
        raise BenchError("the OWL allocation measures outliers on calibration inputs; give the job a [calibration] spec")
    observe = method.needs_calibration or refine is not None
    calls = _block_inputs(model, prefix, blocks, calibration, batch_size) if observe or owl else None
    block_targets = _owl_targets(blocks, calls, by_block, pattern) if owl else {}
    glob = isinstance(pattern, Unstructured) and pattern.scope == "global"
    layer_targets = _global_targets(blocks, calls, by_block, method, pattern) if glob else {}
    if not observe:
        calls = None
    with _old_objects_frozen():
        for index, block in enumerate(blocks):
            layers = by_block.get(index, [])
            block_pattern = pattern.for_block(block_targets[index]) if index in block_targets else pattern
            pruners = {name: method.pruner(name, weight_view(module).detach()) for name, module in layers}
            stats = {name: InputStats() for name, _ in layers} if refine is not None else {}
            if calls is not None and layers:
                observers = [(module, pruners[name]) for name, module in layers if method.needs_calibration]
                observers += [(module, stats[name]) for name, module in layers if stats]
                _observe_block(block, calls, observers)
            for name, module in layers:
                layer_pattern = pattern.for_block(layer_targets[name]) if glob else block_pattern
                _prune_layer(report, method, layer_pattern, name, index, module, pruners.pop(name),
                             stats.pop(name, None), refine)
            if calls is not None:
                calls = [(_run_block(block, call), call[1], call[2]) for call in calls]  # inputs of the next block
            del pruners
            gc.collect()
    report.seconds = time.perf_counter() - start
    return report


def _owl_targets(blocks: nn.ModuleList, calls: list[Call], by_block, pattern: Unstructured) -> dict[int, float]:
    """Per-block sparsity under OWL: a dense pass measures each block's outlier ratio D (the fraction of
    scores |W| * ||X|| above owl_m times their layer's mean); blocks keep 1 - target + (D scaled to
    [0, 2 * owl_lambda], minus its mean), so more outliers mean more kept weights and the mean is the target."""
    ratios: dict[int, float] = {}
    for index, block in enumerate(blocks):
        layers = by_block.get(index, [])
        norms = {name: InputStats() for name, _ in layers}
        outputs = _observe_block(block, calls, [(module, norms[name]) for name, module in layers])
        if layers:
            outliers = total = 0
            for name, module in layers:
                score = weight_view(module).detach().abs().double() * norms[name].norm.unsqueeze(0)
                outliers += int((score > pattern.owl_m * score.mean()).sum())
                total += score.numel()
            ratios[index] = outliers / total
        calls = [(out, call[1], call[2]) for out, call in zip(outputs, calls)]  # dense outputs feed the next block
    d = torch.tensor(list(ratios.values()), dtype=torch.float64)
    spread = float(d.max() - d.min()) if len(d) else 0.0
    scaled = (d - d.min()) / spread * 2 * pattern.owl_lambda if spread > 0 else torch.zeros_like(d)
    keep = scaled - scaled.mean() + (1 - pattern.target)
    return {index: float(1 - k) for index, k in zip(ratios, keep)}


def _global_targets(blocks: nn.ModuleList, calls: list[Call] | None, by_block, method: Method,
                    pattern: Unstructured) -> dict[str, float]:
    """Per-layer sparsity under a global threshold: one pass (dense, with calibration inputs when the method
    observes them) collects every target layer's scores from the method; the threshold that removes the
    target fraction of all of them gives each layer the fraction of its own scores at or below it."""
    scores: dict[str, torch.Tensor] = {}
    for index, block in enumerate(blocks):
        layers = by_block.get(index, [])
        pruners = {name: method.pruner(name, weight_view(module).detach()) for name, module in layers}
        if calls is not None:
            outputs = _observe_block(block, calls, [(module, pruners[name]) for name, module in layers])
            calls = [(out, call[1], call[2]) for out, call in zip(outputs, calls)]
        for name, module in layers:
            s = pruners[name].scores(weight_view(module).detach())
            if s is None:
                raise BenchError(f"method '{method.name}' has no per-weight scores to compare across layers; "
                                 "it cannot prune with a global scope")
            scores[name] = s.detach().float().flatten().cpu()
    everything = torch.cat(list(scores.values()))
    k = Unstructured(pattern.target).pruned_count(everything.numel())
    if k == 0:
        return {name: 0.0 for name in scores}
    threshold = torch.kthvalue(everything, k).values
    return {name: float((s <= threshold).sum()) / s.numel() for name, s in scores.items()}


def _observe_block(block: nn.Module, calls: list[Call], observers: list[tuple[nn.Module, Any]]) -> list[torch.Tensor]:
    """Run `block` on every calibration call while each (layer, observer) pair feeds the layer's inputs to
    `observer.add_batch`; return the block's outputs."""
    hooks = [module.register_forward_hook(_observer(obs)) for module, obs in observers]
    try:
        return [_run_block(block, call) for call in calls]
    finally:
        for h in hooks:
            h.remove()


def _observer(pruner):
    def hook(module, inputs, output):
        x = inputs[0]
        pruner.add_batch(x.reshape(-1, x.shape[-1]))
    return hook


def _prune_layer(report: PruneReport, method: Method, pattern: Pattern, name: str, block: int, module: nn.Module,
                 pruner, stats: InputStats | None = None, refine: Refinement | None = None) -> None:
    w = weight_view(module)
    new_w, mask = pruner.prune(w.detach().clone(), pattern)
    if refine is not None and mask.shape == w.shape:
        from bench.prune.refine import dsnot

        new_w, mask = dsnot(w.detach(), new_w, mask, stats.mean.float(), stats.norm.float(),
                            pattern, cycles=refine.cycles)
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
    if not bool(mask.all()) or not torch.equal(new_w, w):  # what an artifact must hold (dense layers stay out)
        report.masks[name] = mask.to("cpu", copy=True)
        if not torch.equal(new_w, w * mask):
            report.rewritten.add(name)
    w.copy_(new_w)
    report.layers.append({
        "layer": name, "block": block, "out_features": w.shape[0], "in_features": w.shape[1],
        "numel": measured["numel"], "zeros": measured["zeros"],
        "target_sparsity": pattern.sparsity, "measured_sparsity": measured["sparsity"],
    })
