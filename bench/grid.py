"""Grid files: parse and validate a TOML grid completely, then expand it into jobs.

    spec = load_grid("examples/quickstart.toml")     # raises GridError on the first problem
    jobs = expand(spec)                               # one Job per model x method x pattern x hardware x kernel x seed

Every error names the file, the field path and what was expected, e.g.
`grid.toml: patterns[1]: 1.3 is not in [0, 1)`. Nothing here runs a model or touches the store, so a
bad grid costs nothing. The grid format is described in docs/grid-format.md.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import GridError, did_you_mean
from bench.accuracy.perplexity import PerplexitySpec
from bench.spec.jobs import Job, ModelSpec
from bench.speed.latency import LatencySpec
from bench.accuracy.lmeval import TasksSpec
from bench.patterns import Dense, Pattern, parse_pattern
from bench.registry import kernel_registry, method_registry

DTYPES = ("float32", "bfloat16", "float16")
# What numbers can really take downstream. Integers are stored in 32-bit columns (seeds among them) and
# passed to C; a stage timeout is an interval timer; Ray counts retries in a C int.
MAX_INT = 2**31 - 1
MAX_STAGE_TIMEOUT_S = 7 * 24 * 3600.0
MAX_RETRIES = 100


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


class _Table:
    """A TOML table being read: `take` each known key, then `finish` rejects the unknown ones."""

    def __init__(self, source: str, path: str, data: Any):
        self.source, self.path = source, path
        if not isinstance(data, dict):
            self.fail("", f"expected a table, got {_kind(data)}")
        self.data, self.seen = data, set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else (self.path or key)

    def fail(self, key: str, message: str):
        raise GridError(self.source, self.where(key), message)

    def take(self, key: str, types, default=..., check=None):
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                self.fail(key, "missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in _tuple(types):
            self.fail(key, f"expected {_names(types)}, got a boolean")
        if not isinstance(value, types):
            self.fail(key, f"expected {_names(types)}, got {_kind(value)} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML's inf and nan: no field takes them
            self.fail(key, f"{value!r} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
            self.fail(key, f"{value} is out of range; integers here are at most {MAX_INT}")
        if check is not None:
            problem = check(value)
            if problem:
                self.fail(key, problem)
        return value

    def finish(self):
        for key in self.data:
            if key not in self.seen:
                self.fail(key, f"unknown field{did_you_mean(key, self.seen)}; allowed: {', '.join(sorted(self.seen))}")


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in _tuple(types))


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _positive(v):
    return None if v > 0 else f"{v} must be > 0"


def _nonnegative(v):
    return None if v >= 0 else f"{v} must be >= 0"


def load_grid(path: str | Path) -> GridSpec:
    path = Path(path)
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GridError(str(path), "", "no such grid file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GridError(str(path), "", f"cannot read it: {err}") from None
    return parse_grid(text, source=source)


def parse_grid(text: str, source: str = "grid.toml") -> GridSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GridError(source, "", f"not valid TOML: {err}") from None
    top = _Table(source, "", data)
    name = top.take("name", str, Path(source).stem)
    seeds = top.take("seeds", list, [0], check=lambda v: None if v else "must not be empty")
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_INT:
            raise GridError(source, f"seeds[{i}]", f"expected a non-negative integer of at most {MAX_INT}, got {s!r}")
        if s in seeds[:i]:
            raise GridError(source, f"seeds[{i}]", f"{s} is listed twice")
    dense_baseline = top.take("dense_baseline", bool, True)

    models = _models(source, top.take("models", list, check=lambda v: None if v else "must list at least one model"))
    methods = _methods(source, top.take("methods", list, check=lambda v: None if v else "must list at least one method"))
    patterns = _patterns(source, top.take("patterns", list, ["dense"]))
    hardware = _hardware(source, top.take("hardware", list, ["cpu"]))
    kernels = _kernels(source, top.take("kernels", list, ["torch-dense"]), hardware)

    cal = _Table(source, "calibration", top.take("calibration", dict, {}))
    calibration = CalibrationSpec(
        dataset=_absolute(cal.take("dataset", str, CalibrationSpec.dataset)),
        split=cal.take("split", str, CalibrationSpec.split),
        samples=cal.take("samples", int, CalibrationSpec.samples, check=_positive),
        seq_len=cal.take("seq_len", int, CalibrationSpec.seq_len, check=_positive),
        seed=cal.take("seed", int, CalibrationSpec.seed, check=_nonnegative),
    )
    cal.finish()

    ev = _Table(source, "evaluation", top.take("evaluation", dict, {}))
    ppl = _Table(source, "evaluation.perplexity", ev.take("perplexity", dict, {}))
    tasks = _tasks(source, ev.take("tasks", dict, None))
    ev.finish()
    d = PerplexitySpec()
    perplexity = PerplexitySpec(
        dataset=_absolute(ppl.take("dataset", str, d.dataset)),
        split=ppl.take("split", str, d.split),
        context_length=ppl.take("context_length", int, d.context_length, check=_positive),
        stride=ppl.take("stride", int, d.stride, check=_positive),
        bos=ppl.take("bos", bool, d.bos),
        max_tokens=ppl.take("max_tokens", int, d.max_tokens, check=_positive),
    )
    if perplexity.stride > perplexity.context_length:
        ppl.fail("stride", f"{perplexity.stride} is larger than context_length {perplexity.context_length}")
    ppl.finish()
    _check_dataset(source, "evaluation.perplexity.dataset", perplexity.dataset)
    if _calibrates(methods, patterns):
        _check_dataset(source, "calibration.dataset", calibration.dataset)

    layers = None
    if "layers" in data:
        lt = _Table(source, "layers", top.take("layers", dict))
        layers = {}
        for key in ("include", "exclude"):
            globs = lt.take(key, list, ["*"] if key == "include" else [])
            for i, g in enumerate(globs):
                if not isinstance(g, str) or not g:
                    lt.fail(f"{key}[{i}]", f"expected a glob on module names such as '*.mlp.*', got {g!r}")
            layers[key] = list(globs)
        lt.finish()
    else:
        top.seen.add("layers")

    lat = _Table(source, "latency", top.take("latency", dict, {}))
    d = LatencySpec()
    enabled = lat.take("enabled", bool, True)
    batches = lat.take("decode_batch", list, list(d.decode_batch), check=lambda v: None if v else "must not be empty")
    for i, b in enumerate(batches):
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= MAX_INT:
            lat.fail(f"decode_batch[{i}]", f"expected a positive integer, got {b!r}")
        if b in batches[:i]:
            lat.fail(f"decode_batch[{i}]", f"{b} is listed twice")
    latency = LatencySpec(
        prefill_length=lat.take("prefill_length", int, d.prefill_length, check=_positive),
        prompt_length=lat.take("prompt_length", int, d.prompt_length, check=_positive),
        decode_tokens=lat.take("decode_tokens", int, d.decode_tokens, check=_positive),
        decode_batch=tuple(batches),
        warmup=lat.take("warmup", int, d.warmup, check=_nonnegative),
        repeats=lat.take("repeats", int, d.repeats, check=_positive),
    )
    lat.finish()

    excludes = []
    for i, rule in enumerate(top.take("exclude", list, [])):
        t = _Table(source, f"exclude[{i}]", rule)
        r = {k: t.take(k, str, None) for k in ("model", "method", "pattern", "hardware", "kernel")}
        t.finish()
        r = {k: v for k, v in r.items() if v is not None}
        if not r:
            t.fail("", "an exclude rule needs at least one of model, method, pattern, hardware, kernel")
        if "pattern" in r:
            try:
                r["pattern"] = parse_pattern(r["pattern"]).label
            except ValueError as err:
                t.fail("pattern", err.args[1])
        excludes.append(r)

    run = _Table(source, "runner", top.take("runner", dict, {}))
    timeout = run.take("stage_timeout_s", (int, float), None,
                       check=lambda v: None if 0 < v <= MAX_STAGE_TIMEOUT_S else
                       f"must be a number of seconds in (0, {MAX_STAGE_TIMEOUT_S:g}] (7 days), got {v!r}; "
                       "leave it out for no timeout")
    max_retries = run.take("max_retries", int, 2, check=lambda v: None if 0 <= v <= MAX_RETRIES else
                           f"{v} must be in [0, {MAX_RETRIES}]")
    run.finish()
    top.finish()
    _check_positions(source, models, calibration if _calibrates(methods, patterns) else None, perplexity,
                     latency if enabled else None)

    return GridSpec(
        source=source, text=text, name=name, models=models, methods=methods, patterns=patterns,
        hardware=hardware, kernels=kernels, seeds=list(seeds), calibration=calibration,
        perplexity=perplexity, latency=latency if enabled else None, tasks=tasks, excludes=excludes,
        dense_baseline=dense_baseline, layers=layers,
        stage_timeout_s=float(timeout) if timeout is not None else None, max_retries=max_retries,
    )


def _calibrates(methods: list[MethodSpec], patterns: list[Pattern]) -> bool:
    """Whether any job of the grid reads calibration data."""
    return (any(method_registry().get(m.name).needs_calibration or m.refine for m in methods)
            or any(p.needs_calibration for p in patterns))


def max_positions(folder: str | Path) -> int | None:
    """The longest sequence a local model's config allows (None when it does not say)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _check_positions(source: str, models: list[ModelSpec], calibration: CalibrationSpec | None,
                     perplexity: PerplexitySpec, latency: LatencySpec | None) -> None:
    """Sequence lengths no model of the grid can take would fail every job at run time: refused here."""
    lengths = [("evaluation.perplexity.context_length", perplexity.context_length)]
    if calibration is not None:
        lengths.append(("calibration.seq_len", calibration.seq_len))
    if latency is not None:
        lengths += [("latency.prefill_length", latency.prefill_length),
                    ("latency.decode_tokens", latency.prompt_length + latency.decode_tokens)]
    for model in models:
        limit = max_positions(model.location) if model.source != "hub" else None
        if limit is None:
            continue
        for field_path, n in lengths:
            if n > limit:
                what = (f"prompt_length + decode_tokens = {n}" if field_path == "latency.decode_tokens" else str(n))
                raise GridError(source, field_path, f"{what} is longer than model '{model.name}' takes "
                                                    f"({limit} positions in its config.json); give at most {limit}")


def _models(source: str, items: list) -> list[ModelSpec]:
    from bench.model import zoo

    out, names = [], set()
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"builtin": item.removeprefix("builtin:")} if item.startswith("builtin:") else {"path": item}
        t = _Table(source, f"models[{i}]", item)
        path = t.take("path", str, None)
        hub = t.take("hub", str, None)
        builtin = t.take("builtin", str, None)
        if sum(x is not None for x in (path, hub, builtin)) != 1:
            t.fail("", "give exactly one of `path` (a local folder), `hub` (a model id such as 'org/name') "
                       "or `builtin` (one of the project's models)")
        if builtin is not None:
            known = zoo.builtin_names()
            if builtin not in known:
                t.fail("builtin", f"unknown built-in model '{builtin}'{did_you_mean(builtin, known)}; known: {', '.join(known) or 'none'}")
            path = str(zoo.builtin_path(builtin))
        revision = t.take("revision", str, None)
        if revision is not None and path is not None:
            t.fail("revision", "only a `hub` model has a revision; a local `path` is used as it is")
        dtype = t.take("dtype", str, "float32", check=lambda v: None if v in DTYPES else f"'{v}' is not one of {', '.join(DTYPES)}")
        if path is not None:
            folder = Path(path).expanduser()
            if not folder.is_dir():
                t.fail("path", f"'{path}' is not a folder; give the directory that holds config.json (relative to where bench runs)")
            if not (folder / "config.json").is_file():
                t.fail("path", f"'{path}' has no config.json; point it at a folder saved with save_pretrained")
            location, kind = str(folder.resolve()), "builtin" if builtin is not None else "path"
        else:
            if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", hub):
                t.fail("hub", f"'{hub}' is not a model id; write it as 'org/name'")
            location, kind = hub, "hub"
        default_name = hub.split("/")[-1] if kind == "hub" else Path(location).name
        name = t.take("name", str, default_name)
        expect = t.take("expect_perplexity", (int, float), None, check=lambda v: None if v > 1 else f"{v} is not a perplexity (> 1)")
        tolerance = t.take("expect_tolerance", (int, float), 0.01, check=lambda v: None if 0 < v < 1 else f"{v} is not a relative tolerance in (0, 1)")
        t.finish()
        if name in names:
            t.fail("name", f"'{name}' names two models; give each a distinct `name`")
        names.add(name)
        out.append(ModelSpec(name=name, source=kind, location=location, revision=revision or ("main" if kind == "hub" else None),
                             dtype=dtype, expect_perplexity=None if expect is None else float(expect),
                             expect_tolerance=float(tolerance)))
    return out


def _tasks(source: str, data: dict | None) -> TasksSpec | None:
    if data is None:
        return None
    from bench.accuracy.lmeval import unknown_tasks

    t = _Table(source, "evaluation.tasks", data)
    names = t.take("names", list, check=lambda v: None if v else "list at least one lm-eval task, group or tag, e.g. [\"synthetic\"]")
    for i, n in enumerate(names):
        if not isinstance(n, str):
            t.fail(f"names[{i}]", f"expected a task name, got {n!r}")
        if n in names[:i]:
            t.fail(f"names[{i}]", f"'{n}' is listed twice")
    include = t.take("include_path", str, None)
    if include is not None and not Path(include).expanduser().is_dir():
        t.fail("include_path", f"'{include}' is not a folder of lm-eval task files")
    spec = TasksSpec(
        names=tuple(names),
        num_fewshot=t.take("num_fewshot", int, 0, check=_nonnegative),
        limit=t.take("limit", int, None, check=_positive),
        batch_size=t.take("batch_size", int, 32, check=_positive),
        include_path=str(Path(include).expanduser().resolve()) if include else None,
    )
    t.finish()
    missing, known = unknown_tasks(spec.names, spec.include_path)
    if missing:
        i = names.index(missing[0])
        t.fail(f"names[{i}]", f"unknown lm-eval task '{missing[0]}'{did_you_mean(missing[0], known)}")
    return spec


def _tasks_identity(spec: TasksSpec | None) -> dict[str, Any] | None:
    """The tasks spec plus what else determines task scores: lm-eval's version and the task files."""
    if spec is None:
        return None
    from importlib.metadata import version

    from bench.spec.jobs import folder_fingerprint
    from bench.accuracy.lmeval import include_paths

    return {**spec.to_dict(), "lm_eval_version": version("lm_eval"),
            "folders": [folder_fingerprint(p) for p in include_paths(spec.include_path)]}


def _methods(source: str, items: list) -> list[MethodSpec]:
    registry = method_registry()
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        t = _Table(source, f"methods[{i}]", item)
        name = t.take("name", str)
        if name not in registry:
            t.fail("name", f"unknown method '{name}'{did_you_mean(name, registry.names())}; known: {', '.join(registry.names())}")
        cls = registry.get(name)
        raw = t.take("params", dict, {})
        try:
            params = cls.validate_params(raw)
        except ValueError as err:
            key, message = err.args
            raise GridError(source, f"methods[{i}].params.{key}" if key else f"methods[{i}].params", message) from None
        refine = t.take("refine", (str, dict), None)
        if refine is not None:
            r = _Table(source, f"methods[{i}].refine", {"name": refine} if isinstance(refine, str) else refine)
            rname = r.take("name", str)
            if rname != "dsnot":
                r.fail("name", f"unknown refinement '{rname}'{did_you_mean(rname, ['dsnot'])}; known: dsnot")
            refine = {"name": rname, "cycles": r.take("cycles", int, 50, check=_positive)}
            r.finish()
            if cls.patterns == ("dense",):
                t.fail("refine", "the dense method prunes nothing to refine")
        t.finish()
        spec = MethodSpec(name=name, params=params, refine=refine)
        if spec in out:
            raise GridError(source, f"methods[{i}]", f"'{spec.label}' with these params is listed twice")
        out.append(spec)
    return out


def _patterns(source: str, items: list) -> list[Pattern]:
    out = []
    for i, item in enumerate(items):
        try:
            p = parse_pattern(item)
        except ValueError as err:
            key, message = err.args
            raise GridError(source, f"patterns[{i}]" + (f".{key}" if key and isinstance(item, dict) else ""), message) from None
        if p in out:
            raise GridError(source, f"patterns[{i}]", f"'{p.label}' is listed twice")
        out.append(p)
    return out


def _hardware(source: str, items: list) -> list[str]:
    from bench.spec.hardware import Hardware

    for i, h in enumerate(items):
        try:
            Hardware.parse(h)
        except ValueError as err:
            raise GridError(source, f"hardware[{i}]", str(err)) from None
    if len(set(items)) != len(items) or not items:
        raise GridError(source, "hardware", "must list each target once, and at least one")
    return list(items)


def _kernels(source: str, items: list, hardware: list[str]) -> list[str]:
    registry = kernel_registry()
    for i, k in enumerate(items):
        if not isinstance(k, str) or k not in registry:
            raise GridError(source, f"kernels[{i}]", f"unknown kernel backend {k!r}{did_you_mean(k, registry.names())}; known: {', '.join(registry.names())}")
    if len(set(items)) != len(items) or not items:
        raise GridError(source, "kernels", "must list each backend once, and at least one")
    return list(items)


def _absolute(dataset: str) -> str:
    """Local dataset paths become absolute: Ray workers need not share the driver's working directory."""
    if dataset.startswith(("builtin:", "hf:")):
        return dataset
    return str(Path(dataset).expanduser().resolve())


def _check_dataset(source: str, field_path: str, dataset: str) -> None:
    from bench.accuracy.data import check_dataset

    problem = check_dataset(dataset)
    if problem:
        raise GridError(source, field_path, problem)


def _excluded(rules: list[dict[str, str]], values: dict[str, str]) -> bool:
    return any(all(values[k] == v for k, v in rule.items()) for rule in rules)


def expand(spec: GridSpec) -> list[Job]:
    """All jobs of the grid, in a stable order, without duplicates.

    The `dense` method runs once per model (its pattern is always `dense`); when `dense_baseline` is on,
    every model gets that dense job even if the grid does not list the method, because relative figures
    (change vs dense, speedup vs dense) come from it. A method paired with a pattern it does not support
    is skipped, and the pairing is reported by `incompatible`.
    """
    methods = list(spec.methods)
    if spec.dense_baseline and not any(m.name == "dense" for m in methods):
        methods.insert(0, MethodSpec(name="dense", params={}))
    registry, kernels = method_registry(), kernel_registry()
    tasks = _tasks_identity(spec.tasks)
    # made once and shared by the jobs (frozen; nothing mutates them): 100k jobs made in seconds
    calibration, perplexity = spec.calibration.to_dict(), spec.perplexity.to_dict()
    latency = spec.latency.to_dict() if spec.latency else None
    pattern_dicts = {p: p.to_dict() for p in [Dense(), *spec.patterns]}
    jobs, seen = [], set()
    for model in spec.models:
        for m in methods:
            cls = registry.get(m.name)
            patterns = [Dense()] if cls.patterns == ("dense",) else [p for p in spec.patterns if p.kind in cls.patterns]
            if m.refine:
                from bench.prune.refine import SUPPORTED

                patterns = [p for p in patterns if p.kind in SUPPORTED]
            for pattern in patterns:
                for hw in spec.hardware:
                    for kernel in spec.kernels:
                        if not kernels.get(kernel).supports_device(hw):
                            continue
                        for seed in spec.seeds:
                            values = {"model": model.name, "method": m.label, "pattern": pattern.label, "hardware": hw, "kernel": kernel}
                            if _excluded(spec.excludes, values):
                                continue
                            job = Job(
                                model=model, method=m.name, method_version=cls.version, method_params=m.params,
                                pattern=pattern_dicts[pattern], hardware=hw, kernel=kernel,
                                kernel_version=kernels.get(kernel).version, seed=seed, refine=m.refine,
                                calibration=calibration
                                if cls.needs_calibration or pattern.needs_calibration or m.refine else None,
                                perplexity=perplexity, latency=latency, tasks=tasks,
                                layers=spec.layers if m.name != "dense" else None,
                            )
                            if job.key not in seen:
                                seen.add(job.key)
                                jobs.append(job)
    return jobs


def why_no_jobs(spec: GridSpec) -> str:
    """Why `expand(spec)` is empty, naming the fields to change."""
    kernels = kernel_registry()
    if not any(kernels.get(k).supports_device(hw) for hw in spec.hardware for k in spec.kernels):
        return (f"no backend in `kernels` ({', '.join(spec.kernels)}) runs on a target in `hardware` "
                f"({', '.join(spec.hardware)}); add one that does, e.g. torch-dense")
    registry = method_registry()
    runnable = [m for m in spec.methods if registry.get(m.name).patterns == ("dense",)
                or any(p.kind in registry.get(m.name).patterns for p in spec.patterns)]
    if not runnable and not spec.dense_baseline:
        return (f"no method in `methods` supports a pattern in `patterns` ({', '.join(incompatible(spec))}) and "
                "dense_baseline is false; add a pattern the methods support")
    return "every job matches an [[exclude]] rule; loosen the rules"


def incompatible(spec: GridSpec) -> list[str]:
    """Method x pattern pairs of the grid that the method does not support (reported, not run)."""
    registry = method_registry()
    out = []
    for m in spec.methods:
        cls = registry.get(m.name)
        if cls.patterns == ("dense",):
            continue
        out += [f"{m.name} x {p.label}" for p in spec.patterns if p.kind not in cls.patterns and p.kind != "dense"]
    return out
