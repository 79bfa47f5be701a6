"""Promises kept while a grid runs: typed stage failures, signals during start-up, the local Ray instance
(loopback only, no leftovers after kill -9). The ones that start Ray are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.grid import expand, parse_grid
from bench.store import Store
from conftest import bench, grid_text, small_grid, write_grid


def test_a_reused_artifact_without_its_result_is_pruned_again(tmp_path, untrained_model):
    """Defect 7's sibling in the prune stage: an artifact found on disk (another store made it) is reused
    from its manifest's `result`; a manifest without one made the stage fail with a KeyError."""
    from bench.run.execute import run_stage

    job = next(j for j in expand(parse_grid(grid_text(untrained_model) + "[latency]\nenabled = false\n"))
               if j.method == "magnitude")
    stage = {"kind": "prune", "key": job.prune_key, "job": job.to_dict(), "artifacts": str(tmp_path)}
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
    base = {"key": job.prune_key, "job": job.to_dict(), "artifacts": str(tmp_path / "art")}
    missing = run_stage({**base, "kind": "evaluate", "key": job.eval_key})  # no artifact was ever made
    assert missing["status"] == "failed" and missing["failure"] == "artifact"
    late = run_stage({**base, "kind": "prune", "timeout_s": 1e-6})
    assert late["status"] == "failed" and late["failure"] == "timeout", late.get("error")
    broken = run_stage({**base, "kind": "prune", "job": {**job.to_dict(), "method": "no-such-method"}})
    assert broken["status"] == "failed" and broken["failure"] == "error"
    assert {missing["failure"], late["failure"], broken["failure"]} <= set(FAILURES)


# ---- 14: SIGTERM during start-up --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.local_ray
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


SIGTERM_INSIDE_RAY_INIT = """
import os, signal, sys, time
import ray, ray._private.worker as ray_worker
from bench.run.cluster import init_ray

received, seen = [], []
def flag(signum, frame):
    received.append(signum)
signal.signal(signal.SIGTERM, flag)
real_connect = ray_worker.connect
def connect_then_sigterm(*args, **kwargs):  # inside ray.init, once the driver's core worker exists
    out = real_connect(*args, **kwargs)
    seen.append(signal.getsignal(signal.SIGTERM) is flag)
    os.kill(os.getpid(), signal.SIGTERM)
    return out
ray_worker.connect = connect_then_sigterm
init_ray(None)
time.sleep(4)  # Abseil's failure-signal handler aborts 3 s after a signal it passed on
print("received", received, "ours inside ray.init", seen, "ours after", signal.getsignal(signal.SIGTERM) is flag, flush=True)
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.local_ray
def test_a_sigterm_inside_ray_init_reaches_the_callers_handler_and_nothing_else():
    """CI failure: a SIGTERM during ray.init met Ray's own handler, whose SystemExit was printed and dropped
    inside a callback, and the run went to its end with exit 0; sent later in ray.init it met Abseil's
    failure-signal handler, which dumped a stack and aborted the process 3 s later (exit -6). Sent at a fixed
    point of ray.init here, where the timed test above only hits it by chance."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", SIGTERM_INSIDE_RAY_INIT], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "received [15] ours inside ray.init [True] ours after True" in proc.stdout, proc.stderr
    assert "SIGTERM received at time" not in proc.stderr and "SystemExit" not in proc.stderr, proc.stderr


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


# ---- 4 and 12: the local Ray instance ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.local_ray
def test_a_local_ray_instance_listens_on_loopback_only():
    """Defect 4: Ray's GCS and raylet listened on every interface, and Ray has no authentication."""
    import psutil
    import ray

    from bench.run.cluster import init_ray

    assert init_ray(None)
    try:
        @ray.remote
        def pid():
            return os.getpid()

        ray.get([pid.remote() for _ in range(2)])  # workers are up
        from bench.run.cluster import dead_session_processes

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
@pytest.mark.local_ray
def test_after_kill_9_the_next_submit_closes_the_run_and_stops_the_orphans(tmp_path, tiny_model):
    """Defect 12: after kill -9 of `bench submit` its run stayed `running` and two Ray agents lived on."""
    from bench.run.cluster import dead_session_processes

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
