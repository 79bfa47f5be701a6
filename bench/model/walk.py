"""The model walk: the stack of transformer blocks and the linear layers inside them, found without naming an
architecture. The pruning harness and the kernel side (backends, latency, artifacts) share it.

    prefix, blocks = find_blocks(model)                   # "model.layers", the nn.ModuleList
    for name, block_index, module in target_layers(model, LayerFilter(exclude=("*.mlp.down_proj",))): ...
    weight_view(module)                                   # (out_features, in_features), a view

The stack of blocks is the largest `nn.ModuleList` of identical modules that holds linear layers
(`model.layers` in Llama, `h` in GPT-2, `decoder.layers` in OPT...). Target layers are the linear layers
inside those blocks (`nn.Linear`, and GPT-2's transposed `Conv1D`), never the embeddings or the LM head,
narrowed by a `LayerFilter`.
"""

from __future__ import annotations


import torch
from torch import nn

from bench.errors import BenchError
from bench.spec.protocols import LayerFilter  # noqa: F401 (the filter is a job's spec; imported from here too)


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
