"""`sparsegpt`: one-shot pruning with optimal-brain-surgeon weight reconstruction (Frantar & Alistarh,
2023, arXiv:2301.00774).

Per layer, from the calibration inputs X (tokens x in): H = 2/n X^T X, damped by `percdamp` times its mean
diagonal, and the upper Cholesky factor U of H^-1. Columns are processed left to right in blocks of
`blocksize`. Inside a block the mask is chosen from the scores W^2 / diag(U)^2: for unstructured patterns
once per block (adaptive mask selection, the block's target fraction), for N:M once per group of M
columns as the sweep reaches it. Each pruned column's error is spread over the remaining columns of the
block (w -= err * U[i, i:]); the block's accumulated error updates all later columns at once (the lazy
batch update). The kept weights therefore change: this is a reconstruction, not just a mask.
"""

from __future__ import annotations

import math

import torch

from bench.method import LayerPruner, Method, Param
from bench.patterns import NM, Pattern


class _SparseGPT(LayerPruner):
    def __init__(self, weight: torch.Tensor, blocksize: int, percdamp: float):
        cols = weight.shape[1]
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=weight.device)
        self.n = 0
        self.blocksize, self.percdamp = blocksize, percdamp

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().float()  # (tokens, in)
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2 / self.n) * x
        self.H += x.T @ x

    def _inverse_factor(self, W: torch.Tensor) -> torch.Tensor:
        H = self.H
        self.H = None  # free the Hessian as soon as it is consumed
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        H += self.percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=H.device)
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        return torch.linalg.cholesky(Hinv, upper=True)

    def prune(self, weight: torch.Tensor, pattern: Pattern):
        if self.n == 0:
            raise RuntimeError("sparsegpt saw no calibration inputs for this layer")
        W = weight.detach().clone().float()  # (out, in)
        U = self._inverse_factor(W)
        rows, cols = W.shape
        keep = torch.ones_like(W, dtype=torch.bool)
        nm = pattern if isinstance(pattern, NM) else None
        bs = self.blocksize if nm is None else math.ceil(self.blocksize / nm.m) * nm.m  # groups never straddle blocks
        for i1 in range(0, cols, bs):
            i2 = min(i1 + bs, cols)
            W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
            d = torch.diag(U1)
            Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
            keep1 = pattern.mask(W1 ** 2 / d ** 2) if nm is None else torch.ones_like(W1, dtype=torch.bool)
            for i in range(i2 - i1):
                if nm is not None and i % nm.m == 0:
                    g = slice(i, min(i + nm.m, i2 - i1))
                    keep1[:, g] = nm.mask(W1[:, g] ** 2 / d[g] ** 2)
                w = W1[:, i]
                q = w * keep1[:, i]
                Q1[:, i] = q
                err = (w - q) / U1[i, i]
                W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
                Err1[:, i] = err
            W[:, i1:i2] = Q1
            keep[:, i1:i2] = keep1
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        return (W * keep).to(weight.dtype), keep


class SparseGPT(Method):
    name = "sparsegpt"
    version = "1"
    needs_calibration = True
    patterns = ("unstructured", "nm")
    params = {
        "blocksize": Param(int, 128, "columns per lazy-update block (rounded up to a multiple of M for N:M)", min=1),
        "percdamp": Param(float, 0.01, "dampening, as a fraction of the Hessian's mean diagonal", min=0.0, max=1.0),
    }
    description = "OBS reconstruction with lazy block updates and per-block mask selection."

    def pruner(self, layer_name, weight):
        return _SparseGPT(weight, self.blocksize, self.percdamp)
