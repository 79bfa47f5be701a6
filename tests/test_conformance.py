"""Every registered method, built-in or third-party, passes the conformance suite."""

import pytest

from bench.prune.conformance import ARCHITECTURES, check_method
from bench.registry import method_registry


@pytest.mark.parametrize("name", method_registry().names())
def test_method_conforms(name):
    checks = check_method(name)
    assert {c.architecture for c in checks} == set(ARCHITECTURES)
    assert {c.check for c in checks} == {"compliance", "untouched", "deterministic", "released"}
    failed = [c for c in checks if not c.ok]
    assert not failed, failed


def test_the_suite_catches_a_method_that_keeps_state():
    from bench.method import Method, ScorePruner

    kept = []

    class Hoarder(Method):
        name = "hoarder"

        def pruner(self, layer_name, weight):
            p = ScorePruner(lambda w: w.abs())
            kept.append(p)  # a leak: per-layer state outlives the pruning
            return p

    method_registry().register("hoarder", Hoarder)
    try:
        checks = check_method("hoarder", ["llama"])
    finally:
        method_registry().unregister("hoarder")
    assert any(c.check == "released" and not c.ok for c in checks)
    assert all(c.ok for c in checks if c.check != "released")


def test_the_suite_catches_a_nondeterministic_method():
    import torch

    from bench.method import Method, ScorePruner

    class Dice(Method):
        name = "dice"

        def pruner(self, layer_name, weight):
            return ScorePruner(lambda w: torch.rand(w.shape))  # ignores the seed

    method_registry().register("dice", Dice)
    try:
        checks = check_method("dice", ["gpt2"])
    finally:
        method_registry().unregister("dice")
    assert any(c.check == "deterministic" and not c.ok for c in checks)
