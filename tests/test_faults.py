"""Promises kept by the store under faults: the writer lock, a store held by a reader, a full disk, files that
are not a SparseBench store, paths that cannot be written. One line and exit 2 for what a user can fix,
nothing half-written. Each test names the defect it covers.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import pytest

from bench.errors import BenchError
from bench.grid import expand, parse_grid
from bench.store import Store
from conftest import bench, one_line_exit_2, small_grid, write_grid


# ---- 1 and 12: the writer lock -----------------------------------------------------------------------

def test_a_refused_writer_leaves_the_holders_lock_alone(tmp_path, untrained_model):
    """Defect 1: a refused second submit on a fresh store deleted the first one's lock file, so a third ran
    beside the first. The refused one must touch nothing; the holder alone removes the file, on its way out."""
    db = tmp_path / "fresh.duckdb"  # no store file yet, as while the first submit starts Ray
    store = Store(db)
    grid = write_grid(tmp_path, small_grid(untrained_model))
    with store.submit_lock(command="first"):
        assert store.lock_path.exists()
        second = bench("submit", grid, "--db", db, "--no-progress")
        assert "is being written by another bench process" in one_line_exit_2(second)
        assert store.lock_path.exists()  # still the first one's
        for _ in range(2):  # a third (and a fourth) are refused too
            with pytest.raises(BenchError, match="is being written by another bench process"):
                with Store(db).submit_lock(command="third"):
                    pass
        assert "first" in store.lock_path.read_text()
    assert not store.lock_path.exists()  # defect 12: no lock file outlives the run
    assert not db.exists()


def test_a_queued_writer_takes_over_the_lock_the_holder_removed(tmp_path):
    """With --wait, a second writer queues on the lock file; the holder removes that file as it leaves.
    The waiter must then hold the store's lock (the file at the path), so that a newcomer is refused."""
    db = tmp_path / "b.duckdb"
    events = []
    release, taken = threading.Event(), threading.Event()

    def waiter():
        with Store(db).submit_lock(wait=True, command="waiter", on_wait=lambda holder: events.append(holder)):
            taken.set()
            release.wait(30)

    with Store(db).submit_lock(command="holder"):
        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 10
        while not events:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "holder" in events[0]
    assert taken.wait(10)
    try:
        assert "waiter" in Store(db).lock_path.read_text()
        with pytest.raises(BenchError, match=r"another bench process \(pid .*waiter"):
            with Store(db).submit_lock(command="newcomer"):
                pass
    finally:
        release.set()
        t.join(10)
    assert not Store(db).lock_path.exists() and events == events[:1]  # told once


def test_a_run_whose_driver_is_gone_is_closed_by_the_next_writer(tmp_path, untrained_model):
    """Defect 12: after kill -9 of `bench submit` its run stayed `running` forever. Whoever next holds the
    lock knows no driver of that run is alive: it closes the run as abandoned and its unfinished work as
    cancelled (a resubmit runs them again)."""
    from test_store import done, run_row

    spec = parse_grid(f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\npatterns = ["50%", "2:4"]\n')
    js = expand(spec)
    store = Store(tmp_path / "b.duckdb")
    store.begin_run(run_row(spec, "killed"), js, 0)
    store.queue_stages("killed", [{"key": "s1", "kind": "prune", "prune_key": "s1", "hardware": "cpu"}])
    store.record_result(js[0].key, done(5.0, 0.5, 100.0))
    with store.submit_lock(command="next"):
        assert store.close_abandoned_runs() == ["killed"]
        assert store.close_abandoned_runs() == []
    runs = store.query("SELECT status, jobs_done, jobs_cancelled, finished_at FROM runs").iloc[0]
    assert runs.status == "abandoned" and runs.jobs_done == 1 and runs.jobs_cancelled == len(js) - 1
    assert runs.finished_at is not None
    jobs = store.query("SELECT status, error FROM jobs ORDER BY status")
    assert sorted(jobs.status) == ["cancelled"] * (len(js) - 1) + ["done"]
    assert all("ended without closing it" in e for e in jobs.query("status == 'cancelled'").error)
    assert store.query("SELECT status FROM stages").status.tolist() == ["cancelled"]


# ---- 5 and 6: a store held by a reader; a full disk --------------------------------------------------

def test_the_writer_waits_for_a_reader_and_says_so(tmp_path):
    """Defect 5: a reader holding the store past the timeout aborted the run (exit 2, results lost).
    The writer keeps waiting, says so, and writes when the reader lets go."""
    path = tmp_path / "b.duckdb"
    with Store(path).write() as con:
        con.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(path)!r}, read_only=True)
        print("holding", flush=True)
        time.sleep(2.5)
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    said = []
    t0 = time.monotonic()
    with Store(path, lock_timeout_s=0.5, log=said.append).write() as con:  # a reader gives up after 0.5 s
        con.execute("INSERT INTO probe VALUES (1)")
    assert time.monotonic() - t0 > 1.0
    holder.wait(10)
    assert said and all("still waiting to write" in m and "finished results are kept" in m for m in said)
    assert Store(path).query("SELECT x FROM probe").x.tolist() == [1]


def test_a_failed_write_reports_its_own_cause(tmp_path):
    """Defect 6: a full disk under the store read "cannot rollback - no transaction is active", hiding the
    cause. A file-size limit makes the same failure without a full disk: the cause must be in the line."""
    path = tmp_path / "b.duckdb"
    with Store(path).write():
        pass
    script = textwrap.dedent(f"""
        import os, resource, signal
        from bench.store import Store
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a signal, as ENOSPC on a full disk
        limit = os.path.getsize({str(path)!r}) + 200_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        with Store({str(path)!r}).write() as con:
            con.execute("CREATE TABLE big AS SELECT repeat('x', 1000) || range AS t FROM range(100000)")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "StoreError" in last and "File too large" in last and "nothing of this write was kept" in last, proc.stderr
    assert "cannot rollback" not in last
    assert Store(path).query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'big'").n[0] == 0


# ---- 8 and 9: files that are not our store, paths that cannot be written -------------------------------

def test_a_sqlite_file_is_refused_without_loading_an_extension(tmp_path):
    """Defect 8: DuckDB tried to download its SQLite extension to open an SQLite file given as --db."""
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE jobs (x)")
    con.commit()
    con.close()
    before = path.read_bytes()
    for cmd in (["ls"], ["leaderboard"], ["show", "abc"], ["export", "--format", "csv", tmp_path / "out"]):
        line = one_line_exit_2(bench(*cmd, "--db", path))
        assert "is an SQLite database, not a SparseBench store" in line and "extension" not in line
    assert path.read_bytes() == before and not (tmp_path / "out").exists()
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all")
    assert "is not a DuckDB file" in one_line_exit_2(bench("ls", "--db", text))
    # and no connection the store opens may install or load an extension by itself
    store = tmp_path / "b.duckdb"
    with Store(store).write():
        pass
    with Store(store).read() as con:
        settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                    "('autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}


def test_a_duckdb_file_of_someone_else_is_refused_everywhere(tmp_path, untrained_model):
    """Defect 9: a DuckDB file with a foreign `jobs` table gave tracebacks in submit, ls, show, leaderboard
    and export. Each refuses in one line, and the file is left as it was."""
    path = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE jobs (id INTEGER, owner VARCHAR)")
    con.execute("INSERT INTO jobs VALUES (1, 'someone')")
    con.close()
    before = path.read_bytes()
    grid = write_grid(tmp_path, small_grid(untrained_model))
    for cmd in (["submit", grid, "--no-progress"], ["submit", grid, "--dry-run"], ["ls"], ["show", "abc"],
                ["leaderboard"], ["export", "--format", "parquet", tmp_path / "out"], ["gc"]):
        line = one_line_exit_2(bench(*cmd, "--db", path))
        assert "is a DuckDB file but not a SparseBench store (it has tables jobs and no schema_version)" in line, cmd
    assert path.read_bytes() == before
    assert not Store(path).lock_path.exists() and not (tmp_path / "out").exists()


def test_paths_that_cannot_be_written_are_refused_in_one_line(tmp_path, untrained_model):
    """Defect 9: --db under a file or a read-only folder, and export onto an existing file, gave tracebacks."""
    grid = write_grid(tmp_path, small_grid(untrained_model))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for cmd in (["submit", grid, "--no-progress"], ["gc"]):
        line = one_line_exit_2(bench(*cmd, "--db", a_file / "b.duckdb"))
        assert "--db:" in line, line
    line = one_line_exit_2(bench("ls", "--db", a_file / "b.duckdb"))
    assert "no results store" in line
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert "--db:" in one_line_exit_2(bench("submit", grid, "--db", ro / "b.duckdb", "--no-progress"))
        finally:
            ro.chmod(0o755)
    with Store(tmp_path / "b.duckdb").write():
        pass
    line = one_line_exit_2(bench("export", "--format", "csv", a_file, "--db", tmp_path / "b.duckdb"))
    assert "is a file; give a folder" in line and a_file.read_text() == "x"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "jobs.csv").mkdir()  # a folder where an export file goes: nothing is written at all
    line = one_line_exit_2(bench("export", "--format", "csv", tmp_path / "out", "--db", tmp_path / "b.duckdb"))
    assert "jobs.csv is a folder" in line and os.listdir(tmp_path / "out") == ["jobs.csv"]
    ok = bench("export", "--format", "csv", tmp_path / "fine", "--db", tmp_path / "b.duckdb")
    assert ok.returncode == 0 and sorted(os.listdir(tmp_path / "fine")) == sorted(
        f"{t}.csv" for t in ("runs", "jobs", "stages", "metrics", "layers", "leaderboard"))


def test_show_takes_a_key_prefix_literally(tmp_path, untrained_model):
    """Sibling of the LIKE patterns built from user input: `bench show %` matched every job."""
    from test_store import run_row

    spec = parse_grid(f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\npatterns = ["50%"]\n'
                      '[latency]\nenabled = false\n')
    js = expand(spec)
    db = tmp_path / "b.duckdb"
    Store(db).begin_run(run_row(spec), js, 0)
    for prefix in ("%", "_", js[0].key[:3] + "%"):
        assert "no job has that key" in one_line_exit_2(bench("show", prefix, "--db", db))
    assert bench("show", js[0].key[:8], "--db", db).returncode == 0
