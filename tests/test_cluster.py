"""`bench submit --address` on a real multi-node Ray cluster made on this machine with `ray start`:

- head node: 1 CPU and the custom resource `alpha`;
- second node: 1 CPU and `beta`;
- third node: 1 CPU and `oom`, started with Ray's memory monitor set to kill above 1% of the machine's
  memory, so that any stage placed there is killed for memory, as on a node that is really out of it.

Stages pinned with `cpu+alpha` / `cpu+beta` must run on those nodes; a target no node has is reported
before anything runs; a stage whose model cannot load is failed while the others finish; a worker killed
mid-stage is retried and the stage completes; a stage killed by the memory monitor is recorded as out of
memory. The cluster is stopped with `ray stop --force` at the end (which stops every Ray on the machine).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.store import Store
from conftest import FAST_LATENCY, FAST_PPL, write_grid

pytestmark = [pytest.mark.slow, pytest.mark.local_ray]  # its own cluster

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    # Ray 2.60 clusters started by `ray start` ask for token authentication; every process of this test
    # (nodes and drivers) uses the token that the head writes to ~/.ray/auth_token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
    head = subprocess.run([RAY, "start", "--head", "--port", str(_free_port()), "--include-dashboard", "false",
                           "--resources", '{"alpha": 1}', *common], capture_output=True, text=True, env=env, timeout=180)
    assert head.returncode == 0, head.stdout + head.stderr
    address = re.search(r"ray start --address='([^']+)'", head.stdout + head.stderr).group(1)
    try:
        for resources, extra in (('{"beta": 1}', {}),
                                 ('{"oom": 1}', {"RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"})):
            node = subprocess.run([RAY, "start", "--address", address, "--resources", resources, *common],
                                  capture_output=True, text=True, env={**env, **extra}, timeout=180)
            assert node.returncode == 0, node.stdout + node.stderr
        nodes = _nodes(address, env)
        assert len(nodes) == 3, nodes
        yield address, env, nodes
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _nodes(address: str, env: dict) -> dict[str, str]:
    """{custom resource: node id} for the alive nodes of the cluster."""
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))" % address)
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        nodes = json.loads(out.stdout.strip().splitlines()[-1])
        if len(nodes) == 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    return {r: node_id for node_id, res in nodes for r in ("alpha", "beta", "oom") if r in res}


def submit(address, env, grid, db, *extra, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db), "--address", address,
                           "--artifacts", str(Path(db).parent / "art"), "--no-progress", *extra],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_pinned_stages_land_on_their_nodes_and_a_failing_stage_spares_the_others(cluster, tiny_model, tmp_path):
    address, env, nodes = cluster
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    grid = write_grid(tmp_path, f"""
        methods = ["magnitude"]
        patterns = ["2:4"]
        hardware = ["cpu+alpha", "cpu+beta"]
        models = [{{ path = "{tiny_model}", name = "tiny" }}, {{ path = "{broken}", name = "broken" }}]
        """ + FAST_PPL + FAST_LATENCY)
    db = tmp_path / "b.duckdb"
    proc = submit(address, env, grid, db)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "8 jobs · 0 already done · 4 done · 4 failed" in proc.stdout
    assert proc.stdout.count("failed: broken ·") == 4 and "cannot load model 'broken'" in proc.stdout

    st = Store(db).query("SELECT kind, hardware, status, node_id, prune_key FROM stages")
    done = st[st.status == "done"]
    assert len(done) == 2 + 2 + 4  # tiny: 2 prune, 2 evaluate, 2 x 2 latency
    for row in done.itertuples():
        # latency on its own target's node; prune and evaluate on the first target of the grid (alpha)
        want = row.hardware.split("+")[1] if row.kind == "latency" else "alpha"
        assert row.node_id == nodes[want], (row, nodes)
    assert set(st[st.kind == "latency"].hardware) == {"cpu+alpha", "cpu+beta"}
    failed = st[st.status == "failed"]
    assert set(failed.kind) == {"prune", "evaluate", "latency"}  # the prune failed; what needed it was not run
    assert Store(db).query("SELECT count(*) AS n FROM jobs WHERE model = 'tiny' AND status = 'done'").n[0] == 4


def test_a_target_no_node_offers_is_reported_before_anything_runs(cluster, tiny_model, tmp_path):
    address, env, _ = cluster
    grid = write_grid(tmp_path, f'hardware = ["cpu+gamma"]\nmethods = ["dense"]\nmodels = ["{tiny_model}"]\n'
                      + FAST_PPL + FAST_LATENCY)
    db = tmp_path / "b.duckdb"
    started = time.monotonic()
    proc = submit(address, env, grid, db, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no node of the Ray cluster can run hardware 'cpu+gamma'" in proc.stderr
    assert "alpha=1" in proc.stderr and "beta=1" in proc.stderr and "oom=1" in proc.stderr  # what the nodes have
    assert time.monotonic() - started < 120  # never left pending
    st = Store(db).query("SELECT status, node_id FROM stages")
    assert set(st.status) == {"failed"} and st.node_id.isna().all()  # nothing was dispatched


def test_a_stage_killed_by_the_memory_monitor_is_recorded_as_out_of_memory(cluster, tiny_model, tmp_path):
    address, env, _ = cluster
    grid = write_grid(tmp_path, f"""
        hardware = ["cpu+oom"]
        methods = ["dense"]
        models = ["{tiny_model}"]
        [latency]
        enabled = false
        [runner]
        max_retries = 1
        """ + FAST_PPL)
    db = tmp_path / "b.duckdb"
    proc = submit(address, env, grid, db, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    job = Store(db).query("SELECT status, error FROM jobs").iloc[0]
    assert job.status == "failed"
    assert job.error.startswith("prune stage: out of memory: Ray's memory monitor killed the worker"), job.error


def test_a_worker_killed_mid_stage_is_retried_and_the_stage_completes(cluster, tiny_model, tmp_path):
    address, env, nodes = cluster
    grid = write_grid(tmp_path, f"""
        hardware = ["cpu+beta"]
        methods = ["dense"]
        models = ["{tiny_model}"]
        [evaluation.tasks]
        names = ["synthetic_add", "synthetic_agree", "synthetic_recall"]
        limit = 200
        [latency]
        enabled = false
        """ + FAST_PPL)
    db = tmp_path / "b.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db), "--address",
                             address, "--artifacts", str(tmp_path / "art"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        found = subprocess.run(["pgrep", "-f", "ray::bench:evaluate"], capture_output=True, text=True).stdout.split()
        if found:
            time.sleep(1.0)  # well inside the stage: lm-eval is scoring 600 documents
            killed = int(found[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    stage = Store(db).query("SELECT status, worker, node_id, result FROM stages WHERE kind = 'evaluate'").iloc[0]
    assert stage.status == "done" and stage.node_id == nodes["beta"]
    assert json.loads(stage.worker)["pid"] != killed  # a new worker ran it to the end
    metrics = {m["name"] for m in json.loads(stage.result)["metrics"]}
    assert {"perplexity", "synthetic_add/acc", "synthetic_agree/acc", "synthetic_recall/acc"} <= metrics
    assert Store(db).query("SELECT status FROM jobs").status.tolist() == ["done"]
