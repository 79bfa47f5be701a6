"""`dense`: the unpruned model, the baseline every relative figure is computed against."""

import torch

from bench.method import LayerPruner, Method


class _Keep(LayerPruner):
    def prune(self, weight, pattern):
        return weight, torch.ones_like(weight, dtype=torch.bool)


class Dense(Method):
    name = "dense"
    version = "1"
    patterns = ("dense",)
    description = "No pruning: the baseline."

    def pruner(self, layer_name, weight):
        return _Keep()
