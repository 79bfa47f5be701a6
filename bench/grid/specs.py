"""What a parsed grid holds: its methods, calibration and the whole GridSpec (models, patterns and the
accuracy and latency specs are typed in their own modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.accuracy.lmeval import TasksSpec
from bench.accuracy.perplexity import PerplexitySpec
from bench.patterns import Pattern
from bench.spec.jobs import ModelSpec
from bench.speed.latency import LatencySpec


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: dict[str, Any]
    refine: dict[str, Any] | None = None  # {"name": "dsnot", "cycles": 50}

    @property
    def label(self) -> str:
        return self.name + (f"+{self.refine['name']}" if self.refine else "")


@dataclass(frozen=True)
class CalibrationSpec:
    dataset: str = "builtin:synthetic"
    split: str = "train"
    samples: int = 32
    seq_len: int = 128
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GridSpec:
    source: str  # the file name used in messages
    text: str  # the grid file's exact contents, stored with the run
    name: str
    models: list[ModelSpec]
    methods: list[MethodSpec]
    patterns: list[Pattern]
    hardware: list[str]
    kernels: list[str]
    seeds: list[int]
    calibration: CalibrationSpec
    perplexity: PerplexitySpec
    latency: LatencySpec | None
    tasks: TasksSpec | None = None
    excludes: list[dict[str, str]] = field(default_factory=list)
    dense_baseline: bool = True
    layers: dict[str, list[str]] | None = None
    stage_timeout_s: float | None = None  # [runner] stage_timeout_s: a stage running longer fails (not retried)
    max_retries: int = 2  # [runner] max_retries: re-runs of a stage whose worker or node was lost
