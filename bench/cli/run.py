"""`bench submit`, `bench gc` and `bench dashboard`: the commands that run a grid or serve the store."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.store import Store


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
