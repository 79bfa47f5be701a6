"""The results store: one DuckDB file, written by the driver alone, read by everyone else.

    store = Store("results/bench.duckdb")
    with store.write() as con: ...           # short transaction; the file is closed right after
    with store.read() as con: ...            # read-only; retries while a writer holds the lock
    store.leaderboard()                       # the view the CLI and the dashboard share, as a DataFrame

DuckDB lets one process hold a file for writing and then no other process may open it, not even
read-only. So the writer opens, writes and closes in short transactions; a reader retries for up to 30 s
on a lock conflict, and the writer waits as long as it takes (saying so): the dashboard can be browsed
while a grid runs.

The tables, the leaderboard view and their migrations are in bench.store.schema.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from bench.errors import BenchError
# LEADERBOARD_SQL and the rest are imported from here by tests and the dashboard
from bench.store.schema import LEADERBOARD_SQL, MIGRATIONS, SCHEMA_VERSION, StoreError, schema_version  # noqa: F401

DEFAULT_DB = Path("results") / "bench.duckdb"


def _j(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


def _insert_rows(con, sql: str, width: int, rows: list[list[Any]], chunk: int = 500) -> None:
    """`sql` (an INSERT ... VALUES) with many rows per statement: DuckDB's executemany costs a statement
    per row, which made recording one job take about 80 ms."""
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        placeholders = ", ".join(["(" + ", ".join(["?"] * width) + ")"] * len(part))
        con.execute(f"{sql} {placeholders}", [v for row in part for v in row])


def _insert_frame(con, table: str, frame: pd.DataFrame, now: tuple[str, ...] | list[str] = ()) -> None:
    """Insert a DataFrame's rows into the named columns of `table` in one statement (DuckDB scans the
    frame directly: 24x faster than executemany on 5,000 jobs, benchmarks/startup.py), with the columns in
    `now` set to the transaction's timestamp."""
    if frame.empty:
        return
    cols = ", ".join(list(frame.columns) + list(now))
    values = ", ".join(list(frame.columns) + ["now()"] * len(now))
    con.register("_rows", frame)
    try:
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {values} FROM _rows")
    finally:
        con.unregister("_rows")


def _is_lock_error(err: Exception) -> bool:
    """DuckDB's one error for a file another process holds (it has no error class of its own)."""
    return isinstance(err, duckdb.IOException) and "Could not set lock on file" in str(err)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# A store is opened only as what it is: no extension is installed or loaded behind the user's back (a file
# that is not a DuckDB store would otherwise make DuckDB download a reader for it, e.g. SQLite's).
CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file


class Store:
    def __init__(self, path: str | Path = DEFAULT_DB, lock_timeout_s: float = 30.0, log=None):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s  # how long a reader waits for a writer before giving up
        self.log = log or (lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
        self._migrated = False  # this object already brought the file to SCHEMA_VERSION (skip the check)

    def _check_file(self) -> None:
        """Refuse, in one line, a --db that is not a DuckDB file (a folder, a SQLite file, a text file)."""
        if self.path.is_dir():
            raise StoreError(f"--db: {self.path} is a folder; give the DuckDB file (e.g. results/bench.duckdb)")
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            return
        except OSError as err:
            raise StoreError(f"--db: cannot read {self.path}: {err.strerror or err}") from None
        if head and (len(head) < 12 or head[8:12] != DUCKDB_MAGIC):
            kind = "an SQLite database" if head.startswith(b"SQLite format") else "not a DuckDB file"
            raise StoreError(f"--db: {self.path} is {kind}, not a SparseBench store; pass another --db")

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file. A reader retries for `lock_timeout_s` while a writer holds it. The writer never
        gives up on a lock: what it has to write is all it holds of finished work, so it waits for the
        reader (a dashboard, `bench ls`) and says so every `lock_timeout_s`."""
        self._check_file()
        start = time.monotonic()
        told = 0.0
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=CONFIG)
            except duckdb.Error as err:
                waited = time.monotonic() - start
                if not _is_lock_error(err) or (read_only and waited > self.lock_timeout_s):
                    raise StoreError(f"cannot open {self.path}: {_one_line(err)}") from None
                if not read_only and waited - told >= self.lock_timeout_s:
                    told = waited
                    holder = str(err).split("Conflicting lock is held in", 1)[-1].split(". See also")[0].strip()
                    self.log(f"{self.path} has been held by another process for {waited:.0f} s ({holder}); "
                             "still waiting to write (finished results are kept in memory until then)")
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"--db: cannot make the folder of {self.path}: {err.strerror or err}") from None

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short transaction on a freshly opened file, migrated to the current schema. A failed write
        (a full disk, say) is reported with its own cause, not with the rollback's."""
        self._make_parent()
        con = self._connect(read_only=False)
        try:
            if not self._migrated:
                self._migrate(con)
                self._migrated = True
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as err:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a transaction that failed to commit is already gone; the cause is `err`
                if isinstance(err, duckdb.Error):
                    raise StoreError(f"cannot write {self.path}: {_one_line(err)} (nothing of this write was kept)") from err
                raise
        except duckdb.Error as err:  # migration
            raise StoreError(f"cannot write {self.path}: {_one_line(err)}") from err
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

    def _version(self, con) -> int:
        return schema_version(con, self.path)

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

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def submit_lock(self, wait: bool = False, command: str = "", on_wait=None):
        """Held by the one `bench submit` (or `bench gc`) that writes this store (bench.store.lock)."""
        from bench.store.lock import writer_lock

        self._make_parent()
        return writer_lock(self.path, self.lock_path, wait=wait, command=command, on_wait=on_wait)

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
            specs = [j.to_dict() for j in jobs]  # each job's JSON form, made once here
            _insert_frame(con, "jobs", pd.DataFrame({
                "job_key": [j.key for j in jobs], "run_id": run["run_id"],
                "model": [j.model.name for j in jobs], "model_source": [j.model.source for j in jobs],
                "model_location": [j.model.location for j in jobs],
                "model_fingerprint": [j.model.fingerprint for j in jobs], "method": [j.method_label for j in jobs],
                "method_version": [j.method_version for j in jobs], "method_params": [_j(j.method_params) for j in jobs],
                "pattern": [j.pattern.label for j in jobs], "pattern_spec": [_j(d["pattern"]) for d in specs],
                "activations": [j.activations_label for j in jobs],
                "target_sparsity": pd.Series([j.pattern.sparsity for j in jobs], dtype="float64"),
                "hardware": [j.hardware.label for j in jobs], "kernel": [j.kernel for j in jobs],
                "kernel_version": [j.kernel_version for j in jobs], "seed": pd.Series([j.seed for j in jobs], dtype="int64"),
                "spec": [_j(d) for d in specs], "status": "queued", "attempts": 0,
                "prune_key": [j.prune_key for j in jobs], "eval_key": [j.eval_key for j in jobs],
                "latency_key": [j.latency_key for j in jobs],
            }), now=["queued_at"])

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
            if result["status"] == "done" or result.get("metrics"):  # a failed job keeps what was measured
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
            _insert_frame(con, "stages", pd.DataFrame({
                "stage_key": [s["key"] for s in stages], "kind": [s["kind"] for s in stages],
                "prune_key": [s["prune_key"] for s in stages], "hardware": [s["hardware"] for s in stages],
                "run_id": run_id, "status": "queued", "attempts": 0}), now=["queued_at"])

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

    def close_abandoned_runs(self) -> list[str]:
        """Runs still marked `running` whose driver is gone (killed with SIGKILL, its machine lost): called
        by the holder of the submit lock, when no other driver can be running. Each is closed as
        `abandoned`, and its stages and jobs that never finished as `cancelled`. Returns their run ids."""
        if not self.path.is_file():
            return []
        with self.read() as con:
            if self._version(con) < 3:
                return []
            runs = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'running' ORDER BY started_at").fetchall()]
        if not runs:
            return []
        why = "cancelled: the bench submit of this run ended without closing it (killed?); submit again to resume"
        with self.write() as con:
            for table, key in (("stages", "stage_key"), ("jobs", "job_key")):
                con.execute(f"UPDATE {table} SET status = 'cancelled', error = coalesce(error, ?), finished_at = now() "
                            "WHERE run_id IN (SELECT unnest(?)) AND status IN ('queued', 'running')", [why, runs])
            con.execute("""UPDATE runs r SET status = 'abandoned', finished_at = now(),
                               jobs_done = (SELECT count(*) FROM jobs j WHERE j.run_id = r.run_id AND j.status = 'done'),
                               jobs_failed = (SELECT count(*) FROM jobs j WHERE j.run_id = r.run_id AND j.status = 'failed'),
                               jobs_cancelled = (SELECT count(*) FROM jobs j WHERE j.run_id = r.run_id AND j.status = 'cancelled')
                           WHERE run_id IN (SELECT unnest(?))""", [runs])
        return runs

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
            acts = "activations <> 'none', activations, " if "activations" in _columns(con, "leaderboard") else ""
            board = con.execute("SELECT * FROM leaderboard ORDER BY model, hardware, kernel, method = 'dense' DESC, "
                                f"target_sparsity, pattern, {acts}perplexity").df()
            return with_task_columns(con, board)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The columns of a table or view (a store read before its migration lacks the newer ones)."""
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


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
