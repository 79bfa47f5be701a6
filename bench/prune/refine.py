"""Training-free mask refinement applied on top of any method: DSnoT (Zhang et al., 2024, arXiv:2310.08915).

    weight, mask = dsnot(dense_w, pruned_w, mask, mean_x, norm_x, pattern, cycles=50)

Per output row r the expected reconstruction error is delta_r = sum_j (W_rj - W'_rj) * E[x_j], the mean
difference between the dense and the pruned layer's output on the calibration inputs. Each cycle, in every
row still improving, one pruned weight is grown back (the one whose W_rj * E[x_j] has delta's sign and is
largest, so it cancels most of delta) and one kept weight is pruned (among those whose removal does not
push delta further the same way, the least important by |W| * ||x_j||). The swap is kept only if |delta|
shrinks. Counts per row, and per group of M for N:M, never change, so the pattern still holds. Grown
weights take their dense values.
"""

from __future__ import annotations

import torch

from bench.patterns import NM, Pattern

SUPPORTED = ("unstructured", "nm")


@torch.no_grad()
def dsnot(dense: torch.Tensor, pruned: torch.Tensor, mask: torch.Tensor, mean_x: torch.Tensor, norm_x: torch.Tensor,
          pattern: Pattern, cycles: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    if pattern.kind not in SUPPORTED:
        raise ValueError(f"DSnoT refines {' and '.join(SUPPORTED)} patterns, not {pattern.kind}")
    w, keep = pruned.clone().float(), mask.clone()
    dense = dense.float()
    contrib = dense * mean_x.float().unsqueeze(0)                       # (out, in): W_rj * E[x_j]
    importance = dense.abs() * norm_x.float().unsqueeze(0)              # Wanda score
    delta = ((dense - w) * mean_x.float().unsqueeze(0)).sum(dim=1)      # (out,)
    rows = torch.arange(w.shape[0])
    active = torch.ones(w.shape[0], dtype=torch.bool)
    cols = torch.arange(w.shape[1])
    for _ in range(cycles):
        if not active.any():
            break
        sign = torch.sign(delta).unsqueeze(1)
        grow_score = torch.where(keep, torch.full_like(contrib, -torch.inf), sign * contrib)
        g = grow_score.argmax(dim=1)
        ok = active & (grow_score[rows, g] > 0)
        after_grow = delta - contrib[rows, g]
        # a kept weight whose removal does not move delta further in the direction it already points
        candidates = keep & (torch.sign(contrib) != torch.sign(after_grow).unsqueeze(1))
        if isinstance(pattern, NM):
            candidates &= (cols.unsqueeze(0) // pattern.m) == (g // pattern.m).unsqueeze(1)
        prune_score = torch.where(candidates, importance, torch.full_like(importance, torch.inf))
        p = prune_score.argmin(dim=1)
        ok &= torch.isfinite(prune_score[rows, p])
        after = after_grow + contrib[rows, p]
        ok &= after.abs() < delta.abs()
        active &= ok
        r = rows[ok]
        keep[r, g[ok]] = True
        w[r, g[ok]] = dense[r, g[ok]]
        keep[r, p[ok]] = False
        w[r, p[ok]] = 0
        delta = torch.where(ok, after, delta)
    return (w * keep).to(pruned.dtype), keep
