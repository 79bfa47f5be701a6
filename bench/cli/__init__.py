"""The `bench` command.

    bench submit GRID.toml [--dry-run] [--force] [--db PATH] [--address HOST:PORT]
    bench ls [--status S] [--run RUN_ID]         jobs in the store
    bench show JOB                               one job (key or unique key prefix): provenance, metrics, error
    bench leaderboard [--wide] [--format table|csv|json]  the table, one per perplexity protocol
    bench export --format parquet|csv DIR        every table and the leaderboard, one file each
    bench methods                                registered pruning methods
    bench check-method NAME                      the conformance suite for one method
    bench zoo train NAME [--out DIR]             train a small model of the project's own zoo
    bench dashboard [--port N] [--address A]     the Streamlit leaderboard on the store (read-only)

Exit codes: 0 success; 1 a job failed; 2 bad input (one line on stderr, nothing written); 130 (SIGINT) or
143 (SIGTERM) interrupted, with one line saying what was kept.

    __init__.py   the parser, main (errors and signals to one line and an exit code), the command table
    run.py        submit, gc, dashboard: the commands that run or serve
    results.py    ls, show, leaderboard, export: the commands that read the store
    tools.py      methods, kernels, check-method, zoo
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.cli.results import cmd_export, cmd_leaderboard, cmd_ls, cmd_show
from bench.cli.run import cmd_dashboard, cmd_gc, cmd_submit
from bench.cli.tools import cmd_check_method, cmd_kernels, cmd_methods, cmd_zoo
from bench.errors import BenchError, Interrupted
from bench.store import DEFAULT_DB


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="SparseBench: accuracy and measured speed of pruned LLMs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_commands(sub)
    _result_commands(sub)
    _tool_commands(sub)
    return p


def _db(sp) -> None:
    sp.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")


def _run_commands(sub) -> None:
    """submit and gc: the commands that write the store."""
    db = _db
    s = sub.add_parser("submit", help="run a grid file")
    s.add_argument("grid", type=Path)
    db(s)
    s.add_argument("--dry-run", action="store_true", help="print the jobs and what would run; run nothing")
    s.add_argument("--force", action="store_true", help="re-run jobs that are already done")
    s.add_argument("--address", help="join an existing Ray cluster (host:port, auto, ray://...) instead of a local one "
                        "(default: $RAY_ADDRESS when set, as `ray job submit` sets it)")
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


def _result_commands(sub) -> None:
    """ls, show, leaderboard, export, dashboard: the commands that read the store."""
    db = _db
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
    s.add_argument("--wide", action="store_true",
                   help="the table with every column (default: identity, accuracy, decode speed with its verdict)")

    s = sub.add_parser("export", help="export the store to Parquet or CSV files")
    db(s)
    s.add_argument("--format", choices=("parquet", "csv"), required=True)
    s.add_argument("path", type=Path, help="a folder; one file per table is written into it")

    s = sub.add_parser("dashboard", help="browse the store in the Streamlit dashboard (read-only)")
    db(s)
    s.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    s.add_argument("--address", default="localhost",
                   help="interface to listen on (default: localhost; 0.0.0.0 for every interface)")


def _tool_commands(sub) -> None:
    """methods, kernels, check-method, zoo: the tools around the benchmark."""
    sub.add_parser("methods", help="list registered pruning methods")
    s = sub.add_parser("kernels", help="benchmark the native sparse kernels against dense and PyTorch CSR")
    s.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    s.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    s.add_argument("--shapes", default=None, help="comma-separated NxK, e.g. 4096x4096,11008x4096")
    s.add_argument("--batch", default=None, help="comma-separated batch sizes, each at most the native kernels' batch limit, e.g. 1,8,32")
    s.add_argument("--sparsity", default=None, help="comma-separated unstructured sparsities, e.g. 0.5,0.7,0.9")
    s.add_argument("--nm", default=None, help="comma-separated N:M patterns, e.g. 2:4,4:8 ('' for none)")
    s.add_argument("--activations", default=None,
                   help="comma-separated activation sparsities run on the input-major formats, e.g. 0.4,0.5 ('' for none)")
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


COMMANDS = {"dashboard": cmd_dashboard, "submit": cmd_submit, "ls": cmd_ls, "show": cmd_show, "leaderboard": cmd_leaderboard,
            "export": cmd_export, "methods": cmd_methods, "kernels": cmd_kernels, "check-method": cmd_check_method, "zoo": cmd_zoo,
            "gc": cmd_gc}
