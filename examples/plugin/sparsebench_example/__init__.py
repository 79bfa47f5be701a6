"""`example-l1-row`: magnitude normalised by each output row's mean magnitude.

A template for third-party methods: a `Method` subclass with a name, a version, a parameter schema and
the patterns it supports, returning a `LayerPruner` per layer. The pattern turns scores into a mask.
"""

from bench.method import Method, Param, ScorePruner


class RowNormMagnitude(Method):
    name = "example-l1-row"
    version = "0.1.0"
    patterns = ("unstructured", "nm", "block", "channels")
    params = {"alpha": Param(float, 1.0, "power applied to the normalised magnitude", min=0.1, max=4.0)}
    description = "|W| / mean |W| of the row, to the power alpha."

    def pruner(self, layer_name, weight):
        alpha = self.alpha

        def score(w):
            a = w.abs()
            return (a / a.mean(dim=1, keepdim=True).clamp_min(1e-12)) ** alpha

        return ScorePruner(score)
