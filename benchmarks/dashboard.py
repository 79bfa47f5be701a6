"""How long the dashboard takes to load a large store: 100k finished jobs (target: under 2 s).

    python benchmarks/dashboard.py [--jobs 100000] [--repeats 5] [--save benchmarks/results]

Builds a store with the project's own schema (bench.store migrations) holding `--jobs` finished jobs:
4 models x 25 methods x 10 patterns x 4 hardware x 5 kernels x seeds, each with the metrics a real job
writes to the leaderboard (perplexity, measured sparsity, decode and prefill figures with their paired
p10/p90 in JSON details, five lm-eval task accuracies, prune time): 12 metric rows per job. The values
are synthetic (random, seeded): this measures loading, not pruning. Then, each repeat from a cold cache:

- query: open the file read-only, `queries.filter_options`, `queries.status_counts`, `queries.leaderboard`
  (the view's pivot of the metrics, the dense join and the per-task columns) - what a page waits for;
- page: the whole Leaderboard page run by Streamlit's AppTest from a cold cache (queries, ranking, the
  table's Arrow serialization and the Pareto figure), the server-side work of a first page view;
- page rerun: the same page run again with the store unchanged (queries served from the cache), as after
  a widget change that keeps the filters.

Reported: every repeat's wall time, and the median. The browser's own drawing time is not included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.store import Store  # noqa: E402
from dashboard import queries  # noqa: E402

TASKS = ["synthetic_add", "synthetic_agree", "synthetic_brackets", "synthetic_copy", "synthetic_recall"]


def build(path: Path, n_jobs: int, seed: int = 0) -> int:
    """A store with `n_jobs` finished jobs and their metrics; returns the number of metric rows."""
    rng = np.random.default_rng(seed)
    models = [f"model-{i}" for i in range(4)]
    methods = ["dense"] + [f"method-{i:02d}" for i in range(24)]
    patterns = [("dense", 0.0, "dense")] + [(f"{p}%", p / 100, "unstructured") for p in (30, 50, 60, 70, 80, 90)] + \
        [("1:4", 0.75, "nm"), ("2:4", 0.5, "nm"), ("4:8", 0.5, "nm")]
    hardware, kernels = ["cpu", "cpu:8", "cuda:H100", "cuda:A100"], ["torch-dense", "native", "torch-csr", "k3", "k4"]
    per_seed = len(models) * len(methods) * len(patterns) * len(hardware) * len(kernels)
    seeds = max(1, -(-n_jobs // per_seed))
    grid = pd.MultiIndex.from_product([models, methods, range(len(patterns)), hardware, kernels, range(seeds)],
                                      names=["model", "method", "p", "hardware", "kernel", "seed"]).to_frame(index=False)
    jobs = grid.iloc[:n_jobs].copy()
    jobs["pattern"] = [patterns[i][0] for i in jobs["p"]]
    jobs["target_sparsity"] = [patterns[i][1] for i in jobs["p"]]
    jobs["pattern_spec"] = [json.dumps({"kind": patterns[i][2]}) for i in jobs["p"]]
    jobs["job_key"] = [f"{i:016x}" for i in range(len(jobs))]
    n = len(jobs)

    with Store(path).write() as con:
        con.execute("INSERT INTO runs (run_id, grid_name, grid_text, command, git_commit, git_dirty, packages, hardware, "
                    "ray_address, started_at, finished_at, status, jobs_total, jobs_skipped, jobs_done, jobs_failed, "
                    "jobs_cancelled) VALUES ('bench-run', 'synthetic', '', 'benchmarks/dashboard.py', 'none', false, "
                    "'{}', '{}', 'local', now(), now(), 'done', ?, 0, ?, 0, 0)", [n, n])
        frame = jobs.assign(run_id="bench-run", status="done", attempts=1, kernel_status="accelerated")
        con.register("frame", frame)
        con.execute("INSERT INTO jobs (job_key, run_id, model, method, pattern, pattern_spec, target_sparsity, hardware, "
                    "kernel, seed, status, attempts, kernel_status, finished_at) SELECT job_key, run_id, model, method, "
                    "pattern, pattern_spec, target_sparsity, hardware, kernel, seed, status, attempts, kernel_status, "
                    "now() FROM frame")
        s = jobs["target_sparsity"].to_numpy()
        speed = 1 + 2 * s + rng.normal(0, 0.1, n)
        prefill = 1 + s + rng.normal(0, 0.1, n)
        values = {
            "perplexity": 5 * np.exp(3 * s ** 3) * rng.uniform(0.98, 1.02, n),
            "measured_sparsity": s,
            "decode_tok_s_b1": 100 * speed,
            "decode_speedup_b1": speed,
            "prefill_ms": 10 / prefill,
            "prefill_speedup": prefill,
            "prune_s": rng.uniform(1, 100, n),
            **{f"{t}/acc": np.clip(0.8 - 0.5 * s ** 2 + rng.normal(0, 0.02, n), 0, 1) for t in TASKS},
        }
        rows = []
        for name, v in values.items():
            stage = "lm_eval" if name.endswith("/acc") else "latency" if "speed" in name or "_ms" in name or "tok" in name \
                else "perplexity" if name == "perplexity" else "prune"
            details = None
            if name.endswith("speedup") or name.endswith("speedup_b1"):
                details = [json.dumps({"speedup_paired": {"p10": a - 0.05, "p90": a + 0.05, "count": 9}}) for a in v]
            rows.append(pd.DataFrame({"job_key": jobs["job_key"], "name": name, "value": v, "unit": "", "stage": stage,
                                      "higher_is_better": name != "perplexity", "details": details}))
        metrics = pd.concat(rows, ignore_index=True)
        con.register("metrics_frame", metrics)
        con.execute("INSERT INTO metrics SELECT job_key, name, value, unit, higher_is_better, NULL, stage, details "
                    "FROM metrics_frame")
    return len(metrics)


def time_query(path: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with Store(path).read() as con:
        queries.filter_options(con)
        queries.status_counts(con)
        board = queries.leaderboard(con)
    return time.perf_counter() - t, len(board)


def time_page(path: Path) -> tuple[float, float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    os.environ["SPARSEBENCH_DB"] = str(path)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=300)
    t = time.perf_counter()
    at.run()
    cold = time.perf_counter() - t
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.dataframe[0].value) > 0
    t = time.perf_counter()
    at.run()  # a rerun (a widget changed, or Reload) with the store unchanged: the queries come from the cache
    return cold, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--save", type=Path, default=None, help="folder for a JSON record of the run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.duckdb"
        t = time.perf_counter()
        n_metrics = build(path, args.jobs)
        print(f"built {args.jobs} jobs, {n_metrics} metric rows, {path.stat().st_size / 2**20:.1f} MiB "
              f"in {time.perf_counter() - t:.1f} s")
        query, page, warm = [], [], []
        for r in range(args.repeats):
            q, rows = time_query(path)
            p, w = time_page(path)
            query.append(q)
            page.append(p)
            warm.append(w)
            print(f"repeat {r}: query {q:.3f} s ({rows} rows)  page {p:.3f} s  page rerun {w:.3f} s")
        print(f"median: query {statistics.median(query):.3f} s, page {statistics.median(page):.3f} s, "
              f"page rerun {statistics.median(warm):.3f} s (target: under 2 s)")

    if args.save:
        import duckdb
        import streamlit

        args.save.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        record = {"benchmark": "dashboard load", "jobs": args.jobs, "metric_rows": n_metrics, "repeats": args.repeats,
                  "query_s": query, "page_s": page, "page_rerun_s": warm, "query_median_s": statistics.median(query),
                  "page_median_s": statistics.median(page), "page_rerun_median_s": statistics.median(warm), "cpu_count": os.cpu_count(),
                  "machine": platform.machine(), "python": platform.python_version(),
                  "duckdb": duckdb.__version__, "pandas": pd.__version__, "streamlit": streamlit.__version__,
                  "when": stamp}
        out = args.save / f"dashboard-{stamp}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(out)


if __name__ == "__main__":
    main()
