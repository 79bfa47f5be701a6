"""Sparsity patterns: where zeros may go.

    p = parse_pattern("2:4")                 # or "unstructured:0.7", "dense", {kind = "nm", n = 2, m = 4}
    mask = p.mask(scores)                    # scores (out, in), higher = keep; mask True = kept
    report = p.verify(weight)                # raises PatternViolation if the weight breaks the pattern

Every method turns its importance scores into a mask through `Pattern.mask`, so no method writes its own
top-k loop, and every pruned layer is checked by `Pattern.verify`, which measures the sparsity it found.
Weights are (out_features, in_features); N:M groups run along the input dimension, the axis a sparse
matrix-vector kernel reduces over.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch


class PatternViolation(ValueError):
    """A pruned weight does not obey the pattern it was pruned for."""


@dataclass(frozen=True)
class Pattern:
    kind: ClassVar[str] = ""

    @property
    def sparsity(self) -> float:
        """The fraction of weights the pattern removes (a target; `verify` measures the real one)."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        raise NotImplementedError

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean keep-mask of the shape of `scores`; the highest scores are kept."""
        raise NotImplementedError

    def check(self, weight: torch.Tensor) -> None:
        """Raise PatternViolation if `weight` has fewer zeros, or zeros in other places, than allowed."""
        raise NotImplementedError

    def verify(self, weight: torch.Tensor) -> dict[str, Any]:
        """Check `weight` against the pattern and return what was measured."""
        if weight.dim() != 2:
            raise PatternViolation(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
        self.check(weight)
        zeros = int((weight == 0).sum())
        return {"numel": weight.numel(), "zeros": zeros, "sparsity": zeros / weight.numel()}

    @property
    def needs_calibration(self) -> bool:
        """Whether the pattern itself needs calibration inputs (a non-uniform allocation measured on them)."""
        return getattr(self, "allocation", "uniform") != "uniform"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Dense(Pattern):
    kind: ClassVar[str] = "dense"

    @property
    def sparsity(self) -> float:
        return 0.0

    @property
    def label(self) -> str:
        return "dense"

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(scores, dtype=torch.bool)

    def check(self, weight: torch.Tensor) -> None:
        return None


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep-mask of the `n_keep` highest entries along the last dim; ties go to the lower index. Long rows
    take a selection (above the n_keep-th value, then the first ties): the stable sort's mask, bit for bit."""
    n = scores.shape[-1]
    if n > 64 and 0 < n_keep < n and not torch.isnan(scores).any():
        threshold = torch.kthvalue(scores, n - n_keep + 1, dim=-1, keepdim=True).values
        above = scores > threshold
        tie = scores == threshold
        return above | (tie & (tie.cumsum(-1) <= n_keep - above.sum(-1, keepdim=True)))
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n_keep], True)
    return mask


@dataclass(frozen=True)
class Unstructured(Pattern):
    """A fraction of the weights, anywhere in the layer (`scope="layer"`) or in each output row.

    `allocation="owl"` spreads the target unevenly over the blocks (OWL, Yin et al. 2023): blocks with
    more outlier weights (score |W| * ||X|| above `owl_m` times the block's mean) keep more, within
    +-`owl_lambda` of the target, and the blocks' mean sparsity stays the target. The harness computes
    the per-block targets from a dense calibration pass and prunes each block with its own target.
    """

    kind: ClassVar[str] = "unstructured"
    target: float = 0.5
    scope: str = "layer"
    allocation: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08

    # "global": one threshold over every target layer's scores. The harness turns it into a per-layer
    # target before the method prunes each layer; on a single tensor it acts like "layer".
    SCOPES: ClassVar[tuple[str, ...]] = ("layer", "row", "global")
    ALLOCATIONS: ClassVar[tuple[str, ...]] = ("uniform", "owl")

    @property
    def sparsity(self) -> float:
        return self.target

    @property
    def label(self) -> str:
        pct = f"{self.target * 100:g}%"
        label = pct if self.scope == "layer" else f"{pct}/{self.scope}"
        return label if self.allocation == "uniform" else f"{label}/owl"

    def for_block(self, target: float) -> "Unstructured":
        """The uniform pattern one block (or layer) is pruned with under a non-uniform allocation."""
        return Unstructured(target=target, scope="layer" if self.scope == "global" else self.scope)

    def pruned_count(self, numel: int) -> int:
        """Weights to remove from a group of `numel`: at least the target fraction (so a per-row count
        never adds up to fewer zeros than the per-layer count of the same target)."""
        return min(numel, math.ceil(self.target * numel - 1e-9))

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        if self.scope == "row":
            return _keep_top(scores, scores.shape[-1] - self.pruned_count(scores.shape[-1]))
        flat = scores.reshape(1, -1)
        return _keep_top(flat, flat.shape[-1] - self.pruned_count(flat.shape[-1])).reshape(scores.shape)

    def check(self, weight: torch.Tensor) -> None:
        if self.scope == "row":
            need = self.pruned_count(weight.shape[1])
            zeros = (weight == 0).sum(dim=1)
            bad = torch.nonzero(zeros < need).flatten()
            if len(bad):
                r = int(bad[0])
                raise PatternViolation(f"row {r} has {int(zeros[r])} zeros, the pattern needs at least {need}")
        else:
            need = self.pruned_count(weight.numel())
            zeros = int((weight == 0).sum())
            if zeros < need:
                raise PatternViolation(f"{zeros} zeros of {weight.numel()}, the pattern needs at least {need}")


@dataclass(frozen=True)
class NM(Pattern):
    """At most N nonzeros in every group of M consecutive inputs (2:4 keeps 2 of every 4).

    When in_features is not a multiple of M, the last group of each row is shorter and keeps at most N.
    """

    kind: ClassVar[str] = "nm"
    n: int = 2
    m: int = 4

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}"

    def _groups(self, t: torch.Tensor, fill) -> torch.Tensor:
        out, k = t.shape
        pad = (-k) % self.m
        if pad:
            t = torch.cat([t, t.new_full((out, pad), fill)], dim=1)
        return t.reshape(out, -1, self.m)  # (out, groups, m)

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        k = scores.shape[1]
        groups = self._groups(scores.float(), -math.inf)
        keep = _keep_top(groups, self.n).reshape(scores.shape[0], -1)
        return keep[:, :k]

    def check(self, weight: torch.Tensor) -> None:
        nonzero = self._groups((weight != 0).to(torch.int32), 0).sum(dim=-1)  # (out, groups)
        bad = torch.nonzero(nonzero > self.n)
        if len(bad):
            r, g = (int(x) for x in bad[0])
            raise PatternViolation(
                f"row {r}, group {g} (inputs {g * self.m}..{g * self.m + self.m - 1}) has "
                f"{int(nonzero[r, g])} nonzeros, {self.label} allows {self.n}"
            )


def _tiles(t: torch.Tensor, rows: int, cols: int, fill) -> torch.Tensor:
    """(out, in) -> (out_tiles, in_tiles, rows*cols), padding the edges with `fill`."""
    out, k = t.shape
    t = torch.nn.functional.pad(t, (0, (-k) % cols, 0, (-out) % rows), value=fill)
    r, c = t.shape[0] // rows, t.shape[1] // cols
    return t.reshape(r, rows, c, cols).permute(0, 2, 1, 3).reshape(r, c, rows * cols)


@dataclass(frozen=True)
class Block(Pattern):
    """Whole `rows` x `cols` tiles are removed, the fraction `target` of the tiles (edge tiles may be smaller)."""

    kind: ClassVar[str] = "block"
    target: float = 0.5
    rows: int = 4
    cols: int = 4

    @property
    def sparsity(self) -> float:
        return self.target

    @property
    def label(self) -> str:
        return f"{self.target * 100:g}%/block{self.rows}x{self.cols}"

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        tiles = _tiles(scores.float(), self.rows, self.cols, 0.0).sum(-1)  # (R, C) tile importance
        keep = Unstructured(self.target).mask(tiles)
        full = keep.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)
        return full[: scores.shape[0], : scores.shape[1]]

    def check(self, weight: torch.Tensor) -> None:
        nonzero = _tiles((weight != 0).to(torch.int32), self.rows, self.cols, 0).sum(-1)
        empty, need = int((nonzero == 0).sum()), Unstructured(self.target).pruned_count(nonzero.numel())
        if empty < need:
            raise PatternViolation(f"{empty} of {nonzero.numel()} {self.rows}x{self.cols} tiles are all zero, "
                                   f"the pattern needs at least {need}")


@dataclass(frozen=True)
class Channels(Pattern):
    """Whole output channels (rows of the weight) are removed: the fraction `target` of them."""

    kind: ClassVar[str] = "channels"
    target: float = 0.5

    @property
    def sparsity(self) -> float:
        return self.target

    @property
    def label(self) -> str:
        return f"{self.target * 100:g}%/channels"

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        keep_rows = Unstructured(self.target).mask(scores.float().sum(dim=1, keepdim=True))
        return keep_rows.expand_as(scores).clone()

    def check(self, weight: torch.Tensor) -> None:
        empty = int((weight != 0).sum(dim=1).eq(0).sum())
        need = Unstructured(self.target).pruned_count(weight.shape[0])
        if empty < need:
            raise PatternViolation(f"{empty} of {weight.shape[0]} output channels are all zero, the pattern needs at least {need}")


PATTERN_KINDS: dict[str, type[Pattern]] = {p.kind: p for p in (Dense, Unstructured, NM, Block, Channels)}


def parse_pattern(value: Any) -> Pattern:
    """Build a pattern from a grid value; raise ValueError(field, message) on bad input.

    Accepted: "dense"; "unstructured:0.7" or "70%"; "2:4"; or a table with `kind` and the fields of that
    kind: {kind="unstructured", target, scope="layer"|"row"}, {kind="nm", n, m},
    {kind="block", target, rows=4, cols=4}, {kind="channels", target}. The ValueError's args are (field path relative to the value, message).
    """
    if isinstance(value, str):
        return _from_text(value)
    if isinstance(value, dict):
        return _from_table(value)
    raise ValueError("", f"{value!r} is not a pattern; write a string like '2:4' or a table with `kind`")


def _from_text(value: str) -> Pattern:
    text = value.strip().lower()
    if text == "dense":
        return Dense()
    if text.endswith("%"):
        return _unstructured(_number(text[:-1], "") / 100.0, "layer")
    if text.startswith("unstructured:"):
        return _unstructured(_number(text.split(":", 1)[1], ""), "layer")
    if text.count(":") == 1:
        n, m = text.split(":")
        if n.strip().isdigit() and m.strip().isdigit():
            return _nm(int(n), int(m))
    raise ValueError("", f"'{value}' is not a pattern; write 'dense', 'unstructured:0.5', '50%', '2:4' or a table")


def _from_table(value: dict[str, Any]) -> Pattern:
    kind = value.get("kind")
    if kind not in PATTERN_KINDS:
        from bench.errors import did_you_mean

        raise ValueError("kind", f"'{kind}' is not a pattern kind{did_you_mean(kind, PATTERN_KINDS)}; "
                         f"known: {', '.join(PATTERN_KINDS)}")
    allowed = {"kind"} | {f for f in PATTERN_KINDS[kind].__dataclass_fields__}
    for key in value:
        if key not in allowed:
            raise ValueError(key, f"unknown field for a {kind} pattern; allowed: {', '.join(sorted(allowed))}")
    if kind == "dense":
        return Dense()
    if kind in ("block", "channels"):
        return _tiles_table(kind, value)
    if kind == "unstructured":
        return _unstructured_table(value)
    for key in ("n", "m"):
        if not isinstance(value.get(key), int) or isinstance(value.get(key), bool):
            raise ValueError(key, f"{value.get(key)!r} is not an integer")
    return _nm(value["n"], value["m"])


def _tiles_table(kind: str, value: dict[str, Any]) -> Pattern:
    """{kind = "block", target, rows, cols} or {kind = "channels", target}."""
    if "target" not in value:
        raise ValueError("target", f"missing; give the fraction of {'tiles' if kind == 'block' else 'channels'} to remove")
    target = _unstructured(_number(value["target"], "target"), "layer").target
    if kind == "channels":
        return Channels(target=target)
    for key in ("rows", "cols"):
        v = value.get(key, 4)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(key, f"{v!r} is not a positive integer")
    return Block(target=target, rows=value.get("rows", 4), cols=value.get("cols", 4))


def _unstructured_table(value: dict[str, Any]) -> Unstructured:
    """{kind = "unstructured", target, scope, allocation[, owl_m, owl_lambda]}."""
    if "target" not in value:
        raise ValueError("target", "missing; give the fraction of weights to remove, e.g. target = 0.5")
    scope = value.get("scope", "layer")
    if scope not in Unstructured.SCOPES:
        raise ValueError("scope", f"'{scope}' is not one of {', '.join(Unstructured.SCOPES)}")
    base = _unstructured(_number(value["target"], "target"), scope)
    allocation = value.get("allocation", "uniform")
    if allocation not in Unstructured.ALLOCATIONS:
        raise ValueError("allocation", f"'{allocation}' is not one of {', '.join(Unstructured.ALLOCATIONS)}")
    if allocation == "uniform":  # OWL's settings mean nothing here: refused if given, never checked
        for key in ("owl_m", "owl_lambda"):
            if key in value:
                raise ValueError(key, "applies only with allocation = \"owl\"; drop it or set the allocation")
        return base
    if scope == "global":
        raise ValueError("allocation", "a global scope already sets every layer's share; use one or the other")
    d = Unstructured()
    m, lam = _number(value.get("owl_m", d.owl_m), "owl_m"), _number(value.get("owl_lambda", d.owl_lambda), "owl_lambda")
    if m <= 0:
        raise ValueError("owl_m", f"{m:g} must be > 0")
    bound = min(base.target, 1 - base.target)
    if not 0 <= lam <= bound:
        given = "" if "owl_lambda" in value else " (the default)"
        raise ValueError("owl_lambda", f"{lam:g}{given} must be in [0, {bound:g}] at target {base.target:g}, "
                         "so that every block's sparsity stays in [0, 1]; set owl_lambda to at most that")
    return Unstructured(base.target, scope, allocation, m, lam)


def _number(x: Any, field: str) -> float:
    """A finite number (TOML's inf and nan, and strings that spell them, are refused)."""
    if isinstance(x, bool):
        raise ValueError(field, f"{x!r} is not a number")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(field, f"{x!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(field, f"{x!r} is not a finite number")
    return v


def _unstructured(target: float, scope: str) -> Unstructured:
    if not 0.0 <= target < 1.0:
        raise ValueError("target", f"{target:g} is not in [0, 1)")
    return Unstructured(target=target, scope=scope)


def _nm(n: int, m: int) -> NM:
    if not (1 <= n < m):
        raise ValueError("n", f"{n}:{m} is impossible; N:M needs 1 <= N < M")
    return NM(n=n, m=m)


def pattern_from_dict(d: dict[str, Any]) -> Pattern:
    """Inverse of `Pattern.to_dict` (used when a job crosses a process boundary). The dict holds a pattern
    that `parse_pattern` already validated, every field included, so it is rebuilt, not parsed again
    (parsing would hold a uniform pattern's stored OWL defaults against rules meant for OWL)."""
    fields = dict(d)
    kind = fields.pop("kind")
    if kind not in PATTERN_KINDS:
        raise ValueError("kind", f"'{kind}' is not a pattern kind")
    return PATTERN_KINDS[kind](**fields)
