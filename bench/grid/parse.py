"""A grid file to a GridSpec: every table read and checked, in the order of the grid format.

    spec = load_grid("examples/quickstart.toml")     # raises GridError on the first problem
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from bench.errors import GridError
from bench.grid.fields import (_absolute, _activations, _calibrates, _check_dataset, _check_positions, _hardware, _kernels,
                               _methods, _models, _patterns, _tasks)
from bench.grid.specs import GridSpec
from bench.grid.table import MAX_INT, MAX_RETRIES, MAX_STAGE_TIMEOUT_S, _nonnegative, _positive, _Table
from bench.patterns import parse_pattern
from bench.spec.protocols import CalibrationSpec, LatencySpec, LayerFilter, PerplexitySpec, TasksSpec


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
    """Every table of the grid read and checked, in the order of the grid format; the first problem raises."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GridError(source, "", f"not valid TOML: {err}") from None
    top = _Table(source, "", data)
    name = top.take("name", str, Path(source).stem)
    seeds = _seeds(source, top.take("seeds", list, [0], check=lambda v: None if v else "must not be empty"))
    dense_baseline = top.take("dense_baseline", bool, True)
    models = _models(source, top.take("models", list, check=lambda v: None if v else "must list at least one model"))
    methods = _methods(source, top.take("methods", list, check=lambda v: None if v else "must list at least one method"))
    patterns = _patterns(source, top.take("patterns", list, ["dense"]))
    activations = _activations(source, top.take("activations", list, ["none"],
                                                check=lambda v: None if v else 'must not be empty; give ["none"]'))
    hardware = _hardware(source, top.take("hardware", list, ["cpu"]))
    kernels = _kernels(source, top.take("kernels", list, ["torch-dense"]), hardware)
    calibration = _calibration(_Table(source, "calibration", top.take("calibration", dict, {})))
    perplexity, tasks = _evaluation(_Table(source, "evaluation", top.take("evaluation", dict, {})))
    _check_dataset(source, "evaluation.perplexity.dataset", perplexity.dataset)
    calibrates = _calibrates(methods, patterns, activations)
    if calibrates:
        _check_dataset(source, "calibration.dataset", calibration.dataset)
    layers = _layers(_Table(source, "layers", top.take("layers", dict))) if "layers" in data else None
    top.seen.add("layers")
    latency = _latency(_Table(source, "latency", top.take("latency", dict, {})))
    excludes = [_exclude(_Table(source, f"exclude[{i}]", rule)) for i, rule in enumerate(top.take("exclude", list, []))]
    timeout, max_retries = _runner(_Table(source, "runner", top.take("runner", dict, {})))
    top.finish()
    _check_positions(source, models, calibration if calibrates else None, perplexity, latency)
    _check_every_method_runs(source, methods, patterns, "patterns" in data)
    return GridSpec(
        source=source, text=text, name=name, models=models, methods=methods, patterns=patterns,
        hardware=hardware, kernels=kernels, seeds=seeds, calibration=calibration, perplexity=perplexity,
        latency=latency, tasks=tasks, excludes=excludes, dense_baseline=dense_baseline, layers=layers,
        stage_timeout_s=timeout, max_retries=max_retries, activations=activations,
    )


def _check_every_method_runs(source: str, methods, patterns, given: bool) -> None:
    """A pruning method with no pattern of the grid to run is refused, naming it: otherwise it would leave
    the grid without a word (only the dense job would run for it)."""
    from bench.grid.expand import _patterns_for
    from bench.registry import method_registry

    registry = method_registry()
    for i, m in enumerate(methods):
        cls = registry.get(m.name)
        if cls.patterns == ("dense",) or _patterns_for(m, cls, patterns):
            continue
        if not given:
            why = 'the grid has no `patterns` (the default, ["dense"], prunes nothing)'
        else:
            kinds = sorted({p.kind for p in patterns})
            supported = list(cls.patterns)
            if m.refine:
                from bench.prune.refine import SUPPORTED

                supported = [k for k in supported if k in SUPPORTED]
            why = (f"it prunes to {', '.join(supported)} patterns{' when refined' if m.refine else ''}, and `patterns` "
                   f"holds {', '.join(kinds)} only")
        raise GridError(source, f"methods[{i}]", f"'{m.label}' has no pattern to run: {why}; add one it supports to "
                        '`patterns` (e.g. patterns = ["50%", "2:4"]), or remove the method')


def _seeds(source: str, seeds: list) -> list[int]:
    for i, s in enumerate(seeds):
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_INT:
            raise GridError(source, f"seeds[{i}]", f"expected a non-negative integer of at most {MAX_INT}, got {s!r}")
        if s in seeds[:i]:
            raise GridError(source, f"seeds[{i}]", f"{s} is listed twice")
    return list(seeds)


def _calibration(cal: "_Table") -> CalibrationSpec:
    d = CalibrationSpec()
    calibration = CalibrationSpec(
        dataset=_absolute(cal.take("dataset", str, d.dataset)),
        split=cal.take("split", str, d.split),
        samples=cal.take("samples", int, d.samples, check=_positive),
        seq_len=cal.take("seq_len", int, d.seq_len, check=_positive),
        seed=cal.take("seed", int, d.seed, check=_nonnegative),
    )
    cal.finish()
    return calibration


def _max_tokens(v):
    """Unset means the whole split; a set value must leave something to evaluate."""
    why = _positive(v)
    return why and f"{why}, or leave max_tokens unset to evaluate the whole split"


def _evaluation(ev: "_Table") -> tuple[PerplexitySpec, TasksSpec | None]:
    """[evaluation.perplexity] and [evaluation.tasks]."""
    ppl = _Table(ev.source, "evaluation.perplexity", ev.take("perplexity", dict, {}))
    tasks = _tasks(ev.source, ev.take("tasks", dict, None))
    ev.finish()
    d = PerplexitySpec()
    perplexity = PerplexitySpec(
        dataset=_absolute(ppl.take("dataset", str, d.dataset)),
        split=ppl.take("split", str, d.split),
        context_length=ppl.take("context_length", int, d.context_length, check=_positive),
        stride=ppl.take("stride", int, d.stride, check=_positive),
        bos=ppl.take("bos", bool, d.bos),
        max_tokens=ppl.take("max_tokens", int, d.max_tokens, check=_max_tokens),
    )
    if perplexity.stride > perplexity.context_length:
        ppl.fail("stride", f"{perplexity.stride} is larger than context_length {perplexity.context_length}")
    ppl.finish()
    return perplexity, tasks


def _layers(lt: "_Table") -> LayerFilter:
    layers = {}
    for key in ("include", "exclude"):
        globs = lt.take(key, list, ["*"] if key == "include" else [])
        for i, g in enumerate(globs):
            if not isinstance(g, str) or not g:
                lt.fail(f"{key}[{i}]", f"expected a glob on module names such as '*.mlp.*', got {g!r}")
        layers[key] = tuple(globs)
    lt.finish()
    return LayerFilter(**layers)


def _latency(lat: "_Table") -> LatencySpec | None:
    """[latency], or None when `enabled = false`."""
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
        max_repeats=lat.take("max_repeats", int, d.max_repeats, check=_positive),
        precision=float(lat.take("precision", (int, float), d.precision,
                                 check=lambda v: None if 0 < v < 1 else f"{v} must be a fraction in (0, 1), e.g. 0.03 for +-3%")),
        max_seconds=float(lat.take("max_seconds", (int, float), d.max_seconds, check=_positive)),
    )
    if latency.max_repeats < latency.repeats:
        lat.fail("max_repeats", f"{latency.max_repeats} is below repeats = {latency.repeats}; raise it or lower repeats")
    lat.finish()
    return latency if enabled else None


def _exclude(t: "_Table") -> dict[str, str]:
    """One [[exclude]] rule: the fields it matches on, the pattern normalised to its label."""
    r = {k: t.take(k, str, None) for k in ("model", "method", "pattern", "activations", "hardware", "kernel")}
    t.finish()
    r = {k: v for k, v in r.items() if v is not None}
    if not r:
        t.fail("", "an exclude rule needs at least one of model, method, pattern, activations, hardware, kernel")
    if "pattern" in r:
        try:
            r["pattern"] = parse_pattern(r["pattern"]).label
        except ValueError as err:
            t.fail("pattern", err.args[1])
    return r


def _runner(run: "_Table") -> tuple[float | None, int]:
    """[runner]: (stage_timeout_s or None, max_retries)."""
    timeout = run.take("stage_timeout_s", (int, float), None,
                       check=lambda v: None if 0 < v <= MAX_STAGE_TIMEOUT_S else
                       f"must be a number of seconds in (0, {MAX_STAGE_TIMEOUT_S:g}] (7 days), got {v!r}; "
                       "leave it out for no timeout")
    max_retries = run.take("max_retries", int, 2, check=lambda v: None if 0 <= v <= MAX_RETRIES else
                           f"{v} must be in [0, {MAX_RETRIES}]")
    run.finish()
    return (float(timeout) if timeout is not None else None), max_retries
