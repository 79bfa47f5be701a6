"""`bench methods`, `bench kernels`, `bench check-method` and `bench zoo`: the registries and the tools
beside a grid."""

from __future__ import annotations

import json
import sys

from bench.errors import BenchError


def _list_plugins(reg, describe) -> None:
    """One line per registered plugin: its name, distribution, then what `describe(cls)` says of it; a
    plugin that fails to load is listed as BROKEN with its error rather than hidden."""
    for name in reg.names():
        dist, version = reg.distribution(name)
        try:
            cls = reg.get(name)
        except BenchError as err:
            print(f"{name}  [{dist} {version}]  BROKEN: {err}")
            continue
        params = {k: p.describe() for k, p in cls.params.items()}
        print(f"{name}  [{dist} {version}]  version {cls.version}  {describe(cls)}  "
              f"params: {json.dumps(params) if params else 'none'}")


def cmd_methods(args) -> int:
    from bench.registry import activation_registry, method_registry

    _list_plugins(method_registry(), lambda cls: f"patterns: {', '.join(cls.patterns)}  "
                                                 f"calibration: {'yes' if cls.needs_calibration else 'no'}")
    print("\nactivation rules (grid field `activations`; none = dense activations):")
    _list_plugins(activation_registry(), lambda cls: (f"shorthand: {cls.name}:<{cls.shorthand}>  " if cls.shorthand
                                                      else "") + "calibration: yes")
    return 0


def _csv(text: str | None, field: str, parse):
    if text is None:
        return None
    try:
        return tuple(parse(item.strip()) for item in text.split(",") if item.strip())
    except (ValueError, TypeError):
        raise BenchError(f"--{field}: cannot read {text!r}; see bench kernels --help for the format") from None


def _shape(text: str) -> tuple[int, int]:
    n, k = text.lower().split("x")
    if int(n) <= 0 or int(k) <= 0:
        raise ValueError(text)
    return int(n), int(k)


def cmd_kernels(args) -> int:
    import dataclasses

    import torch

    from bench.speed import kernelbench
    from bench.speed.packers import MAX_BATCH, NM_RULE, nm_supported
    from bench.speed.latency import read_bandwidth
    from bench.registry import kernel_registry

    if args.backends:
        reg = kernel_registry()
        for name in reg.names():
            print(json.dumps(reg.get(name).describe()))
        return 0
    config = kernelbench.Config.quick() if args.quick else kernelbench.Config()
    changes = {
        "shapes": _csv(args.shapes, "shapes", _shape), "batches": _csv(args.batch, "batch", int),
        "sparsities": _csv(args.sparsity, "sparsity", float),
        "nm": _csv(args.nm, "nm", lambda t: tuple(int(v) for v in t.split(":"))),
        "dtypes": _csv(args.dtype, "dtype", str), "repeats": args.repeats, "threads": args.threads or None,
        "activations": _csv(args.activations, "activations", float),
    }
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    for field, values in (("shapes", config.shapes), ("batch", config.batches), ("dtype", config.dtypes)):
        if not values:
            raise BenchError(f"--{field}: give at least one value; see bench kernels --help for the format")
    if args.threads < 0:
        raise BenchError("--threads: must be a positive number (0 or absent: PyTorch's thread count)")
    if any(not 1 <= b <= MAX_BATCH for b in config.batches):
        raise BenchError(f"--batch: the native kernels take batches of 1 to {MAX_BATCH} rows; larger batches run dense")
    if any(not 0 < s < 1 for s in config.sparsities):
        raise BenchError("--sparsity: each value must be in (0, 1), e.g. 0.7")
    if any(not 0 < a < 1 for a in config.activations):
        raise BenchError("--activations: each value must be in (0, 1), e.g. 0.5")
    if any(len(p) != 2 or not nm_supported(*p) for p in config.nm):
        raise BenchError(f"--nm: {NM_RULE}")
    if any(d not in ("float32", "bfloat16") for d in config.dtypes):
        raise BenchError("--dtype: the native kernels take float32 and bfloat16")
    if config.repeats < 1:
        raise BenchError("--repeats: must be at least 1")
    threads = config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    bandwidth = read_bandwidth(threads)
    meta = kernelbench.machine(threads, bandwidth)
    log = (lambda m: print(m, file=sys.stderr)) if not args.json else None
    if log:
        log(f"isa {meta['isa']}, {threads} threads, read bandwidth {bandwidth.median / 1e9:.1f} GB/s "
            f"[{bandwidth.p10 / 1e9:.1f}-{bandwidth.p90 / 1e9:.1f}]")
    rows = []
    for row in kernelbench.run(config, bandwidth.median, log):
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(kernelbench.format_table(rows))
    if args.save:
        path = kernelbench.save(args.save, meta, config, rows)
        print(f"saved {path} and {path.with_suffix('.md').name}", file=sys.stderr)
    return 0


def cmd_check_method(args) -> int:
    from bench.prune.conformance import check_method

    checks = check_method(args.name, args.arch)
    failed = [c for c in checks if not c.ok]
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'}  {c.architecture:<9} {c.pattern:<16} {c.check:<13} {c.detail}")
    archs = len({c.architecture for c in checks})
    print(f"{args.name}: {len(checks) - len(failed)} of {len(checks)} checks passed on {archs} architectures")
    return 1 if failed else 0


def cmd_zoo(args) -> int:
    from bench.model import zoo

    card = zoo.build(args.name, args.out, steps=args.steps, seed=args.seed)
    print(json.dumps(card, indent=2))
    return 0
