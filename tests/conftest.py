"""Shared fixtures: small real models saved to disk, and grid files that point at them."""

from __future__ import annotations

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

[[models]]
name = "tiny"
path = "{model}"

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
    3 methods x 2 patterns x 2 kernels on the tiny Llama with lm-eval tasks and per-shape latency (10 jobs),
    then a second run whose model file is corrupt (one failed job)."""
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
