"""The DuckDB store: schema versioning, round trip, the shared leaderboard view, locking."""

import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from bench.errors import BenchError
from bench.grid import expand, parse_grid
from bench.store import SCHEMA_VERSION, Store


@pytest.fixture()
def jobs(untrained_model):
    body = f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\npatterns = ["50%", "2:4"]\n'
    return parse_grid(body), expand(parse_grid(body))


def run_row(spec, run_id="r1"):
    return {"run_id": run_id, "grid_name": spec.name, "grid_file": spec.source, "grid_text": spec.text,
            "command": "bench submit grid.toml", "git": {"commit": "abc", "dirty": False},
            "packages": {"torch": "2.13.0"}, "hardware": {"cpu_model": "test"}, "ray_address": "local"}


def done(ppl, sparsity, tps):
    metric = lambda name, value, unit, hib, stage: {"name": name, "value": value, "unit": unit, "higher_is_better": hib,
                                                    "stderr": None, "stage": stage, "details": {"x": 1}}
    return {"status": "done", "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:05+00:00",
            "duration_s": 5.0, "timings": {"prune_s": 1.0}, "worker": {"host": "w"},
            "kernel": {"backend": "torch-dense", "status": "mask only" if sparsity else "dense"},
            "metrics": [metric("perplexity", ppl, "ppl", False, "perplexity"),
                        metric("measured_sparsity", sparsity, "fraction", None, "prune"),
                        metric("decode_tok_s_b1", tps, "tokens/s", True, "latency")],
            "layers": [{"layer": "model.layers.0.mlp.up_proj", "block": 0, "out_features": 4, "in_features": 8,
                        "numel": 32, "zeros": int(32 * sparsity), "target_sparsity": sparsity, "measured_sparsity": sparsity}]}


def test_round_trip_and_leaderboard(tmp_path, jobs):
    spec, js = jobs
    store = Store(tmp_path / "b.duckdb")
    store.begin_run(run_row(spec), js, skipped=0)
    assert set(store.statuses([j.key for j in js]).values()) == {"queued"}
    dense, mag50, mag24 = js
    store.record_result(dense.key, done(4.0, 0.0, 100.0))
    store.record_result(mag50.key, done(5.0, 0.5, 101.0))
    store.record_result(mag24.key, {"status": "failed", "error": "RuntimeError: boom", "traceback": "Traceback ..."})
    store.finish_run("r1", "failed", {"done": 2, "failed": 1})

    board = store.leaderboard()
    assert list(board["method"]) == ["dense", "magnitude"]
    row = board[board.method == "magnitude"].iloc[0]
    assert row["perplexity"] == 5.0 and row["measured_sparsity"] == 0.5 and row["kernel_status"] == "mask only"
    assert row["perplexity_change_vs_dense"] == pytest.approx(0.25)
    failed = store.query("SELECT status, error, traceback FROM jobs WHERE job_key = ?", [mag24.key]).iloc[0]
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: boom")
    run = store.query("SELECT * FROM runs").iloc[0]
    assert run["grid_text"] == spec.text and run["jobs_done"] == 2 and run["jobs_failed"] == 1
    assert store.query("SELECT count(*) AS n FROM layers")["n"][0] == 2


def test_dense_reference_follows_the_perplexity_protocol(tmp_path, untrained_model):
    """Two grids on one model with different perplexity protocols: each pruned row is compared with the
    dense row measured the same way, and no row is duplicated by the second dense job."""
    store = Store(tmp_path / "b.duckdb")
    for run_id, context in (("r1", 64), ("r2", 128)):
        body = (f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\npatterns = ["50%"]\n'
                f'[evaluation.perplexity]\ncontext_length = {context}\nstride = {context}\n')
        spec = parse_grid(body)
        dense, mag = expand(spec)
        store.begin_run(run_row(spec, run_id), [dense, mag], skipped=0)
        for job, ppl in ((dense, 4.0 * context / 64), (mag, 5.0 * context / 64)):
            result = done(ppl, 0.0 if job is dense else 0.5, 100.0)
            result["metrics"][0]["details"] = {"dataset": "builtin:synthetic", "split": "test", "context_length": context,
                                               "stride": context, "tokens_total": 1024, "max_tokens": 1024}
            store.record_result(job.key, result)
    board = store.leaderboard()
    assert len(board) == 4 and board["job_key"].is_unique
    assert board.loc[board.method == "magnitude", "perplexity_change_vs_dense"].tolist() == [0.25, 0.25]
    assert sorted(board["protocol"].unique()) == [
        "builtin:synthetic test · context 128 stride 128 · 1024 tokens (at most 1024)",
        "builtin:synthetic test · context 64 stride 64 · 1024 tokens (at most 1024)"]

    # the terminal table: one per protocol, each under its protocol; compact unless --wide
    from conftest import bench

    shown = bench("leaderboard", "--db", tmp_path / "b.duckdb")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("perplexity protocol: ")]
    assert [lines[i].split(" · ")[1] for i in heads] == ["context 128 stride 128", "context 64 stride 64"]
    assert lines[heads[0] + 1].split() == ["model", "method", "pattern", "kernel", "ppl", "ppl", "vs", "dense",
                                           "decode", "b1", "x", "dense", "[95%]", "verdict", "decode", "kernels"]
    assert "+25.0%" in shown.stdout and "kl_vs_dense" not in shown.stdout and max(map(len, lines)) < 140
    wide = bench("leaderboard", "--db", tmp_path / "b.duckdb", "--wide")
    assert wide.returncode == 0 and "decode_tok_s_b1" in wide.stdout and "--wide" not in wide.stdout
    csv = bench("leaderboard", "--db", tmp_path / "b.duckdb", "--format", "csv")
    assert csv.stdout.splitlines()[0].split(",")[7] == "protocol"


def test_a_speed_cell_keeps_three_significant_figures_with_their_trailing_zeros():
    """The real grid's table showed "1.2 [1.17-1.28]" beside "1.28 [1.2-1.29]": the same precision read as
    two different ones."""
    from bench.cli.results import speed_cell

    assert speed_cell(1.2, 1.2, 1.29, "faster") == "1.20 [1.20-1.29] faster"
    assert speed_cell(0.9343, 0.9, 1.333, "no measurable difference") == "0.934 [0.900-1.33] no diff."
    assert speed_cell(1.0, 0.9, 1.1, "dense") == "1x (dense)" and speed_cell(float("nan"), 1, 1, "faster") == ""


def test_the_protocol_label_tells_a_whole_split_from_a_cut_one(tmp_path, untrained_model):
    """Records since schema 8 store the split's length: a split cut by max_tokens is labelled as cut, a
    whole one as whole, and the two are ranked apart (older records keep their schema-7 label)."""
    store = Store(tmp_path / "b.duckdb")
    shown = {}
    for run_id, max_tokens, total in (("cut", 1024, 1024), ("whole", None, 26895), ("old", 1024, 1024)):
        spec = parse_grid(f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\npatterns = ["50%"]\n'
                          + ('seeds = [1]\n' if run_id == "old" else "")  # else the same job keys as "cut"
                          + ("" if max_tokens is None else f'[evaluation.perplexity]\nmax_tokens = {max_tokens}\n'))
        dense, mag = expand(spec)
        store.begin_run(run_row(spec, run_id), [dense, mag], skipped=0)
        for job in (dense, mag):
            result = done(4.0 if job is dense else 5.0, 0.0 if job is dense else 0.5, 100.0)
            result["metrics"][0]["details"] = {**spec.perplexity.to_dict(), "tokens_total": total,
                                               **({} if run_id == "old" else {"split_tokens": 26895})}
            store.record_result(job.key, result)
            shown[(run_id, job.method)] = job.key
    board = store.leaderboard().set_index("job_key")
    label = {run_id: board.loc[shown[(run_id, "magnitude")], "protocol"] for run_id in ("cut", "whole", "old")}
    assert label["cut"] == "builtin:synthetic test · context 128 stride 128 · first 1024 of 26895 tokens (cut by max_tokens)"
    assert label["whole"] == "builtin:synthetic test · context 128 stride 128 · whole split, 26895 tokens"
    assert label["old"] == "builtin:synthetic test · context 128 stride 128 · 1024 tokens (at most 1024)"
    assert board.loc[[shown[(r, "magnitude")] for r in label], "perplexity_change_vs_dense"].tolist() == [0.25] * 3


def test_a_version_1_store_is_migrated(tmp_path):
    from bench.store import LEADERBOARD_SQL, MIGRATIONS

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
    for stmt in MIGRATIONS[1]:
        con.execute(stmt)
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.close()
    with Store(path).write():
        pass
    store = Store(path)
    assert store.query("SELECT max(version) AS v FROM schema_version")["v"][0] == SCHEMA_VERSION == 8
    assert MIGRATIONS[8][-1] == LEADERBOARD_SQL and store.leaderboard().empty
    assert "cut by max_tokens" in MIGRATIONS[8][-1] and "cut by max_tokens" not in MIGRATIONS[7][-1]  # v8
    assert "protocol" in store.leaderboard().columns  # v7
    assert {"activations", "activation_sparsity"} <= set(store.leaderboard().columns)  # v6
    assert {"kl_vs_dense", "task_flips_mean"} <= set(store.leaderboard().columns)  # v4
    assert {"decode_speedup_b1_lo", "decode_speedup_b1_hi", "decode_speedup_b1_verdict", "decode_aa_b1",
            "decode_predicted_speedup_b1", "prefill_speedup_verdict"} <= set(store.leaderboard().columns)  # v5
    assert not any(c.endswith(("_p10", "_p90")) for c in store.leaderboard().columns)  # intervals, not spreads
    assert store.query("SELECT count(*) AS n FROM stages")["n"][0] == 0  # v3: the stage graph
    assert {"prune_key", "eval_key", "latency_key", "artifact"} <= set(store.query("SELECT * FROM jobs").columns)


def test_a_version_2_store_keeps_its_results_when_migrated(tmp_path, jobs):
    """A store written before the stage graph: its done jobs stay done (a resubmit skips them) and its
    leaderboard is unchanged after the migration to the current version."""
    from bench.store import MIGRATIONS

    spec, js = jobs
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
    for v in (1, 2):
        for stmt in MIGRATIONS[v]:
            con.execute(stmt)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [v])
    con.execute("INSERT INTO jobs (job_key, model, method, pattern, hardware, kernel, seed, status) "
                "VALUES (?, 'm', 'dense', 'dense', 'cpu', 'torch-dense', 0, 'done')", [js[0].key])
    con.execute("INSERT INTO metrics VALUES (?, 'perplexity', 4.0, 'ppl', false, NULL, 'perplexity', '{}')", [js[0].key])
    con.close()
    store = Store(path)
    before = store.leaderboard()
    store.begin_run(run_row(spec), js[1:2], skipped=1)  # the first write migrates
    assert store.statuses([js[0].key]) == {js[0].key: "done"}
    after = store.leaderboard()
    assert after[before.columns].equals(before)  # v6 and v7 add columns only: the job's activations, dense
    assert set(after.columns) - set(before.columns) == {"activations", "activation_sparsity", "protocol",
                                                        "prefill_kernel_status", "decode_kernel_status_b1"}
    assert after["protocol"].isna().all()  # a perplexity stored without its protocol
    assert after["activations"].tolist() == ["none"] and after["activation_sparsity"].isna().all()
    assert store.query("SELECT max(version) AS v FROM schema_version")["v"][0] == SCHEMA_VERSION


def test_requeue_replaces_old_results(tmp_path, jobs):
    spec, js = jobs
    store = Store(tmp_path / "b.duckdb")
    store.begin_run(run_row(spec), js[:1], skipped=0)
    store.record_result(js[0].key, done(4.0, 0.0, 100.0))
    store.begin_run(run_row(spec, "r2"), js[:1], skipped=0)  # --force
    assert store.statuses([js[0].key]) == {js[0].key: "queued"}
    assert store.query("SELECT count(*) AS n FROM metrics")["n"][0] == 0
    store.record_result(js[0].key, done(4.5, 0.0, 90.0))
    assert store.leaderboard()["perplexity"].tolist() == [4.5]


def test_schema_version_is_recorded_once(tmp_path, jobs):
    spec, js = jobs
    store = Store(tmp_path / "b.duckdb")
    store.begin_run(run_row(spec), js, 0)
    store.begin_run(run_row(spec, "r2"), js, 0)
    rows = store.query("SELECT version FROM schema_version ORDER BY version")
    assert rows["version"].tolist() == list(range(1, SCHEMA_VERSION + 1))  # each migration once


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "b.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
    con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(BenchError, match="newer than this sparsebench"):
        Store(path).leaderboard()


def test_missing_store_says_what_to_do(tmp_path):
    with pytest.raises(BenchError, match="run `bench submit GRID` first"):
        Store(tmp_path / "none.duckdb").leaderboard()
    assert Store(tmp_path / "none.duckdb").statuses(["x"]) == {}


def test_reader_waits_for_a_writer_in_another_process(tmp_path, jobs):
    spec, js = jobs
    path = tmp_path / "b.duckdb"
    store = Store(path)
    store.begin_run(run_row(spec), js, 0)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time, sys
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep(1.5)
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    statuses = store.statuses([j.key for j in js])  # retries until the writer lets go
    assert time.monotonic() - t0 > 0.5
    assert len(statuses) == 3
    holder.wait()
    with pytest.raises(BenchError, match="cannot open"):
        holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('locked', flush=True); time.sleep(5)"],
                                  stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        try:
            Store(path, lock_timeout_s=0.3).leaderboard()
        finally:
            holder.kill()
            holder.wait()
