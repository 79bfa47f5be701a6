"""Start-up of a 100k-job grid: how long until `bench submit` has checked, recorded and dispatched.

    python benchmarks/startup.py [--save benchmarks/results] [--repeats 3]

The grid (written to a temporary folder): the shipped tiny Llama, magnitude and random at 50 unstructured
sparsities (1%-50%), 2 kernel backends (torch-dense, native), 500 seeds: 100,000 pruned jobs plus 1,000
dense baselines = 101,000 jobs. The two backends' jobs share their prune and evaluate stages, so there are
50,500 prune + 50,500 evaluate + 101,000 latency = 202,000 stages.

Each repeat, on a fresh store:
1. `bench submit GRID --dry-run`: parse, validate, expand, read the store, print every job. Wall time of
   the whole process.
2. `bench submit GRID`: wall time from the process's start to its line "... dispatching" (written after
   the jobs and stages are recorded in the store, right before the first stage is handed to Ray), then
   SIGTERM and the time until it has exited 143 having recorded every job as cancelled.
Then, in this process, the one part that was slow before (issue 13): recording the queued jobs, the old way
(DuckDB executemany, a statement per row) against the new (one INSERT from a DataFrame), on 5,000 jobs each
in fresh stores, side by side; and the new way on all 101,000.

Target: the first stage dispatched within 60 s of `bench submit` starting on 2 cores (it took about 6
minutes of inserts before).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

TARGETS = ", ".join(f'"{i}%"' for i in range(1, 51))
GRID = f"""
name = "startup-100k"
methods = ["magnitude", "random"]
patterns = [{TARGETS}]
kernels = ["torch-dense", "native"]
seeds = [{", ".join(str(i) for i in range(500))}]
models = ["builtin:tiny-llama"]
"""


def bench(*args) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *map(str, args)]


def dry_run(grid: Path, db: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(bench("submit", grid, "--db", db, "--dry-run"), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("101000 jobs"), proc.stdout[-300:]
    return wall


def to_first_dispatch(grid: Path, db: Path, log: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(bench("submit", grid, "--db", db, "--artifacts", db.parent / "art"),
                                stdout=subprocess.DEVNULL, stderr=err)
    while "dispatching" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    dispatched = time.perf_counter() - t0
    proc.send_signal(signal.SIGTERM)
    t1 = time.perf_counter()
    code = proc.wait(600)
    cancelled = time.perf_counter() - t1
    assert code == 128 + signal.SIGTERM, log.read_text()[-500:]
    from bench.store import Store

    counts = Store(db).query("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert counts.n.sum() == 101000, counts
    return dispatched, cancelled


def inserts(jobs, folder: Path, n_old: int) -> dict:
    """Recording queued jobs: executemany (the code before) vs one INSERT from a DataFrame (Store.begin_run)."""
    from bench.store import Store, _j

    run = {"run_id": "r", "grid_name": "g", "grid_file": "g.toml", "grid_text": "", "command": "",
           "git": {"commit": None, "dirty": None}, "packages": {}, "hardware": {}, "ray_address": "local"}
    old_db = Store(folder / "old.duckdb")
    with old_db.write():
        pass
    t0 = time.perf_counter()
    with old_db.write() as con:
        con.executemany(
            "INSERT INTO jobs (job_key, run_id, model, model_source, model_location, model_fingerprint, method, "
            "method_version, method_params, pattern, pattern_spec, target_sparsity, hardware, kernel, "
            "kernel_version, seed, spec, status, attempts, queued_at, prune_key, eval_key, latency_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, now(), ?, ?, ?)",
            [[j.key, "r", j.model.name, j.model.source, j.model.location, j.model.fingerprint, j.method_label,
              j.method_version, _j(j.method_params), j.pattern.label, _j(j.to_dict()["pattern"]), j.pattern.sparsity, j.hardware.label,
              j.kernel, j.kernel_version, j.seed, _j(j.to_dict()), j.prune_key, j.eval_key, j.latency_key]
             for j in jobs[:n_old]])
    old_s = time.perf_counter() - t0
    new = {}
    for n in (n_old, len(jobs)):
        store = Store(folder / f"new-{n}.duckdb")
        t0 = time.perf_counter()
        store.begin_run(run, jobs[:n], 0)
        new[n] = time.perf_counter() - t0
    return {"old_executemany_s": old_s, "old_n": n_old, "new_s": new[n_old], "new_all_s": new[len(jobs)],
            "all_n": len(jobs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--save", type=Path, default=None)
    args = p.parse_args()
    from bench.grid import expand, parse_grid

    load = os.getloadavg()
    dry, first, cancel = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        grid = tmp / "startup-100k.toml"
        grid.write_text(GRID)
        for r in range(args.repeats):
            folder = tmp / f"run{r}"
            folder.mkdir()
            dry.append(dry_run(grid, folder / "bench.duckdb"))
            d, c = to_first_dispatch(grid, folder / "bench.duckdb", folder / "submit.log")
            first.append(d)
            cancel.append(c)
            print(f"repeat {r}: dry run {dry[-1]:.1f} s; first stage dispatched after {d:.1f} s; "
                  f"SIGTERM to exit {c:.1f} s", flush=True)
        jobs = expand(parse_grid(GRID, source="startup-100k.toml"))
        ins = inserts(jobs, tmp, 5000)
    print(f"record queued jobs: executemany {ins['old_executemany_s']:.2f} s for {ins['old_n']} "
          f"vs one INSERT {ins['new_s']:.3f} s ({ins['old_executemany_s'] / ins['new_s']:.0f}x); "
          f"{ins['new_all_s']:.2f} s for all {ins['all_n']}")
    out = {
        "benchmark": "startup", "jobs": 101000, "stages": 202000, "repeats": args.repeats, "load_at_start": load,
        "dry_run_s": dry, "first_dispatch_s": first, "sigterm_to_exit_s": cancel,
        "dry_run_median_s": statistics.median(dry), "first_dispatch_median_s": statistics.median(first),
        **ins, "load_at_end": os.getloadavg(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "duckdb": __import__("duckdb").__version__,
        "ray": __import__("ray").__version__, "when": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
    }
    print(f"median: dry run {out['dry_run_median_s']:.1f} s; first stage dispatched {out['first_dispatch_median_s']:.1f} s "
          f"(target <= 60 s)")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        path = args.save / f"startup-{out['when']}.json"
        path.write_text(json.dumps(out, indent=1))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
