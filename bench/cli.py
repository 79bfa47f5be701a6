"""The `bench` command.

    bench submit GRID.toml [--dry-run] [--force] [--db PATH] [--address HOST:PORT]
    bench ls [--status S] [--run RUN_ID]         jobs in the store
    bench show JOB                               one job (key or unique key prefix): provenance, metrics, error
    bench leaderboard [--format table|csv|json]  the ranked table
    bench export --format parquet|csv DIR        every table and the leaderboard, one file each
    bench methods                                registered pruning methods
    bench check-method NAME                      the conformance suite for one method
    bench zoo train NAME [--out DIR]             train a small model of the project's own zoo
    bench dashboard [--port N] [--address A]     the Streamlit leaderboard on the store (read-only)

Exit codes: 0 success; 1 a job failed; 2 bad input (one line on stderr, nothing written); 130 (SIGINT) or
143 (SIGTERM) interrupted, with one line saying what was kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.errors import Interrupted
from bench.store import DEFAULT_DB, Store

LEADERBOARD_COLUMNS = ["model", "method", "pattern", "hardware", "kernel", "seed", "measured_sparsity", "perplexity",
                       "perplexity_change_vs_dense", "decode_tok_s_b1", "decode_speedup_b1", "decode_speedup_b1_p10",
                       "decode_speedup_b1_p90", "prefill_ms", "prefill_speedup", "prefill_speedup_p10",
                       "prefill_speedup_p90", "task_acc_mean", "task_acc_change_vs_dense", "kernel_status", "job_key"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="SparseBench: accuracy and measured speed of pruned LLMs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db(sp):
        sp.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")

    s = sub.add_parser("submit", help="run a grid file")
    s.add_argument("grid", type=Path)
    db(s)
    s.add_argument("--dry-run", action="store_true", help="print the jobs and what would run; run nothing")
    s.add_argument("--force", action="store_true", help="re-run jobs that are already done")
    s.add_argument("--address", help="join an existing Ray cluster (host:port, auto, ray://...) instead of a local one")
    s.add_argument("--max-in-flight", type=int, default=None, help="tasks outstanding at once (default: 2 x cluster CPUs)")
    s.add_argument("--no-progress", action="store_true", help="no progress output")
    s.add_argument("--artifacts", type=Path, default=None,
                   help="folder of pruned-model artifacts, shared by every node on a cluster "
                        "(default: $SPARSEBENCH_ARTIFACTS, else 'artifacts' beside the store)")
    s.add_argument("--wait", action="store_true",
                   help="if another bench submit is writing the same store, wait for it instead of refusing")

    s = sub.add_parser("gc", help="remove pruned-model artifacts that no stored stage refers to")
    db(s)
    s.add_argument("--artifacts", type=Path, default=None, help="artifact folder (default: as for submit)")
    s.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    s = sub.add_parser("ls", help="list jobs in the store")
    db(s)
    s.add_argument("--status", help="only jobs with this status (queued, done, failed, cancelled)")
    s.add_argument("--run", help="only jobs last run by this run id")

    s = sub.add_parser("show", help="one job in full")
    s.add_argument("job", help="job key or a unique prefix of it")
    db(s)

    s = sub.add_parser("leaderboard", help="print the leaderboard")
    db(s)
    s.add_argument("--format", choices=("table", "csv", "json"), default="table")

    s = sub.add_parser("export", help="export the store to Parquet or CSV files")
    db(s)
    s.add_argument("--format", choices=("parquet", "csv"), required=True)
    s.add_argument("path", type=Path, help="a folder; one file per table is written into it")

    sub.add_parser("methods", help="list registered pruning methods")

    s = sub.add_parser("dashboard", help="browse the store in the Streamlit dashboard (read-only)")
    db(s)
    s.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    s.add_argument("--address", default="localhost",
                   help="interface to listen on (default: localhost; 0.0.0.0 for every interface)")

    s = sub.add_parser("kernels", help="benchmark the native sparse kernels against dense and PyTorch CSR")
    s.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    s.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    s.add_argument("--shapes", default=None, help="comma-separated NxK, e.g. 4096x4096,11008x4096")
    s.add_argument("--batch", default=None, help="comma-separated batch sizes (1-32), e.g. 1,8,32")
    s.add_argument("--sparsity", default=None, help="comma-separated unstructured sparsities, e.g. 0.5,0.7,0.9")
    s.add_argument("--nm", default=None, help="comma-separated N:M patterns, e.g. 2:4,4:8 ('' for none)")
    s.add_argument("--dtype", default=None, help="comma-separated: float32,bfloat16")
    s.add_argument("--threads", type=int, default=0, help="threads for every kernel (default: torch's)")
    s.add_argument("--repeats", type=int, default=None)
    s.add_argument("--save", type=Path, default=None, help="write JSON and a Markdown table into this folder")
    s.add_argument("--backends", action="store_true", help="list registered kernel backends and exit")

    s = sub.add_parser("check-method", help="run the conformance suite on a registered method")
    s.add_argument("name")
    s.add_argument("--arch", action="append", help="only this architecture (repeatable); default: all")

    s = sub.add_parser("zoo", help="the project's small models")
    zs = s.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    b = zs.add_parser("train", help="train a small model (default: into the package, as builtin:NAME)")
    b.add_argument("name")
    b.add_argument("--out", type=Path, default=None, help="write the model here instead of into the package")
    b.add_argument("--steps", type=int, default=None, help="training steps (default: the model's recipe)")
    b.add_argument("--seed", type=int, default=0)
    return p


# PyTorch's OpenMP threads spin for a while after each parallel operator (libgomp's default), holding a
# core that the native kernels' own threads then wait for: on 2 cores that doubled the spread of their
# timings. Passive waiting is read when libgomp loads, i.e. before torch is imported; the runner passes
# the same setting to Ray workers, and the latency stage records it with every figure. An explicit
# OMP_WAIT_POLICY in the environment wins.
OMP_WAIT_POLICY = "PASSIVE"


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    args = _parser().parse_args(argv)
    previous = _terminate_as_exception()
    try:
        return COMMANDS[args.command](args)
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench: interrupted; finished jobs are stored, submit again to resume", file=sys.stderr)
        return 130
    except Interrupted as err:
        if err.started:
            print(f"\nbench: {err} received: outstanding stages cancelled and recorded; finished work is stored, "
                  "submit again to resume", file=sys.stderr)
        else:
            print(f"\nbench: {err} received before any stage was dispatched: nothing was run", file=sys.stderr)
        return 128 + err.signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_exception():
    """SIGTERM raises Interrupted, as SIGINT raises KeyboardInterrupt, so that it is reported in one line and
    exits 143 from any point; `bench submit` catches both itself while it writes (bench.run.runner)."""
    import threading

    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise Interrupted(signum, started=False)

    return signal.signal(signal.SIGTERM, terminate)


def cmd_submit(args) -> int:
    from bench.grid import expand, incompatible, load_grid, why_no_jobs
    from bench.run.runner import run_grid

    if args.max_in_flight is not None and args.max_in_flight < 1:
        raise BenchError(f"--max-in-flight: {args.max_in_flight} must be at least 1")
    spec = load_grid(args.grid)
    jobs = expand(spec)
    if not jobs:
        raise BenchError(f"{spec.source}: the grid expands to no jobs: {why_no_jobs(spec)}")
    store = Store(args.db)
    skipped_pairs = incompatible(spec)
    if args.dry_run:
        statuses = {} if args.force else store.statuses([j.key for j in jobs])
        for j in jobs:
            state = "done, skip" if statuses.get(j.key) == "done" else "run"
            print(f"{j.key}  {j.describe()}  [{state}]")
        todo = sum(statuses.get(j.key) != "done" for j in jobs)
        print(f"{len(jobs)} jobs, {todo} to run, {len(jobs) - todo} already done")
        for pair in skipped_pairs:
            print(f"not run: {pair} (the method does not support that pattern)")
        return 0
    for pair in skipped_pairs:
        print(f"bench: not run: {pair} (the method does not support that pattern)", file=sys.stderr)
    command = "bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_grid(spec, jobs, store, artifacts=_artifacts(args), address=args.address, force=args.force,
                       max_in_flight=args.max_in_flight, progress=not args.no_progress, command=command,
                       wait=args.wait)
    done = summary.counts.get("done", 0)
    print(f"run {summary.run_id}: {summary.total} jobs · {summary.skipped} already done · {done} done · "
          f"{len(summary.failed)} failed · {summary.elapsed_s:.1f} s · store {args.db}")
    if summary.stages:
        st = summary.stages
        print(f"stages: {st['ran']} ran · {st['reused']} reused from the store · {st['failed']} failed"
              + (f" · {st['cancelled']} cancelled" if st.get("cancelled") else ""))
    for job, error in summary.failed:
        print(f"  failed: {job.describe()} [{job.key}]: {error}")
    for warning in summary.warnings:
        print(f"  WARNING: {warning}")
    return 0 if summary.ok else 1


def _artifacts(args):
    from bench.model.artifacts import Artifacts, default_root

    root = args.artifacts if args.artifacts is not None else default_root(args.db)
    if root.exists() and not root.is_dir():
        raise BenchError(f"--artifacts: {root} is a file; give a folder (it is made if missing)")
    return Artifacts(root)


def cmd_gc(args) -> int:
    artifacts = _artifacts(args)
    store = Store(args.db)
    if not store.path.is_file():  # without its store, gc would take every artifact for unreferenced
        raise BenchError(f"--db: no results store at {store.path}; gc keeps the artifacts a store refers to, "
                         "so give it the store they were made for")
    with store.submit_lock(command="bench gc"):  # never while a submit may be making artifacts
        keep = store.referenced_artifacts()
        removed = artifacts.gc(keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name, size in removed:
        print(f"{verb} {artifacts.root / name} ({size / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} artifacts, {sum(s for _, s in removed) / 1e6:.1f} MB; "
          f"kept {len(set(artifacts.keys()) & keep)} referenced by {store.path}")
    foreign = artifacts.foreign()
    if foreign:
        print(f"left alone: {len(foreign)} entries of {artifacts.root} that are not artifacts "
              f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})")
    return 0


def cmd_ls(args) -> int:
    store = Store(args.db)
    where, params = [], []
    if args.status:
        where.append("status = ?")
        params.append(args.status)
    if args.run:
        where.append("run_id = ?")
        params.append(args.run)
    sql = ("SELECT job_key, status, model, method, pattern, hardware, kernel, seed, round(duration_s, 2) AS seconds, "
           "run_id, error FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") +
           " ORDER BY model, method, target_sparsity, pattern, hardware, kernel, seed")
    df = store.query(sql, params)
    if df.empty:
        print("no jobs")
        return 0
    df["error"] = df["error"].fillna("").str.slice(0, 80)
    print(df.to_string(index=False))
    return 0


def cmd_show(args) -> int:
    store = Store(args.db)
    jobs = store.query("SELECT * FROM jobs WHERE starts_with(job_key, ?)", [args.job])  # no LIKE: '%' is literal
    if len(jobs) != 1:
        raise BenchError(f"job '{args.job}': {'no job has that key' if jobs.empty else f'{len(jobs)} jobs share that prefix; give more characters'}")
    job = jobs.iloc[0]
    run = store.query("SELECT * FROM runs WHERE run_id = ?", [job["run_id"]])
    metrics = store.query("SELECT name, value, unit, stderr, stage FROM metrics WHERE job_key = ? ORDER BY stage, name", [job["job_key"]])
    layers = store.query("SELECT layer, out_features, in_features, measured_sparsity FROM layers WHERE job_key = ? ORDER BY block, layer", [job["job_key"]])
    for col in ("job_key", "status", "model", "model_location", "model_fingerprint", "method", "method_version",
                "method_params", "pattern", "hardware", "kernel", "kernel_version", "seed", "run_id", "started_at",
                "finished_at", "duration_s", "kernel_status", "prune_key", "eval_key", "latency_key", "artifact",
                "error"):
        if col in job and job[col] is not None and str(job[col]) not in ("nan", "NaT", "None"):
            print(f"{col:>18}: {job[col]}")
    if not run.empty:
        r = run.iloc[0]
        print(f"{'git_commit':>18}: {r['git_commit']}{' (dirty)' if r['git_dirty'] else ''}")
        print(f"{'packages':>18}: {r['packages']}")
        print(f"{'driver hardware':>18}: {r['hardware']}")
    if job["worker"]:
        print(f"{'worker hardware':>18}: {job['worker']}")
    if job["kernel_provenance"]:
        print(f"{'kernel':>18}: {job['kernel_provenance']}")
    if not metrics.empty:
        print("\nmetrics:")
        print(metrics.to_string(index=False))
    if not layers.empty:
        print(f"\nlayers ({len(layers)}):")
        print(layers.to_string(index=False))
    if job["traceback"]:
        print("\ntraceback:\n" + job["traceback"])
    return 0


def cmd_leaderboard(args) -> int:
    df = Store(args.db).leaderboard()
    cols = [c for c in LEADERBOARD_COLUMNS if c in df.columns]
    cols[-1:-1] = sorted(c for c in df.columns if c.endswith("/acc"))  # one column per task, before job_key
    df = df[cols]
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        for row in df.to_dict(orient="records"):
            print(json.dumps(row, default=str))
    elif df.empty:
        print("the leaderboard is empty: no job has finished yet")
    else:
        # Display only: the store and the csv/json formats keep every digit. A speedup is shown with the
        # p10-p90 range of its paired per-round ratios, so a ratio inside the noise reads as such.
        df = df.drop(columns=["job_key"]).copy()
        for col in ("decode_speedup_b1", "prefill_speedup"):
            if col in df:
                df[col] = [f"{v:.3g} [{lo:.3g}-{hi:.3g}]" if v == v else "" for v, lo, hi in
                           zip(df[col], df.pop(col + "_p10"), df.pop(col + "_p90"))]
        print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 0


def cmd_export(args) -> int:
    store = Store(args.db)
    if args.path.exists() and not args.path.is_dir():
        raise BenchError(f"export: {args.path} is a file; give a folder (it is made if missing)")
    with store.read():  # a missing or foreign store is refused before the folder is made
        pass
    try:
        args.path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"export: cannot make the folder {args.path}: {err.strerror or err}") from None
    ext = args.format
    opts = "(FORMAT parquet)" if ext == "parquet" else "(FORMAT csv, HEADER true)"
    import duckdb

    targets = [(table, args.path / f"{table}.{ext}") for table in ("runs", "jobs", "metrics", "layers", "leaderboard")]
    for _, target in targets:
        if target.is_dir():
            raise BenchError(f"export: {target} is a folder; move it away or export into another folder")
    staged = []
    try:  # every file is written beside its target and renamed into place once all are written
        with store.read() as con:
            for table, target in targets:
                tmp = target.with_name(f".{target.name}.partial")
                staged.append((tmp, target))
                quoted = tmp.as_posix().replace("'", "''")
                con.execute(f"COPY (SELECT * FROM {table}) TO '{quoted}' {opts}")
        for tmp, target in staged:
            os.replace(tmp, target)
            print(target)
    except (duckdb.Error, OSError) as err:
        raise BenchError(f"export: cannot write into {args.path}: {' '.join(str(err).split())}") from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return 0


def dashboard_command(db: Path, port: int, address: str) -> tuple[list[str], dict[str, str]]:
    """The Streamlit command line and environment that serve dashboard/app.py on `db`."""
    import dashboard

    if not 0 < port < 65536:
        raise BenchError(f"--port: {port} is not a port number; give one in 1-65535, e.g. --port 8501")
    if db.exists() and not db.is_file():
        raise BenchError(f"--db: {db} is not a file; pass the DuckDB file that `bench submit --db` wrote")
    app = Path(dashboard.__file__).parent / "app.py"
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
            "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--global.developmentMode", "false",
            "--client.toolbarMode", "viewer"]
    return argv, {**os.environ, "SPARSEBENCH_DB": str(db.resolve())}


def cmd_dashboard(args) -> int:
    argv, env = dashboard_command(args.db, args.port, args.address)
    if not args.db.exists():
        print(f"bench: note: no store at {args.db} yet; the dashboard shows first steps until `bench submit` "
              "writes it", file=sys.stderr)
    print(f"SparseBench dashboard on http://{args.address}:{args.port} (store: {args.db}, read-only)", flush=True)
    os.execve(argv[0], argv, env)  # Streamlit takes over this process: Ctrl-C and signals reach it directly
    return 0


def cmd_methods(args) -> int:
    from bench.registry import method_registry

    reg = method_registry()
    for name in reg.names():
        dist, version = reg.distribution(name)
        try:
            cls = reg.get(name)
        except BenchError as err:
            print(f"{name}  [{dist} {version}]  BROKEN: {err}")
            continue
        params = {k: p.describe() for k, p in cls.params.items()}
        print(f"{name}  [{dist} {version}]  version {cls.version}  patterns: {', '.join(cls.patterns)}  "
              f"calibration: {'yes' if cls.needs_calibration else 'no'}  params: {json.dumps(params) if params else 'none'}")
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
    }
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    for field, values in (("shapes", config.shapes), ("batch", config.batches), ("dtype", config.dtypes)):
        if not values:
            raise BenchError(f"--{field}: give at least one value; see bench kernels --help for the format")
    if args.threads < 0:
        raise BenchError("--threads: must be a positive number (0 or absent: PyTorch's thread count)")
    if any(not 1 <= b <= 32 for b in config.batches):
        raise BenchError("--batch: the native kernels take batches of 1 to 32 rows; larger batches run dense")
    if any(not 0 < s < 1 for s in config.sparsities):
        raise BenchError("--sparsity: each value must be in (0, 1), e.g. 0.7")
    if any(len(p) != 2 or 2 * p[0] != p[1] or p[1] not in (2, 4, 8) for p in config.nm):
        raise BenchError("--nm: the nm kernel covers 1:2, 2:4 and 4:8 (half of each group kept)")
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


COMMANDS = {"dashboard": cmd_dashboard, "submit": cmd_submit, "ls": cmd_ls, "show": cmd_show, "leaderboard": cmd_leaderboard,
            "export": cmd_export, "methods": cmd_methods, "kernels": cmd_kernels, "check-method": cmd_check_method, "zoo": cmd_zoo,
            "gc": cmd_gc}

if __name__ == "__main__":
    sys.exit(main())
