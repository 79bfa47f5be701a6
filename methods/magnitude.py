"""`magnitude`: keep the weights of largest absolute value (Han et al., 2015; the usual LLM baseline)."""

from bench.method import Method, ScorePruner


class Magnitude(Method):
    name = "magnitude"
    version = "1"
    patterns = ("unstructured", "nm", "block", "channels")
    description = "Score |W|; the pattern keeps the largest scores."

    def pruner(self, layer_name, weight):
        return ScorePruner(lambda w: w.abs())
