"""Shared fixtures: small real models saved to disk, and grid files that point at them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The zoo's tiny Llama, briefly trained (a few seconds) so that pruning changes its perplexity."""
    from bench import zoo

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    zoo.build("tiny-llama", out, steps=30, seed=0, log=None, score=False)
    return out


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    from bench import zoo

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
