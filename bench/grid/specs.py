"""What a parsed grid holds: its methods and the whole GridSpec (models and jobs are typed in bench.spec.jobs,
the protocols in bench.spec.protocols, patterns in bench.patterns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.activation import ActivationSpec
from bench.patterns import Pattern
from bench.spec.hardware import Hardware
from bench.spec.jobs import ModelSpec, method_label
from bench.spec.protocols import CalibrationSpec, LatencySpec, LayerFilter, PerplexitySpec, Refinement, TasksSpec


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: dict[str, Any]
    refine: Refinement | None = None

    @property
    def label(self) -> str:
        return method_label(self.name, self.refine)


@dataclass(frozen=True)
class GridSpec:
    source: str  # the file name used in messages
    text: str  # the grid file's exact contents, stored with the run
    name: str
    models: list[ModelSpec]
    methods: list[MethodSpec]
    patterns: list[Pattern]
    hardware: list[Hardware]
    kernels: list[str]
    seeds: list[int]
    calibration: CalibrationSpec
    perplexity: PerplexitySpec
    latency: LatencySpec | None
    tasks: TasksSpec | None = None
    excludes: list[dict[str, str]] = field(default_factory=list)
    dense_baseline: bool = True
    layers: LayerFilter | None = None
    stage_timeout_s: float | None = None  # [runner] stage_timeout_s: a stage running longer fails (not retried)
    max_retries: int = 2  # [runner] max_retries: re-runs of a stage whose worker or node was lost
    activations: list[ActivationSpec | None] = field(default_factory=lambda: [None])  # None: "none"
