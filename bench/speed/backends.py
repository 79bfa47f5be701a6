"""Kernel backends: what actually multiplies the pruned weights during the latency stage.

A backend receives the pruned model (dense weights with zeros, plus masks) and returns a model whose
linear layers run on its kernels, with provenance: which backend ran each layer, in what format, how many
bytes of weights it read, and why it fell back when it did. A backend that runs the zeros through a dense
kernel says so: such a pattern is recorded as "mask only", however sparse it is.

Backends are found through the entry-point group `sparsebench.kernels`. Each states what it covers
(`patterns`, `dtypes`, `devices`, `max_batch`); a layer outside that stays on PyTorch's dense kernel and
the reason is recorded, per layer, in the provenance.

With an activation rule, `prepare` also takes each layer's input threshold. A backend whose kernels skip
the inputs under it (`convert_skipping`: the native input-major formats) applies it itself; on any other
backend the latency stage zeroes those inputs in front of the layer (a forward hook, whose cost is timed)
and the layer multiplies them as it would any other: activation sparsity there is "mask only".
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, ClassVar

import torch

from bench import _native
from bench.model.walk import weight_view
from bench.patterns import NM, Block, Dense, Pattern
from bench.speed.choice import NoFormat, choose_by_measurement, group_key, rule_format
from bench.speed.packers import MAX_BATCH, NM_COVERS, PackError, SparseLinear, nm_supported


class KernelBackend:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    patterns: ClassVar[str] = "any (as dense)"  # which patterns it skips the zeros of, in words
    max_batch: ClassVar[int | None] = None     # rows of activations per call; above it PyTorch dense runs
    description: ClassVar[str] = ""
    # its kernels are this project's (`bench._native`): the provenance records the instruction set they ran
    # at and the pool's spin (bench.spec.jobs.NATIVE_ENV sets them)
    runs_native: ClassVar[bool] = False

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """Whether the backend runs on a device kind: "cpu" or "cuda" (a hardware target's `device`)."""
        return device in cls.devices

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "version": cls.version, "devices": list(cls.devices), "dtypes": list(cls.dtypes),
                "patterns": cls.patterns, "max_batch": cls.max_batch, "description": cls.description}

    def accelerates(self, pattern: Pattern) -> bool:
        """Whether this backend skips the zeros of `pattern` (rather than multiplying them)."""
        return False

    def convert(self, linear: torch.nn.Linear, pattern: Pattern) -> tuple[torch.nn.Module, str]:
        """One layer on this backend: (module, format). Raise Unsupported to leave it on nn.Linear."""
        raise Unsupported(f"{self.name} converts no layers")

    def convert_skipping(self, linear: torch.nn.Linear, pattern: Pattern, threshold: float) -> tuple[torch.nn.Module, str]:
        """One layer whose kernel skips the inputs at or under `threshold` itself (the module says so with
        `skips_inputs = True`). Raise Unsupported to convert it as usual, the threshold applied in front."""
        raise Unsupported(f"{self.name} has no kernel that skips zero inputs")

    def prepare(self, model: torch.nn.Module, layers: dict[str, torch.nn.Module], pattern: Pattern,
                batches: tuple[int, ...] = (1,), seconds: float | None = None,
                thresholds: dict[str, float] | None = None) -> dict[str, Any]:
        """Swap the pruned `layers` (name -> module) of `model` for this backend's modules, in place.
        `batches` are the decode batches the latency stage will time, and `seconds` what it may spend
        tuning to them (a backend may choose its formats by measurement). `thresholds` (layer name ->
        activation threshold) come from an activation rule.

        Returns provenance: backend, version, status ("accelerated", "mask only" or "dense"), format (per
        format, how many layers), weight_bytes (what the kernels read) and dense_weight_bytes, fallbacks
        (reason -> layer count), per unique layer shape its format and bytes, and with thresholds
        `activations`: how many layers skip their inputs in the kernel and how many have them zeroed in
        front (and why).
        """
        thresholds = thresholds or {}
        formats: Counter = Counter()
        fallbacks: Counter = Counter()
        masked: Counter = Counter()
        shapes: dict[str, dict[str, Any]] = {}
        read = dense = skipping = 0
        for name, layer in layers.items():
            linear = as_linear(layer)
            w = linear.weight  # (N, K) = (out_features, in_features)
            layer_dense = w.numel() * w.element_size()
            dense += layer_dense
            module, fmt, skips, fell_back, not_skipped = self._convert_layer(linear, pattern, thresholds.get(name))
            if fell_back:
                fallbacks[fell_back] += 1
                module, fmt, layer_read = layer, "dense (PyTorch fallback)", layer_dense
            else:
                layer_read = _read_bytes(module, layer_dense)
                if module is not linear and module is not layer:
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, module)
            if not_skipped:
                masked[not_skipped] += 1
            skipping += skips
            formats[fmt] += 1
            read += layer_read
            key = f"{w.shape[0]}x{w.shape[1]}"
            entry = shapes.setdefault(key, {"N": w.shape[0], "K": w.shape[1], "layers": 0, "format": fmt,
                                            "weight_bytes": layer_read, "dense_weight_bytes": layer_dense})
            entry["layers"] += 1
            if name in thresholds:
                entry["activation_threshold"] = "kernel" if skips else "hook"
        out = {"backend": self.name, "version": self.version, **_status(formats, pattern, bool(thresholds)),
               "format": dict(formats), "weight_bytes": read, "dense_weight_bytes": dense,
               "fallbacks": dict(fallbacks), "max_batch": self.max_batch, "shapes": shapes,
               **({"isa": _native.isa(), "spin_us": _native.spin_us()} if self.runs_native else {})}
        if thresholds:
            out["activations"] = {
                "layers": len(thresholds), "skipped_in_kernel": skipping, "zeroed_in_front": sum(masked.values()),
                "why_not_skipped": dict(masked), "status": "accelerated" if skipping else "mask only"}
        return out


    def _convert_layer(self, linear, pattern: Pattern, threshold: float | None):
        """(module, format, skips its inputs, why it fell back to PyTorch or "", why its inputs are not
        skipped in the kernel or "") for one layer; `threshold` is its activation threshold, if any."""
        not_skipped = ""
        try:
            if str(linear.weight.dtype).removeprefix("torch.") not in self.dtypes:
                raise Unsupported(f"{self.name} does not take {str(linear.weight.dtype).removeprefix('torch.')} weights")
            if threshold is not None:
                try:
                    module, fmt = self.convert_skipping(linear, pattern, threshold)
                    return module, fmt, True, "", ""
                except Unsupported as why:  # zeroed in front of whatever runs the layer
                    not_skipped = str(why)
            module, fmt = self.convert(linear, pattern)
            return module, fmt, False, "", not_skipped
        except Unsupported as why:
            return None, "", False, str(why), not_skipped or (str(why) if threshold is not None else "")


def _status(formats: Counter, pattern: Pattern, activations: bool) -> dict[str, Any]:
    """A prepared model's status: "dense" (nothing sparse, weights or activations), "accelerated" (some
    layer runs a format that skips something) or "mask only" (the zeros are multiplied)."""
    sparse_formats = [f for f in formats if f not in ("dense", "dense (PyTorch fallback)")]
    if (pattern.sparsity == 0 or isinstance(pattern, Dense)) and not activations:
        status = "dense"
    elif sparse_formats:
        status = "accelerated"
    else:
        status = "mask only"
    return {"status": status, "accelerated": status == "accelerated",
            "note": "" if status != "mask only" else "zeros are multiplied by a dense kernel"}


def as_linear(layer: torch.nn.Module) -> torch.nn.Module:
    """`layer` as an nn.Linear: itself, or for GPT-2's Conv1D (weight stored as (in, out)) an nn.Linear
    holding the transposed weight and the same bias, so that every backend sees (out, in) weights."""
    if isinstance(layer, torch.nn.Linear):
        return layer
    w = weight_view(layer)  # (out, in)
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    linear.weight = torch.nn.Parameter(w.detach().contiguous(), requires_grad=False)
    if layer.bias is not None:
        linear.bias = layer.bias
    return linear


class Unsupported(Exception):
    """This backend cannot run this layer; the message says why and becomes the fallback reason."""


def _read_bytes(module: torch.nn.Module, dense_bytes: int) -> int:
    packed = getattr(module, "packed", None)
    if packed is not None:
        return packed.weight_bytes
    return getattr(module, "weight_bytes", dense_bytes)


def call_counts(model: torch.nn.Module) -> dict[str, int]:
    """How many layer calls took each path (native kernel, or dense for a stated reason), summed."""
    total: Counter = Counter()
    for module in model.modules():
        total.update(getattr(module, "calls", {}))
    return dict(total)


class TorchDense(KernelBackend):
    """PyTorch's own dense matmul: the zeros are multiplied like any other weight."""

    name = "torch-dense"
    version = "1"
    devices = ("cpu", "cuda")
    description = "PyTorch dense matmul (nn.Linear as is); sparse patterns buy no speed here."

    def convert(self, linear, pattern):
        return linear, "dense"


class NativeDense(KernelBackend):
    """This project's dense kernel: the same loop structure as its sparse kernels, so the pair compares
    the formats and nothing else (and shows how far PyTorch's own dense kernel is from the bandwidth)."""

    name = "native-dense"
    version = "2"  # 2: the batch-1 GEMV reads four rows at a time
    runs_native = True
    dtypes = ("float32", "bfloat16")
    max_batch = MAX_BATCH
    description = (f"SparseBench's own dense GEMV/SpMM kernel (zeros multiplied); batches above {MAX_BATCH} rows "
                   "run PyTorch dense.")

    def convert(self, linear, pattern):
        return SparseLinear.from_linear(linear, "dense"), "dense"


# Weights at least this sparse take bitmask_in under an activation rule, the others dense_in. Measured at one
# thread with 60% of the inputs skipped (benchmarks/README.md): at SmolLM2's shapes (576-1536 outputs)
# dense_in beat bitmask_in even on 50% sparse weights (1536x576: 3.10x against 2.58x over our dense
# kernel; 576x1536: 1.97x against 1.37x), while at 4096x4096 bitmask_in won (2.12x against 1.88x at 50%
# skipped). A per-shape choice by measurement is the better rule; until then, only weights sparse enough
# that their values' bytes dominate take the bitmask.
BITMASK_IN_FROM = 0.6


class Native(KernelBackend):
    """This project's sparse kernels: N:M (half of each group), bitmask, CSR16 and block-sparse formats."""

    name = "native"
    version = "1"
    runs_native = True
    dtypes = ("float32", "bfloat16")
    max_batch = MAX_BATCH
    patterns = (f"{NM_COVERS} (nm); block (bsr); unstructured and channels (bitmask below 65%, csr16 from 65%); "
                "per layer shape, another format that holds the mask where it measures faster; with an activation "
                "rule, input-major formats that skip the inputs under the threshold (dense_in, bitmask_in)")
    description = (f"SparseBench's native CPU kernels (AVX2/AVX-512/portable); batches above {MAX_BATCH} rows run "
                   "PyTorch dense.")

    def accelerates(self, pattern):
        return pattern.sparsity > 0 and not (isinstance(pattern, NM) and not nm_supported(pattern.n, pattern.m))

    def convert_skipping(self, linear, pattern, threshold):
        """Input-major storage: `bitmask_in` (its zeros and the inputs under the threshold skipped) for a
        weight at least BITMASK_IN_FROM sparse, else `dense_in` (its zeros, if any, multiplied)."""
        zeros = float((linear.weight == 0).float().mean())
        fmt = "bitmask_in" if zeros >= BITMASK_IN_FROM else "dense_in"
        module = SparseLinear.from_linear(linear, fmt)
        module.packed.threshold = threshold
        return module, fmt

    def prepare(self, model, layers, pattern, batches=(1,), seconds=None, thresholds=None):
        """Chooses each layer shape's format by measurement (`bench.speed.choice`, within `seconds` in all,
        2 s per shape and batch when not given), then converts. Layers with an activation threshold take
        an input-major format instead (`convert_skipping`)."""
        weights = {}
        for name, layer in layers.items():
            if thresholds and name in thresholds:
                continue
            w = as_linear(layer).weight
            if str(w.dtype).removeprefix("torch.") in self.dtypes and w.device.type == "cpu":
                weights[name] = w.detach()
        try:
            groups = len({group_key(w) for w in weights.values()}) * len(batches)
            budget = 2.0 if seconds is None else seconds / max(1, groups)
            self._choice = (choose_by_measurement(weights, pattern, tuple(batches), seconds=budget)
                            if self.accelerates(pattern) else {})
        except NoFormat:
            self._choice = {}  # no format holds the mask: every layer falls back, and convert says why
        provenance = super().prepare(model, layers, pattern, batches, seconds, thresholds)
        provenance["format_choice"] = {k: {f: v for f, v in c.items() if f != "kw"} for k, c in self._choice.items()}
        return provenance

    def convert(self, linear, pattern):
        chosen = getattr(self, "_choice", {}).get(group_key(linear.weight))
        if chosen is not None and chosen["format"] != chosen["rule"]:
            fmt, kw = chosen["format"], chosen["kw"]  # measured faster than the rule at this shape
        else:
            try:
                fmt, kw = rule_format(linear.weight, pattern)  # per layer: its own density decides
            except NoFormat as why:
                raise Unsupported(str(why)) from None
        if fmt == "dense":  # no zeros to skip: the layer stays PyTorch's, the dense reference's own kernel
            return linear, "dense"
        try:
            return SparseLinear.from_linear(linear, fmt, **kw), fmt
        except PackError as err:
            raise Unsupported(f"{fmt}: {err}") from None


class _TorchSparseLinear(torch.nn.Module):
    """nn.Linear whose weight is a PyTorch sparse tensor: y = (W_sparse @ x.T).T (+ bias)."""

    def __init__(self, sparse_weight, linear: torch.nn.Linear, weight_bytes: int):
        super().__init__()
        self.sparse_weight = sparse_weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_bytes = weight_bytes
        self.calls = {"torch_sparse": 0}

    def forward(self, x):
        self.calls["torch_sparse"] += 1
        x2 = x.reshape(-1, self.in_features)  # (rows, K)
        y = (self.sparse_weight @ x2.T).T  # (rows, N)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def _quiet(fn, *args):
    with warnings.catch_warnings():  # PyTorch marks its sparse CSR/BSR support as beta on every use
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


class TorchCSR(KernelBackend):
    """PyTorch's CSR tensors (32-bit indices) through torch.sparse matmul (MKL on CPU, cuSPARSE on CUDA)."""

    name = "torch-csr"
    version = "1"
    devices = ("cpu", "cuda")
    dtypes = ("float32",)  # PyTorch's CPU CSR matmul has no bfloat16 kernel
    patterns = "any pattern with zeros (unstructured CSR)"
    description = "torch.sparse_csr_tensor with int32 indices; y = (W @ x.T).T."

    def accelerates(self, pattern):
        return pattern.sparsity > 0

    def convert(self, linear, pattern):
        if pattern.sparsity == 0:
            return linear, "dense"
        sparse, nbytes = torch_csr(linear.weight.detach())
        return _TorchSparseLinear(sparse, linear, nbytes), "torch-csr"


def torch_csr(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """PyTorch CSR tensor of `weight` with int32 indices, and the bytes a matmul reads (values + indices)."""
    csr = _quiet(weight.to_sparse_csr)
    crow, col = csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32)
    sparse = _quiet(torch.sparse_csr_tensor, crow, col, csr.values(), csr.shape)
    return sparse, csr.values().numel() * weight.element_size() + 4 * (crow.numel() + col.numel())


class TorchBSR(KernelBackend):
    """PyTorch's BSR tensors for block patterns (fp32 on CPU; on CUDA through its Triton/cuSPARSE paths)."""

    name = "torch-bsr"
    version = "1"
    devices = ("cpu", "cuda")
    dtypes = ("float32",)
    patterns = "block"
    description = "Tensor.to_sparse_bsr with the pattern's block shape; y = (W @ x.T).T."

    def accelerates(self, pattern):
        return isinstance(pattern, Block) and pattern.sparsity > 0

    def convert(self, linear, pattern):
        if not isinstance(pattern, Block):
            raise Unsupported("torch-bsr needs a block pattern")
        w = linear.weight.detach()
        if w.shape[0] % pattern.rows or w.shape[1] % pattern.cols:
            raise Unsupported(f"weight {tuple(w.shape)} is not a whole number of {pattern.rows}x{pattern.cols} blocks")
        bsr = _quiet(w.to_sparse_bsr, (pattern.rows, pattern.cols))
        nbytes = bsr.values().numel() * w.element_size() + 8 * (bsr.crow_indices().numel() + bsr.col_indices().numel())
        return _TorchSparseLinear(bsr, linear, nbytes), "torch-bsr"


class TorchSemiStructured(KernelBackend):
    """PyTorch's 2:4 semi-structured sparsity on CUDA (cuSPARSELt or CUTLASS). Untested without a GPU."""

    name = "torch-semi-structured"
    version = "1"
    devices = ("cuda",)
    dtypes = ("float16", "bfloat16")
    patterns = "2:4"
    description = "torch.sparse.to_sparse_semi_structured on CUDA (compute capability 8.0+)."

    def accelerates(self, pattern):
        return isinstance(pattern, NM) and (pattern.n, pattern.m) == (2, 4)

    def convert(self, linear, pattern):
        if not self.accelerates(pattern):
            raise Unsupported("torch-semi-structured covers the 2:4 pattern only")
        if linear.weight.device.type != "cuda":
            raise Unsupported("torch-semi-structured runs on CUDA only")
        from torch.sparse import to_sparse_semi_structured

        module = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                 device=linear.weight.device, dtype=linear.weight.dtype)
        module.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        if linear.bias is not None:
            module.bias = linear.bias
        return module, "torch-2:4"
