"""Summary statistics of repeated measurements, and the record every stage returns per figure, each made
in one place."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    count: int
    median: float
    p10: float
    p90: float
    mean: float
    stdev: float
    min: float
    max: float

    @staticmethod
    def from_values(values: list[float]) -> "Summary":
        v = sorted(values)
        return Summary(
            count=len(v), median=quantile(v, 0.5), p10=quantile(v, 0.1), p90=quantile(v, 0.9),
            mean=statistics.fmean(v), stdev=statistics.stdev(v) if len(v) > 1 else 0.0, min=v[0], max=v[-1],
        )

    @staticmethod
    def paired_ratios(reference: list[float], candidate: list[float]) -> "Summary":
        """Per-round ratios reference / candidate (speedup): the two timings of a round share the machine's
        state, so drift that moves both cancels in their ratio."""
        return Summary.from_values([r / c for r, c in zip(reference, candidate, strict=True)])

    def to_dict(self) -> dict:
        return asdict(self)


def metric(name: str, value: float, unit: str, higher_is_better: bool | None, stage: str,
           details: dict[str, Any] | None = None, stderr: float | None = None) -> dict[str, Any]:
    """One figure as a stage returns it and the store's metrics table holds it. `higher_is_better` is None
    for a figure that is neither (measured sparsity); `details` holds what produced it."""
    return {"name": name, "value": float(value), "unit": unit, "higher_is_better": higher_is_better,
            "stderr": None if stderr is None else float(stderr), "stage": stage, "details": details}
