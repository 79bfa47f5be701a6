"""Jobs and their content keys.

A job is one (model, method, pattern, activations, hardware, kernel, seed) cell of a grid with everything needed to
run it. Its key is a hash of everything that determines its results: the model's content fingerprint,
the method's name, version and parameters, the pattern, the activation rule (if any), the calibration, perplexity and latency specs,
the hardware, the kernel backend and its version, the seed, and the version of each stage's code. A
resubmitted grid skips jobs whose key is already done in the store; changing any of these makes a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.activation import ActivationSpec
from bench.patterns import Pattern, pattern_from_dict
from bench.spec.hardware import Hardware
from bench.spec.protocols import (CalibrationSpec, LatencySpec, LayerFilter, PerplexitySpec, Refinement, TaskSuite,
                                  as_json)

# Bump a stage's version when a change to its code changes the numbers it produces: every stored result
# of that stage then gets a new key and is recomputed instead of being reused.
STAGE_VERSIONS = {"prune": 1, "perplexity": 2, "lm_eval": 2, "latency": 4, "reference": 1}

# The driver's settings that change what this project's native kernels measure: the instruction set they
# run at (the CPU's highest unless lowered) and the thread pool's spin between calls. They travel with the
# run to its workers (bench.run.cluster.FORWARDED_ENV), and those set enter the key of every job on a
# native kernel (Job.native_env): timings made under other settings never stand in for them.
NATIVE_ENV = ("SPARSEBENCH_ISA", "SPARSEBENCH_SPIN_US")


def native_env_now() -> tuple[tuple[str, str], ...]:
    """The NATIVE_ENV settings of this process that are set, as (name, value) pairs."""
    return tuple((name, os.environ[name]) for name in NATIVE_ENV if os.environ.get(name))


def content_key(obj: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-able object (dict keys sorted, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def folder_fingerprint(folder: str | Path) -> str:
    """Hash of every file's relative path and bytes in a model folder (weights included); for a single
    file (a GGUF model), of its bytes.

    Reading the weights costs about a second per GB; it makes the key follow the model's contents, so a
    retrained model in the same folder is never mistaken for the old one.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    if folder.is_file():
        with open(folder, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the label shown on the leaderboard
    source: str  # "path", "builtin", "gguf" or "hub"
    location: str  # absolute folder, absolute GGUF file, or hub id
    revision: str | None = None
    dtype: str = "float32"
    fingerprint: str = field(default="", compare=False)
    # The dense sanity gate: the perplexity the dense model should reach under the grid's protocol. It does
    # not change results, so it is not part of any key.
    expect_perplexity: float | None = field(default=None, compare=False)
    expect_tolerance: float = field(default=0.01, compare=False)

    def __post_init__(self):
        if not self.fingerprint:
            fp = f"{self.location}@{self.revision}" if self.source == "hub" else folder_fingerprint(self.location)
            object.__setattr__(self, "fingerprint", fp)

    def identity(self) -> dict[str, Any]:
        """What determines the model's weights: contents, not the label or where it lies."""
        return {"fingerprint": self.fingerprint, "dtype": self.dtype}


@dataclass(frozen=True)
class Job:
    """One cell of a grid. Its pattern, hardware target and protocols are typed, frozen values shared with
    the grid's other jobs; `to_dict` turns it into JSON once (for a Ray worker and for the store) and
    `from_dict` is the one way back."""

    model: ModelSpec
    method: str
    method_version: str
    method_params: dict[str, Any]
    pattern: Pattern
    hardware: Hardware
    kernel: str
    kernel_version: str
    seed: int
    calibration: CalibrationSpec | None
    perplexity: PerplexitySpec
    latency: LatencySpec | None
    tasks: TaskSuite | None = None  # lm-eval: the tasks plus lm-eval's version and the task folders' fingerprints
    layers: LayerFilter | None = None  # the layer filter; None = every linear layer of the blocks
    refine: Refinement | None = None  # a mask refinement after the method, e.g. DSnoT for 50 cycles
    # an activation-sparsity rule (e.g. teal:0.5): thresholds calibrated on the pruned model in the prune
    # stage and stored with its artifact; None = dense activations
    activations: ActivationSpec | None = None
    # on a kernel of this project's (KernelBackend.runs_native): the run's NATIVE_ENV settings, e.g.
    # (("SPARSEBENCH_ISA", "avx2"),); empty: the defaults (each node's highest ISA, which the provenance names)
    native_env: tuple[tuple[str, str], ...] = ()

    def prune_identity(self) -> dict[str, Any]:
        return {
            "model": self.model.identity(), "method": self.method, "method_version": self.method_version,
            "params": self.method_params, "pattern": as_json(self.pattern), "calibration": as_json(self.calibration),
            **({"layers": as_json(self.layers)} if self.layers else {}),
            **({"refine": as_json(self.refine)} if self.refine else {}),
            **({"activations": as_json(self.activations)} if self.activations else {}),
            "seed": self.seed, "code": STAGE_VERSIONS["prune"],
        }

    def _accuracy_identity(self) -> dict[str, Any]:
        return {"perplexity": [as_json(self.perplexity), STAGE_VERSIONS["perplexity"]],
                "tasks": [as_json(self.tasks), STAGE_VERSIONS["lm_eval"]] if self.tasks else None}

    def _speed_identity(self) -> dict[str, Any]:
        return {"latency": [as_json(self.latency), STAGE_VERSIONS["latency"]],
                "hardware": self.hardware.label, "kernel": [self.kernel, self.kernel_version],
                **({"native_env": [list(pair) for pair in self.native_env]} if self.native_env else {})}

    @cached_property  # a job is frozen: computed once (100k-job grids call these many times)
    def key(self) -> str:
        return content_key({"prune": self.prune_identity(), **self._accuracy_identity(), **self._speed_identity()})

    # The stage graph (see bench.run.plan): one prune stage per pruned model, shared by every job that needs
    # it; one evaluation per pruned model and accuracy protocol (hardware-independent); one latency stage
    # per pruned model x hardware x kernel. Each stage's key covers exactly what determines its output.
    @cached_property
    def prune_key(self) -> str:
        return content_key({"prune": self.prune_identity()}, length=24)

    @cached_property
    def eval_key(self) -> str:
        return content_key({"evaluate": self.prune_key, **self._accuracy_identity()}, length=24)

    @cached_property
    def latency_key(self) -> str | None:
        if self.latency is None:
            return None
        return content_key({"time": self.prune_key, **self._speed_identity()}, length=24)

    def stage_keys(self) -> dict[str, str]:
        """{"prune": key, "evaluate": key[, "latency": key]}: the stages this job's record is made of."""
        keys = {"prune": self.prune_key, "evaluate": self.eval_key}
        if self.latency is not None:
            keys["latency"] = self.latency_key
        return keys

    @property
    def method_label(self) -> str:
        """The method as shown on the leaderboard: its name, plus `+dsnot` when refined."""
        return method_label(self.method, self.refine)

    @property
    def is_dense_baseline(self) -> bool:
        """Whether this is the dense model itself, every relative figure's reference: the dense method with
        dense activations (the dense method under an activation rule is a sparse configuration)."""
        return self.method == "dense" and self.activations is None

    @property
    def activations_label(self) -> str:
        """The activation rule as the leaderboard shows it: `none`, or e.g. `teal:0.5`."""
        return self.activations.label if self.activations else "none"

    def describe(self) -> str:
        acts = f" · activations {self.activations.label}" if self.activations else ""
        return (f"{self.model.name} · {self.method_label} · {self.pattern.label}{acts} · {self.hardware.label} · "
                f"{self.kernel} · seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON, for the Ray boundary and the store. The nested dicts are shared with the job's
        other conversions and with the grid's other jobs (made once per spec object): do not mutate them."""
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = {f.name: getattr(self.model, f.name) for f in fields(self.model)}
        for name in ("pattern", "calibration", "perplexity", "latency", "tasks", "layers", "refine", "activations"):
            d[name] = as_json(d[name])
        d["hardware"] = self.hardware.label
        d["key"] = self.key
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Job":
        def typed(cls, value):
            return None if value is None else cls.from_dict(value)

        d = {k: v for k, v in d.items() if k != "key"}
        return Job(**{
            **d, "model": ModelSpec(**d["model"]), "pattern": pattern_from_dict(d["pattern"]),
            "hardware": Hardware.parse(d["hardware"]), "calibration": typed(CalibrationSpec, d["calibration"]),
            "perplexity": PerplexitySpec.from_dict(d["perplexity"]), "latency": typed(LatencySpec, d["latency"]),
            "tasks": typed(TaskSuite, d.get("tasks")), "layers": typed(LayerFilter, d.get("layers")),
            "refine": typed(Refinement, d.get("refine")), "activations": typed(ActivationSpec, d.get("activations")),
            "native_env": tuple(tuple(pair) for pair in d.get("native_env", ())),
        })


def method_label(name: str, refine: Refinement | None) -> str:
    """How the leaderboard names a method: `wanda`, or `wanda+dsnot` when its masks are refined."""
    return name + (f"+{refine.name}" if refine else "")
