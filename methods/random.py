"""`random`: keep a random subset of weights (within the pattern). The floor every method must beat."""

import zlib

import torch

from bench.method import Method, ScorePruner


class Random(Method):
    name = "random"
    version = "1"
    patterns = ("unstructured", "nm", "block", "channels")
    description = "Uniform random scores, seeded per layer: a chance baseline."

    def pruner(self, layer_name, weight):
        # Seeded by the job's seed and the layer's name, so a layer's mask does not depend on pruning order.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(layer_name.encode()))
        return ScorePruner(lambda w: torch.rand(w.shape, generator=gen))
