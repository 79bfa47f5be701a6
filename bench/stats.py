"""Summary statistics of repeated measurements, computed in one place."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


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
