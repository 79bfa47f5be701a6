"""The method plugin protocol.

A method prunes one linear layer at a time. The harness (`bench.prune.harness`) walks the model, feeds each layer's
calibration inputs to `LayerPruner.add_batch` when the method asks for calibration, then calls
`LayerPruner.prune(weight, pattern)`, which returns the pruned weight (zeros in place of pruned elements)
and its keep-mask. Methods never call kernels and never name a model architecture.

    class Magnitude(Method):
        name = "magnitude"
        version = "1"
        patterns = ("unstructured", "nm")

        def pruner(self, layer_name, weight):
            return ScorePruner(lambda w: w.abs())

A plugin package declares its class under the entry-point group `sparsebench.methods`.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from bench.errors import did_you_mean
from bench.patterns import Pattern


@dataclass(frozen=True)
class Param:
    """One method parameter: its type, default and allowed range, checked when the grid is parsed."""

    type: type
    default: Any
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None

    def check(self, value: Any) -> Any:
        """Return the value (ints widened to float where a float is wanted) or raise ValueError(msg)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (self.type is bool) or not isinstance(value, self.type):
            raise ValueError(f"expected {self.type.__name__}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, self.choices))}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{value!r} is above the maximum {self.max}")
        return value

    def describe(self) -> dict[str, Any]:
        d = {"type": self.type.__name__, "default": self.default, "doc": self.doc}
        d.update({k: getattr(self, k) for k in ("min", "max", "choices") if getattr(self, k) is not None})
        return d


def check_params(owner: str, params: dict[str, Param], raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` checked against a plugin's declared parameters, defaults filled in; raises ValueError(param
    name, message) for an unknown name or a bad value. Shared by weight methods and activation rules."""
    for key in raw:
        if key not in params:
            allowed = ", ".join(sorted(params)) or "none"
            raise ValueError(key, f"unknown parameter of '{owner}'{did_you_mean(key, params)}; allowed: {allowed}")
    out = {}
    for key, spec in params.items():
        try:
            out[key] = spec.check(raw[key]) if key in raw else spec.default
        except ValueError as err:
            raise ValueError(key, str(err)) from None
    return out


class LayerPruner:
    """The per-layer state of a method: observe calibration inputs, then prune."""

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Observe a batch of this layer's inputs, shape (tokens, in_features). Default: ignore."""

    def prune(self, weight: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pruned weight, keep-mask), both (out_features, in_features)."""
        raise NotImplementedError

    def scores(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Per-weight importance comparable across layers, for the global scope; None if the method has
        no such scores (then it cannot prune with a global threshold)."""
        return None


class InputStats:
    """Per input feature of one layer, over every calibration token it saw: the sum, the sum of squares
    (`sq`, the ||X_j||^2 of Wanda and OWL scores) and the token count `n`, hence the mean E[x_j] (DSnoT).
    In float64 on the inputs' device; `sum` and `sq` are None until the first batch."""

    def __init__(self):
        self.sum: torch.Tensor | None = None
        self.sq: torch.Tensor | None = None
        self.n = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().double()  # (tokens, in_features)
        s, sq = x.sum(dim=0), (x * x).sum(dim=0)
        self.sum, self.sq = (s, sq) if self.sq is None else (self.sum + s, self.sq + sq)
        self.n += x.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        """||X_j||_2 per input feature."""
        return self.sq.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n


class ScorePruner(LayerPruner):
    """Prune by a per-weight importance score: keep what the pattern's mask keeps, zero the rest."""

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor]):
        self.score = score

    def scores(self, weight):
        return self.score(weight.float())

    def prune(self, weight, pattern):
        mask = pattern.mask(self.score(weight.float()))
        return weight * mask, mask


class Method:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    needs_calibration: ClassVar[bool] = False
    patterns: ClassVar[tuple[str, ...]] = ("unstructured", "nm")
    params: ClassVar[dict[str, Param]] = {}
    description: ClassVar[str] = ""

    def __init__(self, seed: int = 0, **params: Any):
        self.seed = seed
        for key, value in self.validate_params(params).items():
            setattr(self, key, value)

    @classmethod
    def validate_params(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value checked; raises ValueError(param name, message)."""
        return check_params(cls.name, cls.params, raw)

    def pruner(self, layer_name: str, weight: torch.Tensor) -> LayerPruner:
        """A fresh LayerPruner for one layer. `weight` is (out_features, in_features), read-only."""
        raise NotImplementedError
