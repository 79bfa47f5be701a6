"""The protocols a job runs under, as typed, frozen values: calibration, perplexity, lm-eval tasks, latency,
the layer filter and the mask refinement.

    spec = LatencySpec(decode_batch=(1, 8))
    spec.to_dict()                      # {"prefill_length": 128, ..., "decode_batch": [1, 8]}: JSON, for keys and the store
    LatencySpec.from_dict(d) == spec    # the one way back

A grid's parser makes them; a Job holds them; they become JSON once, when a job crosses into a Ray worker
or into the store, and are rebuilt by their own `from_dict` there. Each `to_dict` is the exact form that
job and stage keys hash, so its fields and their order are part of every key.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CalibrationSpec:
    """`samples` windows of `seq_len` tokens at seeded offsets in a dataset split (bench.prune.calibration)."""

    dataset: str = "builtin:synthetic"
    split: str = "train"
    samples: int = 32
    seq_len: int = 128
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "CalibrationSpec":
        return CalibrationSpec(**d)


@dataclass(frozen=True)
class PerplexitySpec:
    """Sliding windows over a split's text (the protocol is written out in bench.accuracy.perplexity)."""

    dataset: str = "builtin:synthetic"
    split: str = "test"
    context_length: int = 128
    stride: int = 128
    bos: bool = False
    max_tokens: int | None = None  # None: the whole split; a number: its first max_tokens tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "PerplexitySpec":
        return PerplexitySpec(**d)


@dataclass(frozen=True)
class TasksSpec:
    """lm-eval tasks as a grid names them (bench.accuracy.lmeval)."""

    names: tuple[str, ...] = ()
    num_fewshot: int = 0
    limit: int | None = None
    batch_size: int = 32
    include_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = list(self.names)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TasksSpec":
        return TasksSpec(**{**d, "names": tuple(d["names"])})


@dataclass(frozen=True)
class TaskSuite:
    """The tasks a job runs and what else determines their scores: lm-eval's version and a fingerprint of
    each task folder. Its JSON form is the TasksSpec's fields plus `lm_eval_version` and `folders`."""

    spec: TasksSpec
    lm_eval_version: str
    folders: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "lm_eval_version": self.lm_eval_version, "folders": list(self.folders)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TaskSuite":
        spec = {k: v for k, v in d.items() if k not in ("lm_eval_version", "folders")}
        return TaskSuite(TasksSpec.from_dict(spec), d["lm_eval_version"], tuple(d["folders"]))


@dataclass(frozen=True)
class LatencySpec:
    """End-to-end prefill and decode timing, candidate against dense reference and the reference against
    itself (bench.speed.latency). Rounds: `warmup` unrecorded, then at least `repeats` and at most
    `max_repeats`, stopping (from `repeats` on) once every speedup's 95% interval is within `precision` of
    its median or after `max_seconds` of recorded rounds (the per-shape loops share another `max_seconds`)."""

    prefill_length: int = 128
    prompt_length: int = 16
    decode_tokens: int = 32
    decode_batch: tuple[int, ...] = (1,)
    warmup: int = 2
    repeats: int = 7
    max_repeats: int = 50
    precision: float = 0.03
    max_seconds: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_batch"] = list(self.decode_batch)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "LatencySpec":
        return LatencySpec(**{**d, "decode_batch": tuple(d["decode_batch"])})


@dataclass(frozen=True)
class LayerFilter:
    """Glob patterns on full module names (e.g. `*.mlp.*`); a layer is a target if it matches an include
    pattern and no exclude pattern."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def __call__(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )

    def to_dict(self) -> dict[str, list[str]]:
        return {"include": list(self.include), "exclude": list(self.exclude)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "LayerFilter":
        return LayerFilter(tuple(d["include"]), tuple(d["exclude"]))


REFINEMENTS = ("dsnot",)


@dataclass(frozen=True)
class Refinement:
    """A mask refinement run after the method, e.g. DSnoT for `cycles` cycles (bench.prune.refine)."""

    name: str = "dsnot"
    cycles: int = 50

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Refinement":
        return Refinement(**d)


def as_json(spec) -> Any:
    """`spec.to_dict()` made once per spec object and shared (None stays None). A grid's jobs share their
    spec objects, so a 100k-job grid converts each a handful of times, not once per job and key. Specs are
    frozen, so the form never goes stale; callers must not mutate what they get."""
    if spec is None:
        return None
    cached = spec.__dict__.get("_json")
    if cached is None:
        cached = spec.to_dict()
        object.__setattr__(spec, "_json", cached)  # beside the fields: not compared, hashed or shown
    return cached
