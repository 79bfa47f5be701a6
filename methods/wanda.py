"""`wanda`: Pruning by Weights and activations (Sun et al., 2023, arXiv:2306.11695).

The score of weight W[i, j] is |W[i, j]| * ||X_j||_2, the weight's magnitude times the L2 norm of input
feature j over all calibration tokens. Weights are compared within each output row (the paper's
comparison group; `comparison = "layer"` compares across the whole layer instead); N:M compares within
each group of M inputs. No weight update.
"""

from bench.method import InputStats, LayerPruner, Method, Param
from bench.patterns import Unstructured


class _Wanda(LayerPruner):
    def __init__(self, comparison: str):
        self.inputs = InputStats()  # ||X_j||^2 per input feature, summed over the calibration tokens
        self.comparison = comparison

    def add_batch(self, inputs):
        self.inputs.add_batch(inputs)

    def scores(self, weight):
        if self.inputs.n == 0:
            raise RuntimeError("wanda saw no calibration inputs for this layer")
        return weight.abs().float() * self.inputs.norm.float().to(weight.device).unsqueeze(0)  # (out, in)

    def prune(self, weight, pattern):
        score = self.scores(weight)
        if isinstance(pattern, Unstructured) and pattern.scope == "layer" and self.comparison == "row":
            pattern = Unstructured(pattern.target, "row")  # per-output comparison; prunes at least as many
        mask = pattern.mask(score)
        return weight * mask, mask


class Wanda(Method):
    name = "wanda"
    version = "1"
    needs_calibration = True
    patterns = ("unstructured", "nm", "block", "channels")
    params = {"comparison": Param(str, "row", "compare scores per output row (paper) or per layer", choices=("row", "layer"))}
    description = "|W| x ||X||_2 per input feature, compared per output row."

    def pruner(self, layer_name, weight):
        return _Wanda(self.comparison)
