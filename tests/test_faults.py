"""Promises kept under bad input and faults: one line and exit 2 for what a user can fix, nothing
half-written, the writer lock, extreme sparsities, foreign files, a full disk, signals during start-up.

Each test names the defect it covers. The ones that start Ray are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from bench.errors import BenchError, GridError
from bench.grid import expand, parse_grid
from bench.patterns import Unstructured, parse_pattern, pattern_from_dict
from bench.store import Store
from conftest import FAST_LATENCY, FAST_PPL, write_grid


def bench(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_line_exit_2(proc) -> str:
    """The error line of a refused command, after checking that it is exactly one line, exit 2."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def small_grid(model, extra="", patterns='["50%"]') -> str:
    return (f'name = "faults"\nmethods = ["magnitude"]\npatterns = {patterns}\n'
            f'models = [{{ path = "{model}", name = "tiny" }}]\n{extra}\n' + FAST_PPL + FAST_LATENCY)


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


# ---- 2: extreme sparsities ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.08, 0.5, 0.92, 0.95, 0.99])
def test_every_unstructured_target_parses_and_round_trips(target):
    """Defect 2: OWL's owl_lambda (default 0.08) was checked on uniform patterns too, so a target at or
    below 8% or at or above 92% failed in every form, and in the worker when the job was rebuilt."""
    for form in (f"{target * 100:g}%", f"unstructured:{target}", {"kind": "unstructured", "target": target},
                 {"kind": "unstructured", "target": target, "scope": "row"}):
        p = parse_pattern(form)
        assert p.target == target and p.allocation == "uniform"
        assert pattern_from_dict(p.to_dict()) == p
        assert pattern_from_dict(json.loads(json.dumps(p.to_dict()))) == p  # as it crosses to a worker


def test_owl_settings_are_checked_only_where_they_apply():
    with pytest.raises(ValueError) as info:  # the user never set owl_lambda: the message says it is the default
        parse_pattern({"kind": "unstructured", "target": 0.95, "allocation": "owl"})
    assert info.value.args[0] == "owl_lambda" and "(the default)" in info.value.args[1] and "0.05" in info.value.args[1]
    assert parse_pattern({"kind": "unstructured", "target": 0.95, "allocation": "owl", "owl_lambda": 0.04}).owl_lambda == 0.04
    with pytest.raises(ValueError) as info:  # set on a uniform pattern, it would do nothing: refused
        parse_pattern({"kind": "unstructured", "target": 0.5, "owl_lambda": 0.1})
    assert info.value.args[0] == "owl_lambda" and "only with allocation" in info.value.args[1]
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            parse_pattern({"kind": "unstructured", "target": 0.5, "allocation": "owl", "owl_m": bad})
    # the keys of uniform patterns do not change: the stored OWL defaults stay in the dict
    assert parse_pattern("95%").to_dict() == {"kind": "unstructured", "target": 0.95, "scope": "layer",
                                              "allocation": "uniform", "owl_m": 5.0, "owl_lambda": 0.08}


def test_extreme_targets_dry_run_and_prune(tmp_path, tiny_model):
    """`--dry-run` crashed on 95% and 5%; and a 95% or 99% target prunes and verifies for real."""
    from transformers import AutoModelForCausalLM

    from bench.prune.harness import prune_model
    from bench.registry import method_registry

    grid = write_grid(tmp_path, small_grid(tiny_model, patterns='["5%", "95%", {kind = "unstructured", target = 0.99}]'))
    dry = bench("submit", grid, "--db", tmp_path / "b.duckdb", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "· 5% ·" in dry.stdout and "· 95% ·" in dry.stdout and "· 99% ·" in dry.stdout
    assert not (tmp_path / "b.duckdb").exists()
    for target in (0.95, 0.99):
        model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        report = prune_model(model, method_registry().get("magnitude")(seed=0), Unstructured(target))
        assert all(layer["measured_sparsity"] >= target - 1e-9 for layer in report.layers)


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


def test_a_reused_artifact_without_its_result_is_pruned_again(tmp_path, untrained_model):
    """Defect 7's sibling in the prune stage: an artifact found on disk (another store made it) is reused
    from its manifest's `result`; a manifest without one made the stage fail with a KeyError."""
    from bench.run.execute import run_stage

    job = next(j for j in expand(parse_grid(grid_text(untrained_model) + "[latency]\nenabled = false\n"))
               if j.method == "magnitude")
    stage = {"kind": "prune", "key": job.prune_key, "job": job.to_dict(), "artifacts": str(tmp_path), "hardware": "cpu"}
    first = run_stage(stage)
    assert first["status"] == "done", first.get("error")
    assert run_stage(stage)["artifact"]["reused"] is True
    path = tmp_path / job.prune_key / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["result"]
    path.write_text(json.dumps(manifest))
    again = run_stage(stage)
    assert again["status"] == "done", again.get("error")
    assert not again["artifact"].get("reused") and "result" in json.loads(path.read_text())


def test_a_failed_stage_says_what_kind_of_failure_it_was(tmp_path, untrained_model):
    """The scheduler rebuilds a damaged artifact on the failure's kind, not on its message text (which
    searched the error for "ArtifactError")."""
    from bench.run.execute import FAILURES, run_stage

    job = next(j for j in expand(parse_grid(grid_text(untrained_model) + "[latency]\nenabled = false\n"))
               if j.method == "magnitude")
    base = {"key": job.prune_key, "job": job.to_dict(), "artifacts": str(tmp_path / "art"), "hardware": "cpu"}
    missing = run_stage({**base, "kind": "evaluate", "key": job.eval_key})  # no artifact was ever made
    assert missing["status"] == "failed" and missing["failure"] == "artifact"
    late = run_stage({**base, "kind": "prune", "timeout_s": 1e-6})
    assert late["status"] == "failed" and late["failure"] == "timeout", late.get("error")
    broken = run_stage({**base, "kind": "prune", "job": {**job.to_dict(), "method": "no-such-method"}})
    assert broken["status"] == "failed" and broken["failure"] == "error"
    assert {missing["failure"], late["failure"], broken["failure"]} <= set(FAILURES)


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
        f"{t}.csv" for t in ("runs", "jobs", "metrics", "layers", "leaderboard"))


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


# ---- 10 and 11: values that pass validation and fail later; grids of no jobs ------------------------

def grid_text(model, extra="", methods='["magnitude"]', patterns='["50%"]') -> str:
    return f'models = [{{ path = "{model}" }}]\nmethods = {methods}\npatterns = {patterns}\n{extra}\n'


NUMERIC = [
    ("[runner]\nstage_timeout_s = inf", "runner.stage_timeout_s", "not a finite number"),
    ("[runner]\nstage_timeout_s = nan", "runner.stage_timeout_s", "not a finite number"),
    ("[runner]\nstage_timeout_s = 1e12", "runner.stage_timeout_s", "(7 days)"),
    ("[runner]\nmax_retries = 100000", "runner.max_retries", "must be in [0, 100]"),
    ("seeds = [4294967296]", "seeds[0]", "at most 2147483647"),
    ("seeds = [1, 1]", "seeds[1]", "listed twice"),
    ("[calibration]\nseed = 9999999999", "calibration.seed", "out of range"),
    ("[calibration]\nseq_len = 4096", "calibration.seq_len", "longer than model"),
    ("[evaluation.perplexity]\ncontext_length = 1024\nstride = 512", "evaluation.perplexity.context_length",
     "512 positions in its config.json"),
    ("[latency]\nprefill_length = 513", "latency.prefill_length", "give at most 512"),
    ("[latency]\nprompt_length = 500\ndecode_tokens = 13", "latency.decode_tokens", "prompt_length + decode_tokens = 513"),
    ("[latency]\ndecode_batch = [1, 8, 1]", "latency.decode_batch[2]", "listed twice"),
    ('patterns = [{kind = "unstructured", target = 0.5, allocation = "owl", owl_m = inf}]', "patterns[0].owl_m", "finite"),
    ('patterns = ["unstructured:nan"]', "patterns[0]", "not a finite number"),
]


@pytest.mark.parametrize("extra,field,fragment", NUMERIC, ids=[n[1] for n in NUMERIC])
def test_numbers_are_checked_for_what_they_can_take(untrained_model, extra, field, fragment):
    """Defect 10: `stage_timeout_s = inf` passed validation and failed every job. Every numeric field is
    checked before anything runs (siblings: seeds past 32 bits, lengths past the model's positions,
    duplicates in lists)."""
    text = grid_text(untrained_model, extra)
    if extra.startswith("patterns"):
        text = f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\n{extra}\n'
    if "calibration" in extra:
        text = text.replace('["magnitude"]', '["wanda"]')
    with pytest.raises(GridError) as info:
        parse_grid(text, source="g.toml")
    assert info.value.field == field and fragment in str(info.value), str(info.value)


def test_model_fields_and_method_params_refuse_non_finite_numbers(untrained_model):
    for model_extra, field in (("expect_perplexity = inf", "models[0].expect_perplexity"),
                               ("expect_tolerance = nan", "models[0].expect_tolerance")):
        with pytest.raises(GridError) as info:
            parse_grid(f'models = [{{ path = "{untrained_model}", {model_extra} }}]\nmethods = ["dense"]\n')
        assert info.value.field == field and "not a finite number" in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(grid_text(untrained_model, methods='[{name = "sparsegpt", params = {percdamp = nan}}]'))
    assert info.value.field == "methods[0].params.percdamp" and "finite" in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(grid_text(untrained_model, methods='["magnitude", "wanda", "magnitude"]'))
    assert info.value.field == "methods[2]" and "listed twice" in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(grid_text(untrained_model, '[evaluation.tasks]\nnames = ["synthetic_add", "synthetic_add"]'))
    assert info.value.field == "evaluation.tasks.names[1]" and "listed twice" in str(info.value)


@pytest.mark.parametrize("extra,methods,why", [
    ('dense_baseline = false\n[[exclude]]\nmethod = "magnitude"', '["magnitude"]', "[[exclude]]"),
    ("dense_baseline = false", '["sparsegpt"]', "no method in `methods` supports a pattern"),
    ('kernels = ["torch-semi-structured"]', '["magnitude"]', "runs on a target in `hardware`"),
])
def test_a_grid_of_no_jobs_is_refused_with_the_reason(tmp_path, untrained_model, extra, methods, why):
    """Defect 11: a grid that expands to nothing exited 0 saying "0 jobs"."""
    patterns = '[{kind = "channels", target = 0.5}]' if "sparsegpt" in methods else '["50%"]'
    grid = write_grid(tmp_path, grid_text(untrained_model, extra, methods=methods, patterns=patterns))
    for flags in ((), ("--dry-run",)):
        line = one_line_exit_2(bench("submit", grid, "--db", tmp_path / "b.duckdb", *flags))
        assert "the grid expands to no jobs" in line and why in line, line
    assert not (tmp_path / "b.duckdb").exists()


# ---- 14: SIGTERM during start-up --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_sigterm_during_start_up_exits_143_with_a_line(tmp_path, untrained_model, delay):
    """Defect 14: SIGTERM while Ray started exited 15 with no message (ray.init's own handler). Sent as the
    lock is taken, and inside ray.init."""
    db = tmp_path / "b.duckdb"
    grid = write_grid(tmp_path, small_grid(untrained_model))
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Store(db).lock_path.exists():  # the lock is taken right before Ray starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out, err)
    assert "SIGTERM received before any stage was dispatched: nothing was run" in err
    assert "Traceback" not in err
    assert not Store(db).lock_path.exists()
    assert not db.exists() or Store(db).query("SELECT count(*) AS n FROM runs").n[0] == 0


def test_sigterm_before_the_run_exits_143_with_a_line(tmp_path, untrained_model, monkeypatch, capsys):
    """The same while the grid is read (before the store or Ray): one line, 143, the handler restored."""
    import bench.grid
    from bench import cli

    grid = write_grid(tmp_path, small_grid(untrained_model))
    real_load = bench.grid.load_grid

    def load_then_terminate(path):
        spec = real_load(path)
        os.kill(os.getpid(), signal.SIGTERM)
        return spec

    monkeypatch.setattr(bench.grid, "load_grid", load_then_terminate)
    previous = signal.getsignal(signal.SIGTERM)
    assert cli.main(["submit", str(grid), "--db", str(tmp_path / "b.duckdb")]) == 143
    assert signal.getsignal(signal.SIGTERM) == previous
    assert "SIGTERM received before any stage was dispatched" in capsys.readouterr().err
    assert not (tmp_path / "b.duckdb").exists()


# ---- the docs say what a grid can run ----------------------------------------------------------------

def test_grid_docs_say_a_grid_is_code_to_trust():
    text = " ".join((Path(__file__).parent.parent / "docs" / "grid-format.md").read_text().split())
    assert "runs that folder's code" in text and "trusted like a script" in text


# ---- 4 and 12: the local Ray instance ----------------------------------------------------------------

@pytest.mark.slow
def test_a_local_ray_instance_listens_on_loopback_only():
    """Defect 4: Ray's GCS and raylet listened on every interface, and Ray has no authentication."""
    import psutil
    import ray

    from bench.run.runner import init_ray

    assert init_ray(None)
    try:
        @ray.remote
        def pid():
            return os.getpid()

        ray.get([pid.remote() for _ in range(2)])  # workers are up
        from bench.run.raylocal import dead_session_processes

        assert not [p for p in dead_session_processes() if p[1] in str(ray._private.worker.global_worker.node.get_session_dir_path())]
        listening = []
        for proc in psutil.Process().children(recursive=True) + [psutil.Process()]:
            try:
                listening += [(proc.name(), c.laddr.ip) for c in proc.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                pass
    finally:
        ray.shutdown()
    names = {name for name, _ in listening}
    assert {"gcs_server", "raylet"} <= names and len(listening) >= 4, listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip in listening), listening
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER  # restored: joining a cluster later is unaffected


@pytest.mark.slow
def test_after_kill_9_the_next_submit_closes_the_run_and_stops_the_orphans(tmp_path, tiny_model):
    """Defect 12: after kill -9 of `bench submit` its run stayed `running` and two Ray agents lived on."""
    from bench.run.raylocal import dead_session_processes

    db, art = tmp_path / "b.duckdb", tmp_path / "art"
    grid = write_grid(tmp_path, small_grid(tiny_model, patterns='["50%", "70%", "2:4"]'))
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db), "--artifacts",
                             str(art), "--no-progress", "--max-in-flight", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:  # once the run is recorded and some stage is done
        assert proc.poll() is None and time.monotonic() < deadline
        try:
            if Store(db, lock_timeout_s=1).query("SELECT count(*) AS n FROM stages WHERE status = 'done'").n[0] >= 1:
                break
        except Exception:  # not made yet, or the writer holds it this instant
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert Store(db).query("SELECT status FROM runs").status.tolist() == ["running"]
    time.sleep(3)  # the head processes die with the driver; the agents do not
    assert dead_session_processes(), "Ray left no agent behind: this test no longer shows the defect"
    again = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was still marked running, but its bench submit is gone" in again.stderr
    assert "left behind by a killed run's Ray instance" in again.stderr
    assert not dead_session_processes()
    runs = Store(db).query("SELECT status FROM runs ORDER BY started_at").status.tolist()
    assert runs == ["abandoned", "done"]
    assert set(Store(db).query("SELECT status FROM jobs").status) == {"done"}
    assert not Store(db).lock_path.exists()
