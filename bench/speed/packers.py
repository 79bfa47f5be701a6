"""Packed sparse weights for the native kernels (`bench._native`), and the Linear module that runs them.

    packed = pack(weight, "bitmask")               # weight: (N, K) dense with zeros, fp32 or bf16
    y = packed.mm(x)                               # x: (B, K) -> (B, N), B <= MAX_BATCH
    layer = SparseLinear.from_linear(linear, "nm") # drop-in for nn.Linear

Formats (what each stores per output row of K columns; vb = bytes per value, 4 fp32 or 2 bf16):
  dense    K values                                              our dense baseline, same loop shapes
  nm       K/2 values + K/8 mask bytes (one bit per column)      2:4, 4:8 (and 1:2): 2 bits per kept value
  bitmask  nnz values + K/8 mask bytes + an 8-byte row offset    unstructured, ~50-80% sparse
  csr16    nnz values + nnz 16-bit columns (per column tile)     unstructured, very sparse
  bsr      kept (bh, bw) blocks + a 32-bit block column each     block patterns

Input-major formats store W by input column (what each stores per input of N outputs), so that an input
which is zero, or at or under the activation threshold, in every row of the batch skips its weights:
  dense_in    N values                                           activation sparsity on dense weights
  bitmask_in  nnz values + N/8 mask bytes + an 8-byte offset     activation and weight sparsity together
              per 256-output segment

Packing works from the zeros of the weight itself (methods hand over dense weights with zeros): the
kernels never know which method made them. The packers are plain tensor code, run once per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bench import _native

# What the kernels take, as the extension states it (kernels/src/module.cpp): format names and codes, the
# N:M group sizes of the nm format (each keeps half of its group) and the rows of activations per call.
_CODE: dict[str, int] = dict(_native.FORMATS)
FORMATS: tuple[str, ...] = tuple(_CODE)
NM_GROUPS: tuple[int, ...] = tuple(_native.NM_GROUPS)
MAX_BATCH: int = _native.MAX_BATCH
VALUE_PAD = 64  # zero values after the last one: the bitmask kernels read up to 16 past a row's end
INPUT_MAJOR: tuple[str, ...] = ("dense_in", "bitmask_in")  # the formats that skip inputs (set_threshold)
IN_SEGMENT = 256  # output columns per unit of the input-major kernels (kInSeg in kernels/src/kernels.h)
NM_COVERS = ", ".join(f"{m // 2}:{m}" for m in NM_GROUPS)
NM_RULE = f"the nm kernel covers {NM_COVERS} (exactly half of each group kept)"


def nm_supported(n: int, m: int) -> bool:
    """Whether the nm format holds n:m masks: half of each group kept, in a group size the kernel takes."""
    return 2 * n == m and m in NM_GROUPS


class PackError(ValueError):
    """The weight cannot be stored in the requested format (e.g. a group keeps more than N of M)."""


def _bits_to_bytes(keep: torch.Tensor, width: int) -> torch.Tensor:
    """(N, K) bool -> (N, width // 8) uint8, column k in bit k % 8 of byte k // 8 (little-endian)."""
    n, k = keep.shape
    padded = torch.zeros(n, width, dtype=torch.uint8)
    padded[:, :k] = keep
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (padded.view(n, width // 8, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8).contiguous()


def _pad_values(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.reshape(-1), values.new_zeros(VALUE_PAD)])


@dataclass
class Packed:
    """A weight in one native format; `mm` multiplies a batch of activations by its transpose."""

    format: str
    shape: tuple[int, int]
    dtype: torch.dtype
    arrays: dict[str, torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n, k = self.shape
        self.native = _native.Packed(_CODE[self.format], n, k, **self.arrays, **self.params)

    @property
    def weight_bytes(self) -> int:
        """Bytes the kernel reads for the weight: values plus every index array."""
        return int(self.native.weight_bytes)

    @property
    def dense_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * torch.finfo(self.dtype).bits // 8

    @property
    def input_major(self) -> bool:
        return bool(self.native.input_major)

    @property
    def threshold(self) -> float:
        """The activation threshold of an input-major format: inputs with |x| at or under it are skipped."""
        return float(self.native.threshold)

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.native.threshold = float(value)

    def activation_counts(self) -> dict[str, int]:
        """What an input-major kernel skipped since the last `reset_counts`: its calls, the inputs (columns of
        x) it saw and skipped (under the threshold in every row of the batch), the entries it saw and zeroed."""
        names = ("calls", "inputs", "inputs_skipped", "entries", "entries_zero")
        return dict(zip(names, (int(v) for v in self.native.activation_counts())))

    def reset_counts(self) -> None:
        self.native.reset_counts()

    def mm(self, x: torch.Tensor, threads: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """y (B, N) = x (B, K) @ W.T in float32 on the CPU, into `out` if given. The tensors are checked here
        and handed to the extension as addresses (a DLPack exchange per call cost more than a small layer's
        arithmetic)."""
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (B, K), got shape {tuple(x.shape)}")
        if x.shape[1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[1]} columns, W has K={self.shape[1]}")
        if x.device.type != "cpu":
            raise ValueError(f"x must be on the CPU, not {x.device}")
        x = x.to(torch.float32).contiguous()  # (B, K)
        n = self.shape[0]
        if out is None:
            out = torch.empty(x.shape[0], n, dtype=torch.float32)
        elif (out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous()
              or tuple(out.shape) != (x.shape[0], n)):
            raise ValueError(f"out must be a contiguous float32 CPU tensor of shape ({x.shape[0]}, {n})")
        self.native.mm_at(x.data_ptr(), out.data_ptr(), x.shape[0], torch.get_num_threads() if threads is None else threads)
        return out


def pack(weight: torch.Tensor, format: str, *, nm: tuple[int, int] | None = None,
         block: tuple[int, int] = (4, 4), tile: int = 65536) -> Packed:
    """Pack a dense (N, K) weight whose pruned entries are zero. `nm` is needed for "nm" (e.g. (2, 4))."""
    if format not in FORMATS:
        raise PackError(f"unknown format {format!r} (known: {', '.join(FORMATS)})")
    if weight.dim() != 2:
        raise PackError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    if weight.dtype not in (torch.float32, torch.bfloat16):
        raise PackError(f"native kernels take float32 or bfloat16 weights, not {weight.dtype}")
    w = weight.detach().to("cpu").contiguous()
    shape = (w.shape[0], w.shape[1])
    if format == "dense":
        return Packed("dense", shape, w.dtype, {"values": w})
    if format == "nm":
        return _pack_nm(w, *(nm or (2, 4)))
    if format == "bitmask":
        return _pack_bitmask(w)
    if format == "dense_in":
        return Packed("dense_in", shape, w.dtype, {"values": w.T.contiguous()})
    if format == "bitmask_in":
        return _pack_bitmask_in(w)
    if format == "csr16":
        return _pack_csr16(w, tile)
    return _pack_bsr(w, *block)


def _pack_nm(w: torch.Tensor, n: int, m: int) -> Packed:
    rows, k = w.shape
    if not nm_supported(n, m):
        raise PackError(f"{NM_RULE}, not {n}:{m}")
    if k % m or k % 4:
        raise PackError(f"K={k} is not a multiple of {max(m, 4)}")
    nonzero = (w != 0).view(rows, k // m, m)
    if int(nonzero.sum(-1).max()) > n:
        raise PackError(f"some group of {m} columns has more than {n} nonzeros: not {n}:{m} sparse")
    # Keep exactly n per group: the nonzeros, then the earliest zeros, so every group has the same count.
    rank = nonzero.to(torch.int32) * (2 * m) - torch.arange(m, dtype=torch.int32)
    idx = rank.topk(n, dim=-1).indices.sort(-1).values  # (rows, k/m, n), ascending columns
    keep = torch.zeros(rows, k // m, m, dtype=torch.bool).scatter_(-1, idx, True).view(rows, k)
    values = w.view(rows, k // m, m).gather(-1, idx).reshape(rows, k // 2).contiguous()
    mask = _bits_to_bytes(keep, (k + 7) // 8 * 8)
    return Packed("nm", (rows, k), w.dtype, {"values": values, "mask": mask}, {})


def _pack_bitmask(w: torch.Tensor) -> Packed:
    rows, k = w.shape
    keep = w != 0
    words = (k + 63) // 64
    mask = _bits_to_bytes(keep, words * 64)  # (rows, words * 8) bytes, read as uint64 words
    ptr = torch.zeros(rows + 1, dtype=torch.int64)
    ptr[1:] = keep.sum(1).cumsum(0)
    return Packed("bitmask", (rows, k), w.dtype, {"values": _pad_values(w[keep]), "mask": mask, "ptr": ptr})


def _pack_bitmask_in(w: torch.Tensor) -> Packed:
    rows, k = w.shape
    keep = (w != 0).T.contiguous()  # (K, N): input-major
    words = (rows + 63) // 64
    segments = (rows + IN_SEGMENT - 1) // IN_SEGMENT
    mask = _bits_to_bytes(keep, words * 64)  # (K, words * 8) bytes over the outputs
    padded = torch.zeros(k, segments * IN_SEGMENT, dtype=torch.int64)
    padded[:, :rows] = keep
    ptr = torch.zeros(k * segments + 1, dtype=torch.int64)
    ptr[1:] = padded.view(k, segments, IN_SEGMENT).sum(-1).reshape(-1).cumsum(0)
    return Packed("bitmask_in", (rows, k), w.dtype, {"values": _pad_values(w.T[keep]), "mask": mask, "ptr": ptr})


def _pack_csr16(w: torch.Tensor, tile: int) -> Packed:
    rows, k = w.shape
    if not 0 < tile <= 65536:
        raise PackError(f"tile must be in [1, 65536], got {tile}")
    tiles = math.ceil(k / tile)
    keep = w != 0
    where = keep.nonzero()  # row-major order: within a row ascending, so grouped by tile already
    cols = where[:, 1]
    # Entries per (row, tile), counted from the nonzeros alone (padding the mask out to whole tiles of
    # 65536 columns made a 1536x576 layer a 100M-entry tensor: 0.4 s a layer).
    counts = torch.bincount(where[:, 0] * tiles + cols // tile, minlength=rows * tiles)
    ptr = torch.zeros(rows * tiles + 1, dtype=torch.int64)
    ptr[1:] = counts.cumsum(0)
    local = (cols % tile).to(torch.int32).to(torch.uint16)
    return Packed("csr16", (rows, k), w.dtype, {"values": _pad_values(w[keep]), "ptr": ptr, "cols": local},
                  {"tile": tile})


def _pack_bsr(w: torch.Tensor, bh: int, bw: int) -> Packed:
    rows, k = w.shape
    rb, cb = math.ceil(rows / bh), math.ceil(k / bw)
    full = w.new_zeros(rb * bh, cb * bw)
    full[:rows, :k] = w
    blocks = full.view(rb, bh, cb, bw).permute(0, 2, 1, 3)  # (rb, cb, bh, bw)
    keep = blocks.ne(0).any(-1).any(-1)  # (rb, cb)
    counts = keep.sum(1)
    ptr = torch.zeros(rb + 1, dtype=torch.int64)
    ptr[1:] = counts.cumsum(0)
    where = keep.nonzero()  # (nblocks, 2) row-major
    kept = blocks[keep]  # (nblocks, bh, bw)
    # Lay each block row out as (bh, blocks in the row, bw) so that every row's values are contiguous.
    brow = where[:, 0]
    pos = torch.arange(len(where)) - ptr[brow]  # index of the block within its block row
    r = torch.arange(bh).view(1, bh, 1)
    q = torch.arange(bw).view(1, 1, bw)
    target = (ptr[brow] * bh * bw).view(-1, 1, 1) + r * (counts[brow] * bw).view(-1, 1, 1) + (pos * bw).view(-1, 1, 1) + q
    values = w.new_zeros(len(where) * bh * bw)
    values[target.reshape(-1)] = kept.reshape(-1)
    return Packed("bsr", (rows, k), w.dtype,
                  {"values": _pad_values(values), "ptr": ptr, "bcols": where[:, 1].to(torch.int32).contiguous()},
                  {"bh": bh, "bw": bw})


class SparseLinear(torch.nn.Module):
    """nn.Linear on a packed weight. Batches above MAX_BATCH rows (e.g. a long prefill) and non-CPU
    inputs run PyTorch's dense kernel on the original weight; every call is counted by the path it took."""

    def __init__(self, packed: Packed, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.packed = packed
        self.in_features, self.out_features = packed.shape[1], packed.shape[0]
        self.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)  # kept for the dense fallback
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)
        self.calls = {"native": 0, "dense_batch_above_max": 0, "dense_not_cpu": 0}

    @property
    def skips_inputs(self) -> bool:
        """Whether the kernel itself skips the inputs under the packed weight's activation threshold."""
        return self.packed.input_major

    @staticmethod
    def from_linear(linear: torch.nn.Linear, format: str, **kw) -> "SparseLinear":
        return SparseLinear(pack(linear.weight, format, **kw), linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The common case first, with as few PyTorch calls as possible (each costs about a microsecond of
        # Python and dispatch, and a decode step makes hundreds of these calls): float32, contiguous, on the
        # CPU, at most MAX_BATCH rows. The output is allocated once, in its final shape.
        if x.dtype is torch.float32 and x.is_cpu and x.shape[-1] == self.in_features and x.is_contiguous():
            rows = x.numel() // self.in_features
            if 0 < rows <= MAX_BATCH:
                self.calls["native"] += 1
                out = torch.empty((*x.shape[:-1], self.out_features), dtype=torch.float32)
                self.packed.native.mm_at(x.data_ptr(), out.data_ptr(), rows, torch.get_num_threads())
                if self.bias is not None:
                    out += self.bias
                return out
        rows = x.numel() // self.in_features
        if rows == 0:  # an empty batch: nothing to multiply, same result as nn.Linear
            return F.linear(x, self.weight, self.bias)
        if x.device.type != "cpu":
            self.calls["dense_not_cpu"] += 1
            return F.linear(x, self.weight, self.bias)
        if rows > MAX_BATCH:
            self.calls["dense_batch_above_max"] += 1
            return F.linear(x, self.weight, self.bias)
        self.calls["native"] += 1
        y = self.packed.mm(x.reshape(rows, self.in_features)).to(x.dtype)  # (rows, N)
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, format={self.packed.format}"


def skip_counter(modules: list[torch.nn.Module]):
    """Resets the skip counts of the modules among `modules` whose kernels skip inputs; returns a function
    that gives the fraction of inputs they have skipped since (None when none of them skips inputs)."""
    packs = [m.packed for m in modules if getattr(m, "skips_inputs", False)]
    for pk in packs:
        pk.reset_counts()

    def fraction() -> float | None:
        if not packs:
            return None
        counts = [pk.activation_counts() for pk in packs]
        return sum(c["inputs_skipped"] for c in counts) / max(1, sum(c["inputs"] for c in counts))
    return fraction
