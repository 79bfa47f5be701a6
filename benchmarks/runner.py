"""Runner overhead and parallel speedup: 64 small stages, serial in one process vs Ray with 2 workers.

    python benchmarks/runner.py [--save benchmarks/results] [--workers 2]

The grid: the shipped tiny Llama pruned by magnitude and random at 8 unstructured sparsities with 2 seeds
(32 pruned models, no dense baseline, no latency stages), each pruned model then evaluated (perplexity on
4096 tokens): 32 prune + 32 evaluate = 64 stages, every one of them real work of about a second.

1. serial: the 64 stages in this process, one after another (bench.run.execute.run_stage, the function the
   Ray workers run), on a fresh artifact folder. Its wall time is the baseline.
2. ray: `run_grid` on a fresh store and artifact folder, on a local Ray instance with `--workers` CPUs
   (each stage reserves one), i.e. what `bench submit` does.

Reported: wall times; the sum of the stage durations measured inside the workers; the per-stage overhead
of the runner, (wall x workers - sum of stage durations) / stages, from the first stage's start to the last
stage's end and also including Ray's start-up; and the speedup, serial wall / Ray wall. Targets: overhead
<= 0.5 s per stage; >= 1.7x faster than serial with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

GRID = """
name = "runner-benchmark"
seeds = [0, 1]
dense_baseline = false
methods = ["magnitude", "random"]
patterns = ["10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%"]
[[models]]
builtin = "tiny-llama"
[evaluation.perplexity]
max_tokens = 4096
context_length = 128
stride = 128
[latency]
enabled = false
"""


def serial(jobs, root: Path) -> dict:
    from bench.run.execute import run_stage

    durations, t0 = [], time.perf_counter()
    for job in jobs:
        for kind, key in job.stage_keys().items():
            r = run_stage({"kind": kind, "key": key, "job": job.to_dict(), "artifacts": str(root)})
            assert r["status"] == "done", r.get("error")
            durations.append(r["duration_s"])
    return {"wall_s": time.perf_counter() - t0, "stage_s": durations}


def on_ray(spec, jobs, root: Path, db: Path, workers: int) -> dict:
    import ray

    from bench.model.artifacts import Artifacts
    from bench.run.runner import run_grid
    from bench.store import Store

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}})
    init_s = time.perf_counter() - t0
    try:
        summary = run_grid(spec, jobs, Store(db), artifacts=Artifacts(root), progress=False)
    finally:
        ray.shutdown()
    total_s = time.perf_counter() - t0
    assert summary.ok, summary.failed
    st = Store(db).query("SELECT duration_s, started_at, finished_at FROM stages")
    span = (st.finished_at.max() - st.started_at.min()).total_seconds()
    return {"init_s": init_s, "total_s": total_s, "run_grid_s": summary.elapsed_s, "span_s": span,
            "stage_s": st.duration_s.tolist()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--save", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench sets it
    import torch

    from bench.grid import expand, parse_grid

    torch.set_num_threads(1)  # what a `cpu` stage gets in a worker
    spec = parse_grid(GRID, source="runner-benchmark.toml")
    jobs = expand(spec)
    n = sum(len(j.stage_keys()) for j in jobs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s = serial(jobs, tmp / "serial-art")
        r = on_ray(spec, jobs, tmp / "ray-art", tmp / "bench.duckdb", args.workers)
    w = args.workers
    out = {
        "benchmark": "runner", "stages": n, "workers": w,
        "serial_wall_s": s["wall_s"], "serial_stage_sum_s": sum(s["stage_s"]),
        "ray_init_s": r["init_s"], "ray_total_s": r["total_s"], "ray_span_s": r["span_s"],
        "ray_stage_sum_s": sum(r["stage_s"]),
        "overhead_per_stage_s": (r["span_s"] * w - sum(r["stage_s"])) / n,
        "overhead_per_stage_with_init_s": (r["total_s"] * w - sum(r["stage_s"])) / n,
        "speedup_vs_serial": s["wall_s"] / r["span_s"],
        "speedup_vs_serial_with_init": s["wall_s"] / r["total_s"],
        "serial_stage_s": s["stage_s"], "ray_stage_s": r["stage_s"],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "ray": __import__("ray").__version__,
        "when": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
    }
    print(f"{n} stages, {w} workers")
    print(f"serial: {out['serial_wall_s']:.1f} s wall (stages sum {out['serial_stage_sum_s']:.1f} s)")
    print(f"ray:    {out['ray_span_s']:.1f} s first start to last end, {out['ray_total_s']:.1f} s with Ray's "
          f"start-up ({out['ray_init_s']:.1f} s); stages sum {out['ray_stage_sum_s']:.1f} s")
    print(f"overhead per stage: {out['overhead_per_stage_s']:.3f} s ({out['overhead_per_stage_with_init_s']:.3f} s "
          f"with start-up); target <= 0.5 s")
    print(f"speedup vs serial: {out['speedup_vs_serial']:.2f}x ({out['speedup_vs_serial_with_init']:.2f}x with "
          f"start-up); target >= 1.7x")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        path = args.save / f"runner-{out['when']}.json"
        path.write_text(json.dumps(out, indent=1))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
