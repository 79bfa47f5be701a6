"""Jobs and their content keys.

A job is one (model, method, pattern, hardware, kernel, seed) cell of a grid with everything needed to
run it. Its key is a hash of everything that determines its results: the model's content fingerprint,
the method's name, version and parameters, the pattern, the calibration, perplexity and latency specs,
the hardware, the kernel backend and its version, the seed, and the version of each stage's code. A
resubmitted grid skips jobs whose key is already done in the store; changing any of these makes a new key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

# Bump a stage's version when a change to its code changes the numbers it produces: every stored result
# of that stage then gets a new key and is recomputed instead of being reused.
STAGE_VERSIONS = {"prune": 1, "perplexity": 1, "lm_eval": 1, "latency": 2}


def content_key(obj: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-able object (dict keys sorted, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def folder_fingerprint(folder: str | Path) -> str:
    """Hash of every file's relative path and bytes in a model folder (weights included).

    Reading the weights costs about a second per GB; it makes the key follow the model's contents, so a
    retrained model in the same folder is never mistaken for the old one.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the label shown on the leaderboard
    source: str  # "path", "builtin" or "hub"
    location: str  # absolute folder, or hub id
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
    model: ModelSpec
    method: str
    method_version: str
    method_params: dict[str, Any]
    pattern: dict[str, Any]
    hardware: str
    kernel: str
    kernel_version: str
    seed: int
    calibration: dict[str, Any] | None
    perplexity: dict[str, Any]
    latency: dict[str, Any] | None
    tasks: dict[str, Any] | None = None  # lm-eval: TasksSpec plus lm-eval's version and the task folders' fingerprint
    layers: dict[str, Any] | None = None  # the layer filter: {"include": [...], "exclude": [...]}; None = default
    refine: dict[str, Any] | None = None  # a mask refinement after the method, e.g. {"name": "dsnot", "cycles": 50}

    def prune_identity(self) -> dict[str, Any]:
        return {
            "model": self.model.identity(), "method": self.method, "method_version": self.method_version,
            "params": self.method_params, "pattern": self.pattern, "calibration": self.calibration,
            **({"layers": self.layers} if self.layers else {}),
            **({"refine": self.refine} if self.refine else {}),
            "seed": self.seed, "code": STAGE_VERSIONS["prune"],
        }

    @cached_property  # a job is frozen: computed once (100k-job grids call these many times)
    def key(self) -> str:
        return content_key({
            "prune": self.prune_identity(),
            "perplexity": [self.perplexity, STAGE_VERSIONS["perplexity"]],
            "tasks": [self.tasks, STAGE_VERSIONS["lm_eval"]] if self.tasks else None,
            "latency": [self.latency, STAGE_VERSIONS["latency"]],
            "hardware": self.hardware, "kernel": [self.kernel, self.kernel_version],
        })

    # The stage graph (see bench.run.runner): one prune stage per pruned model, shared by every job that needs
    # it; one evaluation per pruned model and accuracy protocol (hardware-independent); one latency stage
    # per pruned model x hardware x kernel. Each stage's key covers exactly what determines its output.
    @cached_property
    def prune_key(self) -> str:
        return content_key({"prune": self.prune_identity()}, length=24)

    @cached_property
    def eval_key(self) -> str:
        return content_key({"evaluate": self.prune_key, "perplexity": [self.perplexity, STAGE_VERSIONS["perplexity"]],
                            "tasks": [self.tasks, STAGE_VERSIONS["lm_eval"]] if self.tasks else None}, length=24)

    @cached_property
    def latency_key(self) -> str | None:
        if self.latency is None:
            return None
        return content_key({"time": self.prune_key, "latency": [self.latency, STAGE_VERSIONS["latency"]],
                            "hardware": self.hardware, "kernel": [self.kernel, self.kernel_version]}, length=24)

    def stage_keys(self) -> dict[str, str]:
        """{"prune": key, "evaluate": key[, "latency": key]}: the stages this job's record is made of."""
        keys = {"prune": self.prune_key, "evaluate": self.eval_key}
        if self.latency is not None:
            keys["latency"] = self.latency_key
        return keys

    @cached_property
    def pattern_label(self) -> str:
        from bench.patterns import pattern_from_dict

        return pattern_from_dict(self.pattern).label

    @cached_property
    def sparsity(self) -> float:
        from bench.patterns import pattern_from_dict

        return pattern_from_dict(self.pattern).sparsity

    @property
    def method_label(self) -> str:
        """The method as shown on the leaderboard: its name, plus `+dsnot` when refined."""
        return self.method + (f"+{self.refine['name']}" if self.refine else "")

    def describe(self) -> str:
        return f"{self.model.name} · {self.method_label} · {self.pattern_label} · {self.hardware} · {self.kernel} · seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able values, for the Ray boundary and the store. Shallow: the nested dicts are the
        job's own, not copies (dataclasses.asdict deep-copied them: 10 s for 100k jobs); do not mutate them."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = {f.name: getattr(self.model, f.name) for f in fields(self.model)}
        d["key"] = self.key
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Job":
        d = {k: v for k, v in d.items() if k != "key"}
        d["model"] = ModelSpec(**d["model"])
        return Job(**d)
