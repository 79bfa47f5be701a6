"""The activation-sparsity plugin protocol: rules that zero part of each pruned linear layer's input at
inference, beside (and composable with) the weight methods.

A rule calibrates one threshold per layer input on the calibration data, on the pruned model: an entry
whose magnitude is at or under its layer's threshold counts as zero. The thresholds are stored with the
pruned model's artifact; `Thresholds` applies them in the forward pass (accuracy, and the latency of
backends whose kernels cannot skip inputs), and the native input-major kernels apply them themselves and
skip the weights of the inputs they zero.

    class Teal(ActivationMethod):
        name = "teal"
        params = {"sparsity": Param(float, 0.5, min=0.0, max=0.99)}
        shorthand = "sparsity"          # "teal:0.4" in a grid sets it

        def calibrate(self, model, layers, tokens):
            ...                         # {layer name: threshold}

A plugin package declares its class under the entry-point group `sparsebench.activations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bench.method import Param, check_params


@dataclass(frozen=True)
class ActivationSpec:
    """One entry of a grid's `activations`: the rule, its version and its parameters."""

    name: str
    version: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # as the leaderboard shows it, e.g. "teal:0.5"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": dict(self.params), "label": self.label}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ActivationSpec":
        return ActivationSpec(d["name"], d["version"], dict(d["params"]), d.get("label", d["name"]))

    @property
    def target(self) -> float | None:
        """The fraction of entries the rule aims to zero, where it has one."""
        value = self.params.get("sparsity")
        return float(value) if isinstance(value, (int, float)) else None


class ActivationMethod:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    params: ClassVar[dict[str, Param]] = {}
    shorthand: ClassVar[str | None] = None  # the parameter "name:value" sets
    description: ClassVar[str] = ""

    def __init__(self, **params: Any):
        for key, value in self.validate_params(params).items():
            setattr(self, key, value)

    @classmethod
    def validate_params(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value checked; raises ValueError(param name, message)."""
        return check_params(cls.name, cls.params, raw)

    @classmethod
    def label(cls, params: dict[str, Any]) -> str:
        """How the leaderboard names the rule with these parameters: `name:value` of the shorthand, plus
        any other parameter that differs from its default."""
        head = cls.name if cls.shorthand is None else f"{cls.name}:{params[cls.shorthand]:g}"
        rest = [f"{k}={v}" for k, v in sorted(params.items()) if k != cls.shorthand and v != cls.params[k].default]
        return head + (f"({', '.join(rest)})" if rest else "")

    def calibrate(self, model: torch.nn.Module, layers: dict[str, torch.nn.Module],
                  tokens: torch.Tensor) -> dict[str, dict[str, float]]:
        """Per layer name: {"threshold": t, "calibration_sparsity": the fraction of its calibration inputs
        at or under t}. `tokens` (samples, seq_len) are the calibration windows; `layers` the pruned layers."""
        raise NotImplementedError


def zero_under(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """x with every entry whose magnitude is at or under `threshold` set to zero (NaN kept), as the
    input-major kernels read it."""
    return x.masked_fill(x.abs() <= threshold, 0.0)


class Thresholds:
    """Forward pre-hooks that zero each layer's input entries at or under its threshold, counting what they
    zeroed; `remove()` takes them off. Layers whose module applies the threshold itself (the native
    input-major kernels: `skips_inputs`) get only the count when `count` is on."""

    def __init__(self, model: torch.nn.Module, thresholds: dict[str, float], count: bool = True):
        self.seen: dict[str, int] = {}
        self.zero: dict[str, int] = {}
        self._handles = []
        for name, threshold in thresholds.items():
            module = model.get_submodule(name)
            applies = not getattr(module, "skips_inputs", False)
            if applies or count:
                self._handles.append(module.register_forward_pre_hook(self._hook(name, float(threshold), applies, count)))

    def _hook(self, name: str, threshold: float, applies: bool, count: bool):
        def hook(module, args):
            x = args[0]
            if count:
                under = x.abs() <= threshold
                self.seen[name] = self.seen.get(name, 0) + under.numel()
                self.zero[name] = self.zero.get(name, 0) + int(under.sum())
                if applies:
                    return (x.masked_fill(under, 0.0), *args[1:])
                return None
            return (zero_under(x, threshold), *args[1:])
        return hook

    def sparsity(self) -> dict[str, float]:
        """Per layer, the fraction of the input entries it saw that were at or under its threshold."""
        return {name: self.zero[name] / self.seen[name] for name in self.seen if self.seen[name]}

    def overall(self) -> float | None:
        seen = sum(self.seen.values())
        return sum(self.zero.values()) / seen if seen else None

    def reset(self) -> None:
        self.seen.clear()
        self.zero.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
