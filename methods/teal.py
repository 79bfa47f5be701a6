"""`teal`: training-free activation sparsity by magnitude (TEAL, Liu et al., 2024). Each pruned linear
layer's input gets the threshold under which the fraction `sparsity` of its entries falls on the
calibration data; at inference, entries at or under it are zeroed.

The thresholds are found in one forward pass over the calibration windows, layer by layer in the order
the model runs them: a layer's threshold is computed on its input as the pruned model produces it with
every earlier layer's threshold already applied, so later layers see what the earlier zeros do.
"""

from __future__ import annotations

import math

import torch

from bench.activation import ActivationMethod
from bench.method import Param


class Teal(ActivationMethod):
    name = "teal"
    version = "1"
    params = {"sparsity": Param(float, 0.5, "fraction of each layer input's entries zeroed on the calibration data",
                                min=0.0, max=0.99)}
    shorthand = "sparsity"
    description = "Per layer input, the magnitude threshold that zeroes `sparsity` of its calibration entries."

    def calibrate(self, model, layers, tokens):
        found: dict[str, dict[str, float]] = {}
        fraction = self.sparsity

        def hook_for(name):
            def hook(module, args):
                x = args[0]
                if name in found:
                    under = x.abs() <= found[name]["threshold"]
                else:
                    mags = x.detach().abs().reshape(-1).float()
                    k = math.ceil(fraction * mags.numel())
                    threshold = 0.0 if k == 0 else float(mags.kthvalue(k).values)
                    under = x.abs() <= threshold
                    found[name] = {"threshold": threshold, "calibration_sparsity": float(under.float().mean())}
                return (x.masked_fill(under, 0.0), *args[1:])
            return hook

        handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in layers.items()]
        try:
            device = next(model.parameters()).device
            with torch.inference_mode():
                model(tokens.to(device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        missing = [name for name in layers if name not in found]
        if missing:
            raise RuntimeError(f"teal: {len(missing)} layers saw no input in the calibration pass "
                               f"(first: {missing[0]})")
        return found
