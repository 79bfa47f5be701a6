"""Activation sparsity in the latency stage: the real inputs a layer's thresholds act on, and what the
input-major kernels skipped.

    inputs = capture_inputs(model, names, spec, vocab_size)   # {batch: {layer name: (batch, K) input}}
    counts = skipped_inputs(model)                            # summed over the model's input-major layers
"""

from __future__ import annotations

from typing import Any

import torch

from bench.spec.protocols import LatencySpec
from bench.speed.latency import _decode


def capture_inputs(model: torch.nn.Module, names: list[str], spec: LatencySpec, vocab_size: int,
                   seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    """Per decode batch, each named layer's input at the last step of a short greedy decode (rows = the
    batch), as the model really produces it: the activations an activation rule's thresholds act on. The
    hooks run before any other pre-hook of the layer, so they see the input before a threshold zeroes it."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 2)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for b in spec.decode_batch:
        seen: dict[str, torch.Tensor] = {}

        def hook_for(name):
            def hook(module, args):
                x = args[0]
                if x.numel() // x.shape[-1] == b:  # a decode step, not the prompt
                    seen[name] = x.detach().reshape(b, x.shape[-1]).clone()
            return hook

        handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n), prepend=True) for n in names]
        try:
            prompt = torch.randint(0, vocab_size, (b, spec.prompt_length), generator=gen).to(device)
            _decode(model, prompt, min(4, spec.decode_tokens))()
        finally:
            for h in handles:
                h.remove()
        out[b] = seen
    return out


def skipped_inputs(model: torch.nn.Module) -> dict[str, Any]:
    """What the input-major kernels of `model` skipped over the whole latency stage, summed."""
    total = {"calls": 0, "inputs": 0, "inputs_skipped": 0, "entries": 0, "entries_zero": 0}
    for module in model.modules():
        if getattr(module, "skips_inputs", False):
            for k, v in module.packed.activation_counts().items():
                total[k] += v
    total["inputs_skipped_fraction"] = total["inputs_skipped"] / total["inputs"] if total["inputs"] else None
    total["entries_zero_fraction"] = total["entries_zero"] / total["entries"] if total["entries"] else None
    return total
