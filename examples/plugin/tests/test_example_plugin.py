"""The plugin's own test: it is found through its entry point and passes the conformance suite."""

import torch

from bench.prune.conformance import check_method
from bench.patterns import Unstructured
from bench.registry import method_registry


def test_found_through_the_entry_point():
    reg = method_registry()
    assert "example-l1-row" in reg.names()
    assert reg.distribution("example-l1-row")[0] == "sparsebench-example-plugin"


def test_scores_are_row_normalised():
    method = method_registry().get("example-l1-row")(alpha=1.0)
    w = torch.tensor([[1.0, 2.0, 3.0, 10.0], [0.1, 0.2, 0.3, 0.4]])
    pruned, mask = method.pruner("x", w).prune(w.clone(), Unstructured(0.5))
    # plain magnitude would empty the second row; row normalisation keeps its largest weights
    assert mask[1].sum() >= 1


def test_conformance_on_two_architectures():
    checks = check_method("example-l1-row", ["llama", "gpt2"])
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
