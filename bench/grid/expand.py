"""A GridSpec to its jobs: one per model x method x pattern x activations x hardware x kernel x seed, in a
stable order.

    jobs = expand(spec)
"""

from __future__ import annotations

from collections import Counter

from bench.grid.specs import GridSpec, MethodSpec
from bench.patterns import Dense, Pattern
from bench.registry import kernel_registry, method_registry
from bench.spec.jobs import Job, folder_fingerprint, native_env_now
from bench.spec.protocols import TaskSuite, TasksSpec


def _task_suite(spec: TasksSpec | None) -> TaskSuite | None:
    """The tasks plus what else determines task scores: lm-eval's version and the task files."""
    if spec is None:
        return None
    from importlib.metadata import version

    from bench.accuracy.lmeval import include_paths

    return TaskSuite(spec, version("lm_eval"), tuple(folder_fingerprint(p) for p in include_paths(spec.include_path)))


_DENSE = Dense()  # one object for every dense job, so its JSON form is made once


def _excluded(rules: list[dict[str, str]], values: dict[str, str]) -> bool:
    return any(all(values[k] == v for k, v in rule.items()) for rule in rules)


def _patterns_for(method: MethodSpec, cls, patterns) -> list[Pattern]:
    """The grid's patterns this method (and its refinement, if any) runs with; `dense` alone for the
    dense method."""
    if cls.patterns == ("dense",):
        return [_DENSE]
    out = [p for p in patterns if p.kind in cls.patterns]
    if method.refine:
        from bench.prune.refine import SUPPORTED

        out = [p for p in out if p.kind in SUPPORTED]
    return out


def expand(spec: GridSpec, dropped: Counter | None = None) -> list[Job]:
    """All jobs of the grid, in a stable order, without duplicates.

    The `dense` method runs once per model (its pattern is always `dense`); when `dense_baseline` is on,
    every model gets that dense job even if the grid does not list the method, because relative figures
    (change vs dense, speedup vs dense) come from it. A method paired with a pattern it does not support
    is skipped, and the pairing is reported by `incompatible`. `dropped`, if given, counts what left cells
    out: "pattern" (a method with no pattern to run; `parse_grid` refuses such a grid), "kernel" (a backend that does not run on a hardware
    target), "exclude" (an [[exclude]] rule). The driver's NATIVE_ENV settings (SPARSEBENCH_ISA, ...) are
    part of every job on this project's kernels (`Job.native_env`): the run's workers get them.
    """
    dropped = Counter() if dropped is None else dropped
    native_env = native_env_now()
    methods = list(spec.methods)
    if spec.dense_baseline and not any(m.name == "dense" for m in methods):
        methods.insert(0, MethodSpec(name="dense", params={}))
    registry, kernels = method_registry(), kernel_registry()
    tasks = _task_suite(spec.tasks)
    jobs, seen = [], set()  # the jobs share the grid's spec objects (frozen), and so their JSON forms
    for model in spec.models:
        for m in methods:
            cls = registry.get(m.name)
            patterns = _patterns_for(m, cls, spec.patterns)
            dropped["pattern"] += not patterns
            for pattern, acts in ((p, a) for p in patterns for a in spec.activations):
                for hw in spec.hardware:
                    for kernel in spec.kernels:
                        if not kernels.get(kernel).supports_device(hw.device):
                            dropped["kernel"] += 1
                            continue
                        for seed in spec.seeds:
                            values = {"model": model.name, "method": m.label, "pattern": pattern.label,
                                      "activations": acts.label if acts else "none", "hardware": hw.label,
                                      "kernel": kernel}
                            if _excluded(spec.excludes, values):
                                dropped["exclude"] += 1
                                continue
                            job = Job(
                                model=model, method=m.name, method_version=cls.version, method_params=m.params,
                                pattern=pattern, hardware=hw, kernel=kernel,
                                kernel_version=kernels.get(kernel).version, seed=seed, refine=m.refine,
                                calibration=spec.calibration
                                if cls.needs_calibration or pattern.needs_calibration or m.refine or acts else None,
                                perplexity=spec.perplexity, latency=spec.latency, tasks=tasks,
                                layers=spec.layers if m.name != "dense" else None, activations=acts,
                                native_env=native_env if kernels.get(kernel).runs_native else (),
                            )
                            if job.key not in seen:
                                seen.add(job.key)
                                jobs.append(job)
    return jobs


def why_no_jobs(spec: GridSpec) -> str:
    """Why `expand(spec)` is empty, naming the fields to change (from what `expand` itself left out)."""
    kernels = kernel_registry()
    if not any(kernels.get(k).supports_device(hw.device) for hw in spec.hardware for k in spec.kernels):
        return (f"no backend in `kernels` ({', '.join(spec.kernels)}) runs on a target in `hardware` "
                f"({', '.join(h.label for h in spec.hardware)}); add one that does, e.g. torch-dense")
    dropped: Counter = Counter()
    expand(spec, dropped)
    reasons = []
    if dropped["exclude"]:
        reasons.append("every other job matches an [[exclude]] rule; loosen the rules" if reasons else
                       "every job matches an [[exclude]] rule; loosen the rules")
    return "; ".join(reasons)


def incompatible(spec: GridSpec) -> list[str]:
    """Method x pattern pairs of the grid that the method (or its refinement) does not support (reported,
    not run)."""
    registry = method_registry()
    out = []
    for m in spec.methods:
        cls = registry.get(m.name)
        if cls.patterns == ("dense",):
            continue
        runs = _patterns_for(m, cls, spec.patterns)
        out += [f"{m.label} x {p.label}" for p in spec.patterns if p not in runs and p.kind != "dense"]
    return out
