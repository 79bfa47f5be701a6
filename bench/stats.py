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


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: (lo, hi, coverage).

    The order statistics x_(k) and x_(n+1-k) bracket the median with probability 1 - 2 P(B < k) for
    B ~ Binomial(n, 1/2), whatever the distribution of the values (continuous, independent rounds). k is the
    largest index whose coverage is at least `level`; with too few values for that (n < 6 at 95%) the
    interval is the whole range and `coverage` says what it really is.
    """
    v = sorted(values)
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    if n == 1:
        return v[0], v[0], 0.0
    cdf, below = [], 0.0  # cdf[j] = P(B <= j)
    for j in range(n + 1):
        below += math.comb(n, j) / 2**n
        cdf.append(below)
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * cdf[k] >= level:  # P(B < k+1) = cdf[k]
        k += 1
    return v[k - 1], v[n - k], 1 - 2 * cdf[k - 1]


# What a speedup's interval says, against the dense model timed against itself (A/A) in the same rounds.
VERDICTS = ("faster", "slower", "no measurable difference", "dense")


@dataclass(frozen=True)
class Speedup:
    """Per-round paired ratios reference time / candidate time, summarised for a verdict.

    `median` is the point estimate; (lo, hi) its distribution-free interval at `coverage`; `half_width`
    is (hi - lo) / 2 relative to the median, the precision the adaptive rounds aim for.
    """

    count: int
    median: float
    lo: float
    hi: float
    coverage: float
    half_width: float
    p10: float
    p90: float

    @staticmethod
    def from_times(reference: list[float], candidate: list[float], level: float = 0.95) -> "Speedup":
        ratios = [r / c for r, c in zip(reference, candidate, strict=True)]
        s = Summary.from_values(ratios)
        lo, hi, coverage = median_interval(ratios, level)
        return Speedup(count=s.count, median=s.median, lo=lo, hi=hi, coverage=coverage,
                       half_width=(hi - lo) / 2 / s.median, p10=s.p10, p90=s.p90)

    def verdict(self, noise: "Speedup | None" = None) -> str:
        """`faster` when the interval lies above 1 and the median beyond the A/A band (`noise`: the
        dense model against itself, whose interval shows how far from 1 a ratio that is truly 1 reads);
        `slower` the mirror image; otherwise `no measurable difference`."""
        band = 1.0 if noise is None else max(noise.hi, 1 / noise.lo, 1.0)
        if self.lo > 1 and self.median > band:
            return "faster"
        if self.hi < 1 and self.median < 1 / band:
            return "slower"
        return "no measurable difference"

    def to_dict(self) -> dict:
        return asdict(self)


def metric(name: str, value: float, unit: str, higher_is_better: bool | None, stage: str,
           details: dict[str, Any] | None = None, stderr: float | None = None) -> dict[str, Any]:
    """One figure as a stage returns it and the store's metrics table holds it. `higher_is_better` is None
    for a figure that is neither (measured sparsity); `details` holds what produced it."""
    return {"name": name, "value": float(value), "unit": unit, "higher_is_better": higher_is_better,
            "stderr": None if stderr is None else float(stderr), "stage": stage, "details": details}
