"""SQL to DataFrames for the dashboard. Every function takes an open read-only DuckDB connection and plain
parameters, runs parameterized SQL (values are bound, never pasted into the text) and returns a DataFrame.

    from bench.store import Store
    with Store("results/bench.duckdb").read() as con:
        board = leaderboard(con, Filters(methods=("wanda", "sparsegpt")))

Nothing here imports Streamlit. The app caches these calls on `store_token(path)`, which changes whenever
the store file or its write-ahead log does, so a refresh after `bench submit` writes shows the new rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from bench.store import schema_version as store_schema_version
from bench.store import with_task_columns

# The columns that say what a leaderboard row is; two rows with equal values here are the same experiment.
IDENTITY = ["model", "method", "pattern", "activations", "target_sparsity", "hardware", "kernel", "seed"]

# What the Compare page puts side by side (each with whether higher is better).
COMPARED = {"perplexity": False, "kl_vs_dense": False, "task_acc_mean": True, "task_flips_mean": False, "measured_sparsity": None, "decode_speedup_b1": True,
            "prefill_speedup": True, "decode_tok_s_b1": True, "prefill_ms": False}


@dataclass(frozen=True)
class Filters:
    """The sidebar's selection; an empty tuple means no restriction on that column."""
    models: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    sparsity: tuple[float, float] | None = None  # inclusive range of target sparsity
    activations: tuple[str, ...] = ()  # activation rules ("none": dense activations)

    def where(self, alias: str = "") -> tuple[str, list[Any]]:
        """A SQL condition over the columns of `jobs` (or the leaderboard view) and its parameters."""
        clauses, params = [], []
        for column, values in (("model", self.models), ("method", self.methods), ("pattern", self.patterns),
                               ("hardware", self.hardware), ("kernel", self.kernels),
                               ("activations", self.activations)):
            if values:
                clauses.append(f"{alias}{column} IN (SELECT unnest(?))")
                params.append(list(values))
        if self.sparsity is not None:
            clauses.append(f"{alias}target_sparsity BETWEEN ? AND ?")
            params += [float(self.sparsity[0]) - 1e-12, float(self.sparsity[1]) + 1e-12]
        return " AND ".join(clauses) or "TRUE", params


def store_token(path: str | Path) -> tuple:
    """Changes whenever the store does: size and modification time of the file and of its write-ahead log."""
    token = []
    for p in (Path(path), Path(f"{path}.wal")):
        try:
            st = os.stat(p)
            token.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            token.append(None)
    return tuple(token)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """0 for a file that holds no SparseBench tables yet."""
    return store_schema_version(con)


def status_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Jobs per status, and the number of runs still marked running."""
    return con.execute("""
        SELECT status, count(*) AS jobs FROM jobs GROUP BY status
        UNION ALL SELECT 'runs', count(*) FROM runs
        UNION ALL SELECT 'runs running', count(*) FROM runs WHERE status = 'running'
        ORDER BY status""").df()


def filter_options(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every (field, value) the filters can offer, from finished jobs; `number` orders the patterns."""
    return con.execute("""
        WITH done AS (SELECT DISTINCT model, method, pattern, target_sparsity, hardware, kernel, activations
                      FROM jobs WHERE status = 'done')
        SELECT DISTINCT 'models' AS field, model AS value, NULL::DOUBLE AS number FROM done
        UNION ALL SELECT DISTINCT 'methods', method, NULL FROM done
        UNION ALL SELECT 'patterns', pattern, max(target_sparsity) FROM done GROUP BY pattern
        UNION ALL SELECT DISTINCT 'hardware', hardware, NULL FROM done
        UNION ALL SELECT DISTINCT 'kernels', kernel, NULL FROM done
        UNION ALL SELECT DISTINCT 'activations', activations, NULL FROM done
        ORDER BY field, number, value""").df()


def leaderboard(con: duckdb.DuckDBPyConnection, filters: Filters = Filters()) -> pd.DataFrame:
    """The leaderboard view under `filters`, with the pattern kind, the run's commit and grid, the job's prune
    and evaluation keys (equal keys: the same pruned model under the same evaluation, whatever the kernel), and
    one column per lm-eval task accuracy. Speedups are against the dense model timed in the same process."""
    where, params = filters.where("l.")
    board = con.execute(f"""
        SELECT l.*, json_extract_string(j.pattern_spec, '$.kind') AS pattern_kind, r.grid_name, r.git_commit,
               r.git_dirty, j.prune_key, j.eval_key
        FROM leaderboard l JOIN jobs j USING (job_key) LEFT JOIN runs r ON r.run_id = l.run_id
        WHERE {where}
        ORDER BY l.model, l.hardware, l.kernel, l.method = 'dense' DESC, l.target_sparsity, l.pattern, l.method""",
                        params).df()
    return with_task_columns(con, board)


def kernel_shapes(con: duckdb.DuckDBPyConnection, filters: Filters = Filters()) -> pd.DataFrame:
    """One row per (job, layer shape, batch) from the latency stage's per-shape measurement: the paired
    speedup of the backend's layer over the dense layer, its 95% interval and verdict, the format, bytes read and the ideal
    speedup (dense bytes / bytes read: the bound for a memory-bound kernel); under an activation rule also the
    fraction of inputs the kernel skipped on the captured inputs (NULL otherwise)."""
    where, params = filters.where("j.")
    return con.execute(f"""
        WITH rows AS (
            SELECT j.job_key, j.run_id, j.model, j.method, j.pattern, j.activations, j.target_sparsity, j.hardware,
                   j.kernel, j.seed, j.kernel_status, m.value AS speedup, m.details AS d
            FROM metrics m JOIN jobs j USING (job_key)
            WHERE j.status = 'done' AND starts_with(m.name, 'layer_speedup_b') AND {where})
        SELECT * EXCLUDE (d),
               json_extract_string(d, '$.shape') AS shape,
               CAST(json_extract(d, '$.batch') AS INTEGER) AS batch,
               json_extract_string(d, '$.format') AS format,
               CAST(json_extract(d, '$.speedup_paired.lo') AS DOUBLE) AS speedup_lo,
               CAST(json_extract(d, '$.speedup_paired.hi') AS DOUBLE) AS speedup_hi,
               json_extract_string(d, '$.verdict') AS verdict,
               CAST(json_extract(d, '$.speedup_paired.count') AS INTEGER) AS rounds,
               CAST(json_extract(d, '$.ideal_speedup') AS DOUBLE) AS ideal_speedup,
               CAST(json_extract(d, '$.bandwidth_fraction') AS DOUBLE) AS bandwidth_fraction,
               CAST(json_extract(d, '$.weight_bytes') AS BIGINT) AS weight_bytes,
               CAST(json_extract(d, '$.dense_weight_bytes') AS BIGINT) AS dense_weight_bytes,
               CAST(json_extract(d, '$.weight_bytes') AS DOUBLE) * COALESCE(CAST(json_extract(d, '$.layers_per_sweep') AS DOUBLE), 1)
                   / CAST(json_extract(d, '$.candidate_s.median') AS DOUBLE) / 1e9 AS GBps,
               CAST(json_extract(d, '$.read_bandwidth_Bps') AS DOUBLE) / 1e9 AS read_bandwidth_GBps,
               CAST(json_extract(d, '$.layers_per_sweep') AS INTEGER) AS layers_per_sweep,
               CAST(json_extract(d, '$.threads') AS INTEGER) AS threads,
               CAST(json_extract(d, '$.inputs_skipped') AS DOUBLE) AS inputs_skipped
        FROM rows
        ORDER BY hardware, kernel, batch, shape, format, method, pattern, activations""", params).df()


def runs(con: duckdb.DuckDBPyConnection, filters: Filters = Filters()) -> pd.DataFrame:
    """Every run, newest first, with its jobs by current status (a job re-run later counts in the later run).
    Under `filters`, only the runs with a matching job, and only matching jobs counted."""
    where, params = filters.where("j.")
    restricted = where != "TRUE"
    return con.execute(f"""
        SELECT r.run_id, r.grid_name, r.status, r.started_at, r.finished_at, r.jobs_total, r.jobs_skipped,
               count(j.job_key) FILTER (WHERE j.status = 'done') AS done,
               count(j.job_key) FILTER (WHERE j.status = 'failed') AS failed,
               count(j.job_key) FILTER (WHERE j.status = 'cancelled') AS cancelled,
               count(j.job_key) FILTER (WHERE j.status IN ('queued', 'running')) AS pending,
               r.git_commit, r.git_dirty, r.ray_address, r.command
        FROM runs r LEFT JOIN jobs j ON j.run_id = r.run_id AND {where}
        GROUP BY ALL
        {"HAVING count(j.job_key) > 0" if restricted else ""}
        ORDER BY r.started_at DESC, r.run_id""", params).df()


def job_detail(con: duckdb.DuckDBPyConnection, job_key: str) -> dict[str, Any]:
    """Everything the store holds about one job: its row (JSON fields decoded), its run's provenance, its
    metrics, its stages (timings, peak memory, errors) and the prune stage's per-layer sparsity. {} if unknown."""
    df = con.execute("SELECT * FROM jobs WHERE job_key = ?", [job_key]).df()
    if df.empty:
        return {}
    job = df.iloc[0].to_dict()
    for field in ("method_params", "pattern_spec", "spec", "timings", "worker", "kernel_provenance", "warnings",
                  "artifact"):
        if isinstance(job.get(field), str):
            try:
                job[field] = json.loads(job[field])
            except ValueError:
                pass
    metrics = con.execute("SELECT stage, name, value, unit, details FROM metrics WHERE job_key = ? ORDER BY stage, name",
                          [job_key]).df()
    keys = [k for k in (job.get("prune_key"), job.get("eval_key"), job.get("latency_key")) if isinstance(k, str)]
    stages = con.execute("""SELECT stage_key, kind, status, error, attempts, started_at, finished_at, duration_s,
                                   peak_rss_bytes, worker, result
                            FROM stages WHERE stage_key IN (SELECT unnest(?)) ORDER BY started_at""", [keys]).df()
    layers = pd.DataFrame()
    for row in stages.itertuples():
        if row.kind == "prune" and isinstance(row.result, str):
            try:
                layers = pd.DataFrame(json.loads(row.result).get("layers") or [])
            except (ValueError, AttributeError):
                pass
    return {"job": job, "run": run_detail(con, job["run_id"]) if job.get("run_id") else {}, "metrics": metrics,
            "stages": stages.drop(columns=["result"]), "layers": layers}


def run_detail(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """One run's provenance: grid file and text, command, commit, package versions, hardware."""
    df = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
    if df.empty:
        return {}
    row = df.iloc[0].to_dict()
    for field in ("packages", "hardware"):
        row[field] = json.loads(row[field]) if row.get(field) else None
    return row


def jobs(con: duckdb.DuckDBPyConnection, run_id: str | None = None, statuses: tuple[str, ...] = (),
         filters: Filters = Filters()) -> pd.DataFrame:
    """Jobs (of one run, or all, under `filters`) with their status, error and traceback, newest first."""
    where, params = filters.where()
    clauses = [where]
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    if statuses:
        clauses.append("status IN (SELECT unnest(?))")
        params.append(list(statuses))
    where = " AND ".join(clauses) or "TRUE"
    return con.execute(f"""
        SELECT job_key, run_id, status, model, method, pattern, target_sparsity, hardware, kernel, seed, attempts,
               duration_s, error, traceback, kernel_status, worker, warnings, queued_at, started_at, finished_at
        FROM jobs WHERE {where}
        ORDER BY status = 'failed' DESC, finished_at DESC NULLS LAST, model, method, pattern""", params).df()


def compare(con: duckdb.DuckDBPyConnection, by: str, a: str, b: str, filters: Filters = Filters()) -> pd.DataFrame:
    """Rows of side A (`by` = a) and side B (`by` = b) matched on every other identity column, in long form:
    one row per experiment and compared metric, with A, B, B - A and B / A. `by` is 'method' or 'run_id'."""
    if by not in ("method", "run_id"):
        raise ValueError(f"compare by 'method' or 'run_id', not {by!r}")
    board = leaderboard(con, filters)
    keys = [c for c in IDENTITY if c != by]
    metrics = [m for m in COMPARED if m in board.columns]
    metrics += sorted(c for c in board.columns if c.endswith("/acc"))
    sides = [board.loc[board[by] == side, keys + metrics] for side in (a, b)]
    merged = sides[0].merge(sides[1], on=keys, suffixes=(" A", " B"))
    long = merged.melt(id_vars=keys, value_vars=[f"{m} A" for m in metrics], var_name="metric", value_name="A")
    long["metric"] = long["metric"].str.removesuffix(" A")
    b_values = merged.melt(id_vars=keys, value_vars=[f"{m} B" for m in metrics], value_name="B")["B"]
    long["B"] = b_values.to_numpy()
    long["B - A"] = long["B"] - long["A"]
    long["B / A"] = long["B"] / long["A"].where(long["A"] != 0)
    long["higher_is_better"] = long["metric"].map(lambda m: COMPARED.get(m, True if m.endswith("/acc") else None))
    long["metric"] = pd.Categorical(long["metric"], categories=metrics, ordered=True)  # the order above
    return long.sort_values(["metric", *keys], kind="stable").reset_index(drop=True)
