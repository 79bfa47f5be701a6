"""Shared fixtures: small real models saved to disk, grid files that point at them, and one Ray instance
for the suite's `bench submit` runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The zoo's tiny Llama, briefly trained (a few seconds) so that pruning changes its perplexity."""
    from bench.model import zoo

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    zoo.build("tiny-llama", out, steps=30, seed=0, log=None, score=False)
    return out


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    from bench.model import zoo

    out = tmp_path_factory.mktemp("models") / "untrained"
    zoo.build("tiny-llama", out, steps=0, seed=1, log=None, score=False)
    return out


FAST_LATENCY = """
[latency]
prefill_length = 32
prompt_length = 4
decode_tokens = 4
decode_batch = [1]
warmup = 1
repeats = 3
max_repeats = 5
max_seconds = 1
"""

FAST_PPL = """
[evaluation.perplexity]
dataset = "builtin:synthetic"
split = "test"
context_length = 64
stride = 64
max_tokens = 1024
"""


def write_grid(folder: Path, body: str, name: str = "grid.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


DASHBOARD_GRID = """
name = "dashboard"
methods = ["dense", "magnitude", "wanda"]
patterns = ["50%", "2:4"]
kernels = ["torch-dense", "native"]
activations = ["none", "teal:0.5"]

[[models]]
name = "tiny"
path = "{model}"

# activation sparsity only on the dense model and on magnitude 50%, on the kernel that skips inputs:
# activation-only and combined rows beside the weight-only ones
[[exclude]]
activations = "teal:0.5"
method = "wanda"

[[exclude]]
activations = "teal:0.5"
pattern = "2:4"

[[exclude]]
activations = "teal:0.5"
kernel = "torch-dense"

[calibration]
dataset = "builtin:synthetic"
samples = 8
seq_len = 64

[evaluation.tasks]
names = ["synthetic_add", "synthetic_recall"]
limit = 20
""" + FAST_PPL + FAST_LATENCY

BROKEN_GRID = """
name = "dashboard-broken"
dense_baseline = false
methods = ["magnitude"]
patterns = ["50%"]

[[models]]
name = "broken"
path = "{model}"
""" + FAST_PPL


@pytest.fixture(scope="session")
def dashboard_store(tiny_model, tmp_path_factory) -> Path:
    """A real store for the dashboard tests, written by `bench submit` on a local Ray instance: one grid of
    3 methods x 2 patterns x 2 kernels on the tiny Llama with lm-eval tasks and per-shape latency, and
    teal:0.5 activation sparsity on the dense model and magnitude 50% on native (12 jobs), then a second run whose model file is corrupt (one failed job)."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("dashboard")
    broken = folder / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    db = folder / "bench.duckdb"
    for name, body, model, code in (("grid.toml", DASHBOARD_GRID, tiny_model, 0),
                                    ("broken.toml", BROKEN_GRID, broken, 1)):
        grid = write_grid(folder, body.format(model=model), name=name)
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db),
                               "--no-progress"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == code, proc.stdout + proc.stderr
    return db


# ---- for the fault tests: a command as a user runs it, and what a refusal must look like ---------------

def bench(*args, timeout=600, **kw):
    import subprocess
    import sys

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


def grid_text(model, extra="", methods='["magnitude"]', patterns='["50%"]') -> str:
    return f'models = [{{ path = "{model}" }}]\nmethods = {methods}\npatterns = {patterns}\n{extra}\n'


# ---- one Ray instance for the whole suite ------------------------------------------------------------------
# Starting a local Ray instance takes about 7 s here and stopping it 2 s, paid by every `bench submit`. The
# suite's runs join one head node instead, through RAY_ADDRESS (which `bench submit` honours as `ray job
# submit` sets it), except tests marked `local_ray`: those test the local instance itself (loopback binding,
# leftovers of kill -9, signals during start-up) or start their own cluster. `ray stop --force` in such a
# test stops the shared head as well; the next test that needs it starts it again.
# SPARSEBENCH_TEST_LOCAL_RAY=1 gives every test its own local instance, as before.

RAY = str(Path(sys.executable).parent / "ray")


class SharedRay:
    def __init__(self) -> None:
        self.address: str | None = None

    def alive(self) -> bool:
        if not self.address:
            return False
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            return False

    def ensure(self) -> str:
        if not self.alive():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")  # `ray start` asks for a token (Ray 2.60)
            proc = subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", str(os.cpu_count() or 1),
                                   "--include-dashboard", "false", "--disable-usage-stats"],
                                  capture_output=True, text=True, env=env, timeout=180)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            found = re.search(r"ray start --address='([^']+)'", proc.stdout + proc.stderr)
            assert found, proc.stdout + proc.stderr
            self.address = found.group(1)
        return self.address

    def stop(self) -> None:
        if self.alive():
            subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def shared_ray_head():
    head = SharedRay()
    yield head
    head.stop()


@pytest.fixture(autouse=True)
def _ray_for_submits(request, monkeypatch):
    """RAY_ADDRESS for the test's `bench submit` runs (and in-process runs): the shared head, started on the
    first test that may start Ray (marked `slow` or using a fixture that runs a grid), or unset."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if os.environ.get("SPARSEBENCH_TEST_LOCAL_RAY") == "1" or request.node.get_closest_marker("local_ray"):
        return
    if not (request.node.get_closest_marker("slow") or "dashboard_store" in request.fixturenames):
        return
    head = request.getfixturevalue("shared_ray_head")
    monkeypatch.setenv("RAY_ADDRESS", head.ensure())
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the head wrote its token to ~/.ray/auth_token
