"""The stage graph on a real local Ray instance: pruned models made once and shared, resubmits that run only
what is missing, artifacts that went bad rebuilt, one writer per store, stage timeouts.

Every `bench submit` here is the real command in a subprocess, on the briefly trained tiny Llama.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.store import Store
from conftest import FAST_LATENCY, FAST_PPL, write_grid

pytestmark = pytest.mark.slow


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def grid_body(model, kernels) -> str:
    return (f'name = "stages"\nmethods = ["magnitude"]\npatterns = ["50%", "2:4"]\nkernels = {json.dumps(kernels)}\n'
            f'models = [{{ path = "{model}", name = "tiny" }}]\n' + FAST_PPL + FAST_LATENCY)


def stages(db):
    return Store(db).query("SELECT stage_key, kind, status, attempts, prune_key, result FROM stages")


def test_a_pruned_model_is_made_once_and_shared_then_only_missing_stages_run(tiny_model, tmp_path):
    db, art = tmp_path / "b.duckdb", tmp_path / "art"
    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense", "native"]))
    first = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert first.returncode == 0, first.stdout + first.stderr
    # 3 pruned models (dense, 50%, 2:4) x 2 kernels = 6 jobs, from 3 prune + 3 evaluate + 6 latency stages
    assert "6 jobs · 0 already done · 6 done" in first.stdout and "stages: 12 ran · 0 reused" in first.stdout
    st = stages(db)
    assert st.groupby("kind").size().to_dict() == {"evaluate": 3, "latency": 6, "prune": 3}
    assert set(st.status) == {"done"} and set(st.attempts) == {1}
    assert sorted(os.listdir(art)) == sorted([*st[st.kind == "prune"].stage_key, "references"])
    assert len(os.listdir(art / "references")) == 1  # the dense side of KL and flips: once per model and protocol
    jobs = Store(db).query("SELECT job_key, kernel, prune_key, eval_key, latency_key, artifact FROM jobs")
    assert jobs.prune_key.nunique() == 3 and jobs.latency_key.nunique() == 6
    board = Store(db).leaderboard()
    for _, same in board.groupby("pattern"):  # one evaluation per pruned model, whatever the kernel
        assert same.perplexity.nunique() == 1 and same.measured_sparsity.nunique() == 1 and len(same) == 2
    assert set(board.kernel_status) == {"dense", "mask only", "accelerated"}

    again = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert again.returncode == 0 and "6 already done · 0 done" in again.stdout

    # A third kernel: only its latency stages run, on the stored artifacts.
    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense", "native", "native-dense"]))
    more = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert more.returncode == 0, more.stdout + more.stderr
    assert "9 jobs · 6 already done · 3 done" in more.stdout and "stages: 3 ran · 6 reused" in more.stdout
    assert len(stages(db)) == 15 and len(Store(db).leaderboard()) == 9
    # its jobs say what was reused, and their duration is this run's: the latency stage alone
    new = Store(db).query("SELECT j.duration_s, j.timings, s.duration_s AS latency_s FROM jobs j "
                          "JOIN stages s ON s.stage_key = j.latency_key WHERE j.kernel = 'native-dense'")
    assert len(new) == 3 and (new["duration_s"] == new["latency_s"]).all()
    assert all(json.loads(t)["reused_stages"] == ["evaluate", "prune"] for t in new["timings"])

    # A new store on the same artifact root (a second user of a shared folder): pruning is not repeated.
    other = tmp_path / "other.duckdb"
    shared = bench("submit", grid, "--db", other, "--artifacts", art, "--no-progress")
    assert shared.returncode == 0, shared.stdout + shared.stderr
    prunes = stages(other).query("kind == 'prune'")
    assert all(json.loads(r)["artifact"]["reused"] for r in prunes.result)
    ppl = lambda d: Store(d).leaderboard().set_index(["pattern", "kernel"]).perplexity.sort_index()  # noqa: E731
    assert ppl(other).equals(ppl(db))
    kl = Store(other).query("SELECT value, details FROM metrics WHERE name = 'kl_vs_dense'")
    assert all(json.loads(d)["dense_reference"]["reused"] for d in kl.details)  # and neither is the reference
    assert kl.value.min() == 0 and kl.value.max() > 0  # the dense job's own KL is exactly 0


def test_a_damaged_artifact_is_detected_and_rebuilt(tiny_model, tmp_path):
    db, art = tmp_path / "b.duckdb", tmp_path / "art"
    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense"]))
    assert bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress").returncode == 0
    by_pattern = Store(db).query("SELECT pattern, prune_key FROM jobs").set_index("pattern").prune_key
    truncated, altered = art / by_pattern["50%"] / "masks.safetensors", art / by_pattern["2:4"] / "masks.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum, verified where it is read, can tell
    altered.write_bytes(bytes(data))

    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense", "native"]))
    proc = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the truncation is seen while planning, the alteration when the latency stage reads the artifact
    assert f"artifact {by_pattern['50%']}: masks.safetensors has 1000 bytes" in proc.stderr
    assert "does not match its SHA-256" in proc.stdout + proc.stderr
    from bench.model.artifacts import Artifacts

    assert all(Artifacts(art).check(k, deep=True) is None for k in by_pattern)
    board = Store(db).leaderboard()
    assert len(board) == 6 and set(board.kernel) == {"torch-dense", "native"}
    for _, same in board.groupby("pattern"):
        assert same.perplexity.nunique() == 1  # the rebuilt artifact is the same pruned model


def test_gc_removes_unreferenced_artifacts(tiny_model, tmp_path):
    db, art = tmp_path / "b.duckdb", tmp_path / "art"
    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense"]).replace('["50%", "2:4"]', '["2:4"]'))
    assert bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress").returncode == 0
    (art / "0123456789abcdef01234567").mkdir()  # what a deleted store left behind
    (art / "0123456789abcdef01234567" / "manifest.json").write_text("{}")
    (art / "my-notes").mkdir()  # not ours: gc never touches it
    dry = bench("gc", "--db", db, "--artifacts", art, "--dry-run")
    assert dry.returncode == 0 and "would remove 1 artifacts" in dry.stdout and (art / "0123456789abcdef01234567").exists()
    real = bench("gc", "--db", db, "--artifacts", art)
    assert real.returncode == 0 and "removed 1 artifacts" in real.stdout and "kept 2 referenced" in real.stdout
    assert "left alone: 1 entries" in real.stdout and "my-notes" in real.stdout
    (art / "my-notes").rmdir()
    assert sorted(os.listdir(art)) == sorted([*stages(db).query("kind == 'prune'").stage_key, "references"])
    wrong = bench("gc", "--db", tmp_path / "typo.duckdb", "--artifacts", art)  # would see nothing referenced
    assert wrong.returncode == 2 and "--db: no results store at" in wrong.stderr and len(os.listdir(art)) == 3
    assert not (tmp_path / "typo.duckdb").exists() and not (tmp_path / "typo.duckdb.lock").exists()


def test_one_writer_per_store_and_stage_timeouts(tiny_model, tmp_path):
    """While one submit writes a store, a second refuses at once and a third with --wait queues behind it.
    The third adds lm-eval tasks under `[runner] stage_timeout_s = 1`: its evaluation stages run past it
    and are failed with that reason, not retried, while the prune stages it shares with the first run are
    reused."""
    db, art = tmp_path / "b.duckdb", tmp_path / "art"
    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense", "native"]).replace('["50%", "2:4"]',
                                                                                         '["50%", "70%", "2:4"]'))
    slow = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense"]).replace('["50%", "2:4"]', '["50%", "70%", "2:4"]')
                      + """
[evaluation.tasks]
names = ["synthetic_add", "synthetic_recall", "synthetic_copy"]
limit = 300
[runner]
stage_timeout_s = 1
""", name="slow.toml")

    first = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert first.returncode == 0, first.stdout + first.stderr
    with Store(db).submit_lock(command="held by the test"):  # as a running `bench submit` holds it
        second = bench("submit", slow, "--db", db, "--artifacts", art, "--no-progress")
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert f"is being written by another bench process (pid {os.getpid()} on" in second.stderr
        assert "held by the test" in second.stderr and "pass --wait to queue behind it" in second.stderr
        log = tmp_path / "waiting.log"
        with open(log, "w") as errfile:
            waiting = subprocess.Popen([sys.executable, "-m", "bench.cli", "submit", str(slow), "--db", str(db),
                                        "--artifacts", str(art), "--no-progress", "--wait"],
                                       stdout=subprocess.PIPE, stderr=errfile, text=True)
        deadline = time.monotonic() + 120
        while "waiting for the other bench process" not in log.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(1)
        assert waiting.poll() is None  # still queued while the lock is held
    out, _ = waiting.communicate(timeout=600)
    assert waiting.returncode == 1, out + log.read_text()
    failed = Store(db).query("SELECT kind, attempts, error FROM stages WHERE status = 'failed'")
    # lm-eval alone (task index, 900 documents) takes longer than 1 s: in practice all 4 time out
    assert set(failed.kind) == {"evaluate"} and len(failed) >= 1 and set(failed.attempts) == {1}  # not retried
    assert all("ran past its timeout of 1 s" in e for e in failed.error)
    assert f"8 reused from the store · {len(failed)} failed" in out  # 4 prune + 4 latency shared with the first
    jobs = Store(db).query("SELECT status, error FROM jobs WHERE status != 'done'")
    assert len(jobs) == len(failed) and all(e.startswith("evaluate stage: StageTimeout") for e in jobs.error)


def test_sigterm_cancels_records_and_a_resubmit_finishes(tiny_model, tmp_path):
    db, art = tmp_path / "b.duckdb", tmp_path / "art"
    grid = write_grid(tmp_path, grid_body(tiny_model, ["torch-dense", "native"]).replace(
        '["magnitude"]', '["magnitude", "random"]').replace('["50%", "2:4"]', '["50%", "70%", "2:4"]'))
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db), "--artifacts",
                             str(art), "--no-progress", "--max-in-flight", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:  # interrupt once some jobs are done, well before the end
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        try:
            if Store(db, lock_timeout_s=1).query("SELECT count(*) AS n FROM jobs WHERE status = 'done'").n[0] >= 2:
                break
        except Exception:  # not created yet, or the writer holds it this instant
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "SIGTERM received" in err
    jobs = Store(db).query("SELECT status, count(*) AS n FROM jobs GROUP BY status").set_index("status").n.to_dict()
    assert set(jobs) == {"done", "cancelled"} and sum(jobs.values()) == 14, jobs
    assert set(stages(db).status) <= {"done", "cancelled"}
    run = Store(db).query("SELECT status, jobs_cancelled FROM runs").iloc[0]
    assert run.status == "cancelled" and run.jobs_cancelled == jobs["cancelled"]
    done_before = jobs["done"]

    again = bench("submit", grid, "--db", db, "--artifacts", art, "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"14 jobs · {done_before} already done · {14 - done_before} done" in again.stdout
    assert "reused from the store" in again.stdout and "0 reused" not in again.stdout
    store = Store(db)
    assert store.query("SELECT count(*) AS n, count(DISTINCT job_key) AS k FROM jobs WHERE status = 'done'").iloc[0].tolist() == [14, 14]
    assert len(store.leaderboard()) == 14
    dupes = store.query("SELECT job_key, name, count(*) AS n FROM metrics GROUP BY ALL HAVING n > 1")
    assert dupes.empty


def test_each_stage_reports_its_own_peak_memory_not_the_workers_lifetime_peak():
    from bench.run.execute import _peak_rss_bytes, _reset_peak_rss, run_stage

    big = bytearray(400 * 2**20)
    big[::4096] = b"x" * len(big[::4096])  # touched, so resident
    lifetime = _peak_rss_bytes()
    del big
    assert _reset_peak_rss()  # Linux: VmHWM starts again from the current RSS
    assert _peak_rss_bytes() < lifetime - 300 * 2**20
    result = run_stage({"kind": "no such stage", "key": "k", "job": {}, "artifacts": "."})  # fails at once
    assert result["status"] == "failed" and result["peak_rss_scope"] == "stage"
    assert result["peak_rss_bytes"] < lifetime - 300 * 2**20  # a later stage in this worker does not inherit it
