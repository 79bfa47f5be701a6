"""The results store: one DuckDB file, written by the driver alone, read by everyone else.

    store = Store("results/bench.duckdb")
    with store.write() as con: ...           # short transaction; the file is closed right after
    with store.read() as con: ...            # read-only; retries while a writer holds the lock
    store.leaderboard()                       # the view the CLI and the dashboard share, as a DataFrame

DuckDB lets one process hold a file for writing and then no other process may open it, not even
read-only. So the writer opens, writes and closes in short transactions, and readers (and the writer)
retry briefly on a lock conflict: the dashboard can be browsed while a grid runs.

Tables: schema_version, runs (grid text and provenance), jobs (one row per job key, its status, error and
kernel provenance), metrics (long form: name, value, unit, higher_is_better, stderr), layers (the
per-layer sparsity profile). Views: leaderboard.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from bench.errors import BenchError

SCHEMA_VERSION = 3
DEFAULT_DB = Path("results") / "bench.duckdb"

# One row per finished job. "vs dense" compares with the dense job of the same model, hardware, kernel and
# seed measured under the same perplexity protocol (dataset, context, stride, tokens); when several match
# (the same dense job re-run), the latest one.
LEADERBOARD_SQL = """
CREATE OR REPLACE VIEW leaderboard AS
WITH per_job AS (      -- metrics pivoted per job first: grouping by the key alone keeps 100k jobs fast
    SELECT job_key,
           max(value) FILTER (WHERE name = 'perplexity') AS perplexity,
           max(value) FILTER (WHERE name = 'measured_sparsity') AS measured_sparsity,
           max(value) FILTER (WHERE name = 'decode_tok_s_b1') AS decode_tok_s_b1,
           max(value) FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1,
           max(CAST(json_extract(details, '$.speedup_paired.p10') AS DOUBLE))
               FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1_p10,
           max(CAST(json_extract(details, '$.speedup_paired.p90') AS DOUBLE))
               FILTER (WHERE name = 'decode_speedup_b1') AS decode_speedup_b1_p90,
           max(value) FILTER (WHERE name = 'prefill_ms') AS prefill_ms,
           max(value) FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup,
           max(CAST(json_extract(details, '$.speedup_paired.p10') AS DOUBLE))
               FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup_p10,
           max(CAST(json_extract(details, '$.speedup_paired.p90') AS DOUBLE))
               FILTER (WHERE name = 'prefill_speedup') AS prefill_speedup_p90,
           avg(value) FILTER (WHERE stage = 'lm_eval' AND name LIKE '%/acc') AS task_acc_mean,
           count(value) FILTER (WHERE stage = 'lm_eval' AND name LIKE '%/acc') AS tasks,
           max(details) FILTER (WHERE name = 'perplexity') AS perplexity_protocol
    FROM metrics GROUP BY job_key
), wide AS (
    SELECT j.job_key, j.run_id, j.model, j.method, j.pattern, j.target_sparsity, j.hardware, j.kernel,
           j.seed, j.kernel_status, m.perplexity, m.measured_sparsity, m.decode_tok_s_b1, m.decode_speedup_b1,
           m.decode_speedup_b1_p10, m.decode_speedup_b1_p90, m.prefill_ms, m.prefill_speedup,
           m.prefill_speedup_p10, m.prefill_speedup_p90, m.task_acc_mean, coalesce(m.tasks, 0) AS tasks,
           j.warnings, j.finished_at, m.perplexity_protocol
    FROM jobs j LEFT JOIN per_job m USING (job_key)
    WHERE j.status = 'done'
), dense AS (
    SELECT model, hardware, kernel, seed, perplexity_protocol, perplexity, task_acc_mean
    FROM wide WHERE method = 'dense'
    QUALIFY row_number() OVER (PARTITION BY model, hardware, kernel, seed, perplexity_protocol
                               ORDER BY finished_at DESC, job_key) = 1
)
SELECT w.* EXCLUDE (perplexity_protocol), w.perplexity / d.perplexity - 1 AS perplexity_change_vs_dense,
       w.task_acc_mean - d.task_acc_mean AS task_acc_change_vs_dense
FROM wide w
LEFT JOIN dense d
  ON d.model = w.model AND d.hardware = w.hardware AND d.kernel = w.kernel AND d.seed = w.seed
 AND d.perplexity_protocol IS NOT DISTINCT FROM w.perplexity_protocol
"""

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, grid_name VARCHAR, grid_file VARCHAR, grid_text VARCHAR, command VARCHAR,
            git_commit VARCHAR, git_dirty BOOLEAN, packages VARCHAR, hardware VARCHAR, ray_address VARCHAR,
            started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR,
            jobs_total INTEGER, jobs_skipped INTEGER, jobs_done INTEGER, jobs_failed INTEGER, jobs_cancelled INTEGER)""",
        """CREATE TABLE jobs (
            job_key VARCHAR PRIMARY KEY, run_id VARCHAR, model VARCHAR, model_source VARCHAR, model_location VARCHAR,
            model_fingerprint VARCHAR, method VARCHAR, method_version VARCHAR, method_params VARCHAR,
            pattern VARCHAR, pattern_spec VARCHAR, target_sparsity DOUBLE, hardware VARCHAR, kernel VARCHAR,
            kernel_version VARCHAR, seed INTEGER, spec VARCHAR,
            status VARCHAR, error VARCHAR, traceback VARCHAR, attempts INTEGER,
            queued_at TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, duration_s DOUBLE,
            peak_rss_bytes BIGINT, timings VARCHAR, worker VARCHAR, kernel_status VARCHAR, kernel_provenance VARCHAR,
            warnings VARCHAR)""",
        """CREATE TABLE metrics (
            job_key VARCHAR, name VARCHAR, value DOUBLE, unit VARCHAR, higher_is_better BOOLEAN, stderr DOUBLE,
            stage VARCHAR, details VARCHAR, PRIMARY KEY (job_key, name))""",
        """CREATE TABLE layers (
            job_key VARCHAR, layer VARCHAR, block INTEGER, out_features INTEGER, in_features INTEGER,
            numel BIGINT, zeros BIGINT, target_sparsity DOUBLE, measured_sparsity DOUBLE,
            PRIMARY KEY (job_key, layer))""",
        LEADERBOARD_SQL,
    ],
    # 2: a second dense job for the same model, hardware, kernel and seed (another grid's protocol) no
    # longer duplicates the leaderboard's rows; see LEADERBOARD_SQL.
    2: [LEADERBOARD_SQL],
    # 3: the stage graph. A job's record is assembled from its stages (prune, evaluate, latency); a stage is
    # stored once under its own content key and shared by every job that needs it, so a resubmitted grid
    # reruns only the stages that are missing.
    3: [
        """CREATE TABLE stages (
            stage_key VARCHAR PRIMARY KEY, kind VARCHAR, prune_key VARCHAR, hardware VARCHAR, run_id VARCHAR,
            status VARCHAR, error VARCHAR, traceback VARCHAR, attempts INTEGER,
            queued_at TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, duration_s DOUBLE,
            peak_rss_bytes BIGINT, node_id VARCHAR, worker VARCHAR, result VARCHAR)""",
        "ALTER TABLE jobs ADD COLUMN prune_key VARCHAR",
        "ALTER TABLE jobs ADD COLUMN eval_key VARCHAR",
        "ALTER TABLE jobs ADD COLUMN latency_key VARCHAR",
        "ALTER TABLE jobs ADD COLUMN artifact VARCHAR",
    ],
}


def _j(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


def _insert_rows(con, sql: str, width: int, rows: list[list[Any]], chunk: int = 500) -> None:
    """`sql` (an INSERT ... VALUES) with many rows per statement: DuckDB's executemany costs a statement
    per row, which made recording one job take about 80 ms."""
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        placeholders = ", ".join(["(" + ", ".join(["?"] * width) + ")"] * len(part))
        con.execute(f"{sql} {placeholders}", [v for row in part for v in row])


def _is_lock_error(err: Exception) -> bool:
    text = str(err)
    return "lock" in text.lower() or "Conflicting lock" in text


class Store:
    def __init__(self, path: str | Path = DEFAULT_DB, lock_timeout_s: float = 30.0):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._migrated = False  # this object already brought the file to SCHEMA_VERSION (skip the check)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.Error) as err:
                if not _is_lock_error(err) or time.monotonic() > deadline:
                    raise BenchError(f"cannot open {self.path}: {' '.join(str(err).split())}") from err
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short transaction on a freshly opened file, migrated to the current schema."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect(read_only=False)
        try:
            if not self._migrated:
                self._migrate(con)
                self._migrated = True
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self.path.exists():
            raise BenchError(f"no results store at {self.path}; run `bench submit GRID` first, or pass --db PATH")
        con = self._connect(read_only=True)
        try:
            version = self._version(con)
            if version > SCHEMA_VERSION:
                raise BenchError(f"{self.path} has schema version {version}, newer than this sparsebench "
                                 f"({SCHEMA_VERSION}); upgrade sparsebench to read it")
            yield con
        finally:
            con.close()

    @staticmethod
    def _version(con) -> int:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'").fetchone()[0]
        if not exists:
            return 0
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self, con) -> None:
        version = self._version(con)
        if version > SCHEMA_VERSION:
            raise BenchError(f"{self.path} has schema version {version}, newer than this sparsebench ({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return
        con.execute("BEGIN TRANSACTION")
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[v]:
                con.execute(stmt)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [v])
        con.execute("COMMIT")

    @contextmanager
    def submit_lock(self, wait: bool = False, command: str = "", on_wait=None) -> Iterator[None]:
        """Held by the one `bench submit` (or `bench gc`) that writes this store. A second one refuses at
        once, naming the holder, or with `wait` queues behind it. An advisory lock on `<store>.lock` (fcntl),
        released by the kernel when its process ends, so a killed driver never leaves the store locked."""
        import fcntl
        import os
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                if not wait:
                    raise BenchError(f"{self.path} is being written by another bench process ({holder}); wait for it "
                                     "to finish, pass --wait to queue behind it, or use another --db") from None
                if on_wait:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command or 'bench'}".encode(), 0)
            yield
        finally:
            if not self.path.exists():  # nothing was written (e.g. the cluster refused us): leave nothing behind
                # (a process queued with --wait on this file then holds a lock nobody else sees; it and a
                # newcomer could both write. Only when no store exists yet, and DuckDB still lets one open it.)
                lock_path.unlink(missing_ok=True)
            os.close(fd)  # releases the lock

    # ---- writes (driver only) -------------------------------------------------------------------

    def begin_run(self, run: dict[str, Any], jobs: list, skipped: int) -> None:
        """Record the run and queue its jobs (re-queued rows keep their key, lose their old results)."""
        with self.write() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), NULL, 'running', ?, ?, 0, 0, 0)",
                [run["run_id"], run["grid_name"], run["grid_file"], run["grid_text"], run["command"],
                 run["git"]["commit"], run["git"]["dirty"], _j(run["packages"]), _j(run["hardware"]),
                 run["ray_address"], len(jobs) + skipped, skipped],
            )
            keys = [j.key for j in jobs]
            if keys:
                con.execute("DELETE FROM metrics WHERE job_key IN (SELECT unnest(?))", [keys])
                con.execute("DELETE FROM layers WHERE job_key IN (SELECT unnest(?))", [keys])
                con.execute("DELETE FROM jobs WHERE job_key IN (SELECT unnest(?))", [keys])
            con.executemany(
                "INSERT INTO jobs (job_key, run_id, model, model_source, model_location, model_fingerprint, method, "
                "method_version, method_params, pattern, pattern_spec, target_sparsity, hardware, kernel, "
                "kernel_version, seed, spec, status, attempts, queued_at, prune_key, eval_key, latency_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, now(), ?, ?, ?)",
                [[j.key, run["run_id"], j.model.name, j.model.source, j.model.location, j.model.fingerprint,
                  j.method_label, j.method_version, _j(j.method_params), j.pattern_label, _j(j.pattern), j.sparsity,
                  j.hardware, j.kernel, j.kernel_version, j.seed, _j(j.to_dict()), j.prune_key, j.eval_key,
                  j.latency_key] for j in jobs],
            )

    @contextmanager
    def _in(self, con) -> Iterator[duckdb.DuckDBPyConnection]:
        """`con` (a transaction the caller holds open), or a fresh short transaction of our own."""
        if con is not None:
            yield con
        else:
            with self.write() as own:
                yield own

    def record_result(self, key: str, result: dict[str, Any], con=None) -> None:
        kernel = result.get("kernel") or {}
        with self._in(con) as con:
            con.execute(
                "UPDATE jobs SET status = ?, error = ?, traceback = ?, attempts = attempts + 1, started_at = ?, "
                "finished_at = ?, duration_s = ?, peak_rss_bytes = ?, timings = ?, worker = ?, kernel_status = ?, "
                "kernel_provenance = ?, warnings = ?, artifact = ? WHERE job_key = ?",
                [result["status"], result.get("error"), result.get("traceback"), result.get("started_at"),
                 result.get("finished_at"), result.get("duration_s"), result.get("peak_rss_bytes"),
                 _j(result.get("timings")), _j(result.get("worker")), kernel.get("status"), _j(kernel or None),
                 "\n".join(result.get("warnings") or []) or None, _j(result.get("artifact")), key],
            )
            if result["status"] == "done":
                _insert_rows(con, "INSERT OR REPLACE INTO metrics VALUES", 8,
                             [[key, m["name"], m["value"], m["unit"], m["higher_is_better"], m.get("stderr"), m["stage"],
                               _j(m.get("details"))] for m in result.get("metrics", [])])
                _insert_rows(con, "INSERT OR REPLACE INTO layers VALUES", 9,
                             [[key, x["layer"], x["block"], x["out_features"], x["in_features"], x["numel"], x["zeros"],
                               x["target_sparsity"], x["measured_sparsity"]] for x in result.get("layers", [])])

    def queue_stages(self, run_id: str, stages: list[dict[str, Any]]) -> None:
        """Stages about to run: (re)queued under this run, any earlier outcome of theirs dropped."""
        if not stages:
            return
        with self.write() as con:
            con.execute("DELETE FROM stages WHERE stage_key IN (SELECT unnest(?))", [[s["key"] for s in stages]])
            con.executemany(
                "INSERT INTO stages (stage_key, kind, prune_key, hardware, run_id, status, attempts, queued_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', 0, now())",
                [[s["key"], s["kind"], s["prune_key"], s["hardware"], run_id] for s in stages])

    def record_stage(self, key: str, result: dict[str, Any], con=None) -> None:
        """A stage's outcome. A done stage keeps its whole result (metrics, layers, kernel provenance), from
        which later runs assemble the records of other jobs that share it."""
        worker = result.get("worker") or {}
        kept = {k: result.get(k) for k in ("metrics", "layers", "kernel", "warnings", "artifact", "timings",
                                            "started_at", "finished_at", "duration_s", "peak_rss_bytes", "worker")}
        with self._in(con) as con:
            con.execute(
                "UPDATE stages SET status = ?, error = ?, traceback = ?, attempts = attempts + 1, started_at = ?, "
                "finished_at = ?, duration_s = ?, peak_rss_bytes = ?, node_id = ?, worker = ?, result = ? "
                "WHERE stage_key = ?",
                [result["status"], result.get("error"), result.get("traceback"), result.get("started_at"),
                 result.get("finished_at"), result.get("duration_s"), result.get("peak_rss_bytes"),
                 worker.get("node_id"), _j(worker or None), _j(kept) if result["status"] == "done" else None, key])

    def stage_results(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """{stage key: its stored result (status "done")} for the done ones among `keys`."""
        if not self.path.exists() or not keys:
            return {}
        with self.read() as con:
            if self._version(con) < 3:
                return {}
            rows = con.execute("SELECT stage_key, result FROM stages WHERE status = 'done' AND "
                               "stage_key IN (SELECT unnest(?))", [keys]).fetchall()
        return {k: {**json.loads(r), "status": "done"} for k, r in rows}

    def referenced_artifacts(self) -> set[str]:
        """Prune keys of every done prune stage: the artifacts `bench gc` keeps."""
        if not self.path.exists():
            return set()
        with self.read() as con:
            if self._version(con) < 3:
                return set()
            return {r[0] for r in con.execute("SELECT stage_key FROM stages WHERE kind = 'prune' AND status = 'done'").fetchall()}

    def mark_stages(self, keys: list[str], status: str, error: str | None = None, con=None) -> None:
        if not keys:
            return
        with self._in(con) as con:
            con.execute("UPDATE stages SET status = ?, error = coalesce(?, error), finished_at = now() "
                        "WHERE stage_key IN (SELECT unnest(?))", [status, error, keys])

    def mark(self, keys: list[str], status: str, error: str | None = None) -> None:
        if not keys:
            return
        with self.write() as con:
            con.execute("UPDATE jobs SET status = ?, error = coalesce(?, error), finished_at = now() "
                        "WHERE job_key IN (SELECT unnest(?))", [status, error, keys])

    def finish_run(self, run_id: str, status: str, counts: dict[str, int]) -> None:
        with self.write() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = now(), jobs_done = ?, jobs_failed = ?, jobs_cancelled = ? "
                "WHERE run_id = ?",
                [status, counts.get("done", 0), counts.get("failed", 0), counts.get("cancelled", 0), run_id],
            )

    # ---- reads ------------------------------------------------------------------------------------

    def statuses(self, keys: list[str]) -> dict[str, str]:
        if not self.path.exists():
            return {}
        with self.read() as con:
            if not self._version(con):
                return {}
            rows = con.execute("SELECT job_key, status FROM jobs WHERE job_key IN (SELECT unnest(?))", [keys]).fetchall()
        return dict(rows)

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self.read() as con:
            return con.execute(sql, params or []).df()

    def leaderboard(self) -> pd.DataFrame:
        """The leaderboard view, plus one column per lm-eval task accuracy (`<task>/acc`)."""
        with self.read() as con:
            board = con.execute("SELECT * FROM leaderboard ORDER BY model, hardware, kernel, method = 'dense' DESC, "
                                "target_sparsity, pattern, perplexity").df()
            return with_task_columns(con, board)


def with_task_columns(con: duckdb.DuckDBPyConnection, board: pd.DataFrame) -> pd.DataFrame:
    """`board` (rows of the leaderboard view) with one column per lm-eval task accuracy, `<task>/acc`."""
    if board.empty:
        return board
    keys = board[["job_key"]]  # noqa: F841  (read by DuckDB's replacement scan below)
    names = [r[0] for r in con.execute("SELECT DISTINCT name FROM metrics WHERE stage = 'lm_eval' AND name LIKE '%/acc' "
                                       "ORDER BY name").fetchall()]
    if not names:
        return board
    wide = con.execute("PIVOT (SELECT m.job_key, m.name, m.value FROM metrics m SEMI JOIN keys k ON m.job_key = k.job_key "
                       "WHERE m.stage = 'lm_eval' AND m.name LIKE '%/acc') ON name USING first(value) GROUP BY job_key").df()
    present = [n for n in names if n in wide.columns]  # tasks of other jobs than these are left out
    return board.merge(wide[["job_key", *present]], on="job_key", how="left")
