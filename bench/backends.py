"""Kernel backends: what actually multiplies the pruned weights during the latency stage.

A backend receives the pruned model (dense weights with zeros, plus masks) and returns a model whose
linear layers run on its kernels, with provenance: which backend ran each layer, in what format, how many
bytes of weights it read, and why it fell back when it did. A backend that runs the zeros through a dense
kernel says so: such a pattern is recorded as "mask only", however sparse it is.

Backends are found through the entry-point group `sparsebench.kernels`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bench.patterns import Pattern


class KernelBackend:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    description: ClassVar[str] = ""

    @classmethod
    def supports_device(cls, hardware: str) -> bool:
        return hardware.split(":")[0] in cls.devices

    def accelerates(self, pattern: Pattern) -> bool:
        """Whether this backend skips the zeros of `pattern` (rather than multiplying them)."""
        return False

    def prepare(self, model: torch.nn.Module, layers: dict[str, torch.nn.Module], pattern: Pattern) -> dict[str, Any]:
        """Swap the pruned `layers` (name -> module) of `model` for this backend's modules, in place.

        Returns provenance: {"backend", "format", "weight_bytes", "dense_weight_bytes", "accelerated",
        "fallbacks": [reasons], "status"}.
        """
        raise NotImplementedError


def weight_bytes(layers: dict[str, torch.nn.Module]) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in layers.values())


class TorchDense(KernelBackend):
    """PyTorch's own dense matmul: the zeros are multiplied like any other weight."""

    name = "torch-dense"
    version = "1"
    devices = ("cpu", "cuda")
    description = "PyTorch dense matmul (nn.Linear as is); sparse patterns buy no speed here."

    def prepare(self, model, layers, pattern):
        dense_bytes = weight_bytes(layers)
        sparse = pattern.sparsity > 0
        return {
            "backend": self.name,
            "format": "dense",
            "weight_bytes": dense_bytes,
            "dense_weight_bytes": dense_bytes,
            "accelerated": False,
            "fallbacks": [],
            "status": "mask only" if sparse else "dense",
            "note": "zeros are multiplied by a dense kernel" if sparse else "",
        }
