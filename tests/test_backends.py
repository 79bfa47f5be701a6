"""Kernel backends: one contract for every registered backend that runs on the CPU (same logits as the
pruned model on PyTorch's dense kernel, honest provenance), plus what each built-in one promises."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from bench import _native
from bench.speed.backends import Unsupported, call_counts
from bench.patterns import NM, Block, Dense, parse_pattern
from bench.model.walk import target_layers
from bench.prune.harness import prune_model
from bench.registry import kernel_registry, method_registry
from bench.speed.packers import MAX_BATCH, NM_RULE, SparseLinear

CPU_BACKENDS = [n for n in kernel_registry().names() if kernel_registry().get(n).supports_device("cpu")]
NATIVE = {"native", "native-dense"}  # SparseLinear modules: native kernel up to MAX_BATCH rows, dense above
FALLBACK = "dense (PyTorch fallback)"
PATTERNS = {
    "dense": "dense",
    "2:4": "2:4",
    "4:8": "4:8",
    "1:4": "1:4",  # N:M that is not half of each group: the nm kernel cannot take it
    "50%": "50%",
    "70%": "70%",
    "block4x4": {"kind": "block", "target": 0.5, "rows": 4, "cols": 4},
}
NATIVE_FORMAT = {"2:4": "nm", "4:8": "nm", "50%": "bitmask", "70%": "csr16", "block4x4": "bsr"}
STATUSES = {"accelerated", "mask only", "dense"}
PROVENANCE_KEYS = {"backend", "version", "status", "accelerated", "format", "weight_bytes", "dense_weight_bytes",
                   "fallbacks", "max_batch", "shapes", "note"}


def pruned_pair(folder, pattern, dtype=torch.float32):
    """(candidate, reference): the tiny model pruned with magnitude for `pattern`, loaded twice with the
    candidate's pruned weights copied into the reference, so both hold the same zeros."""
    candidate = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    method = method_registry().get("dense" if isinstance(pattern, Dense) else "magnitude")(seed=0)
    prune_model(candidate, method, pattern)
    reference.load_state_dict(candidate.state_dict())
    return candidate, reference


def native_formats(prov: dict, key: str) -> dict[str, int]:
    """Layers per format that the native backend runs: the rule's format (NATIVE_FORMAT) for every shape,
    unless its measurement found another format faster there (and says so in `format_choice`)."""
    counts: dict[str, int] = {}
    for group, c in prov["format_choice"].items():
        assert c["rule"] == NATIVE_FORMAT[key], (group, c)
        assert c["format"] == c["rule"] or c["chosen_by"].startswith("measurement"), (group, c)
        counts[c["format"]] = counts.get(c["format"], 0) + c["layers"]
    return counts


def expected(backend: str, key: str) -> tuple[str, str, str | None] | None:
    """(status, the format of every layer, substring of every fallback reason) a built-in backend reports."""
    sparse = key != "dense"
    if backend in ("torch-dense", "native-dense"):
        return ("mask only" if sparse else "dense"), "dense", None
    if backend == "native":
        if not sparse:
            return "dense", "dense", None
        if key == "1:4":
            return "mask only", FALLBACK, NM_RULE
        return "accelerated", NATIVE_FORMAT[key], None
    if backend == "torch-csr":
        return ("accelerated", "torch-csr", None) if sparse else ("dense", "dense", None)
    if backend == "torch-bsr":
        if key == "block4x4":
            return "accelerated", "torch-bsr", None
        return ("mask only" if sparse else "dense"), FALLBACK, "needs a block pattern"
    return None  # a third-party backend: only the generic contract applies


@pytest.mark.parametrize("key", sorted(PATTERNS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_contract(tiny_model, backend, key):
    pattern = parse_pattern(PATTERNS[key])
    candidate, reference = pruned_pair(tiny_model, pattern)
    layers = {name: module for name, _, module in target_layers(candidate)}
    shapes = {f"{m.weight.shape[0]}x{m.weight.shape[1]}" for m in layers.values()}

    with torch.no_grad():
        prov = kernel_registry().get(backend)().prepare(candidate, layers, pattern)

    # Provenance, generic part.
    assert PROVENANCE_KEYS <= set(prov), PROVENANCE_KEYS - set(prov)
    assert prov["backend"] == backend and prov["status"] in STATUSES
    assert prov["accelerated"] == (prov["status"] == "accelerated")
    assert sum(prov["format"].values()) == len(layers)
    assert sum(prov["fallbacks"].values()) == prov["format"].get(FALLBACK, 0)
    assert prov["dense_weight_bytes"] == sum(m.weight.numel() * m.weight.element_size() for m in layers.values())
    assert set(prov["shapes"]) == shapes and sum(s["layers"] for s in prov["shapes"].values()) == len(layers)
    assert (prov["note"] != "") == (prov["status"] == "mask only")
    if key == "dense":
        assert prov["status"] == "dense"
    if prov["status"] == "accelerated" and (backend != "torch-csr" or pattern.sparsity >= 0.7):
        # (CSR with 32-bit indices stores 8 bytes per kept fp32 weight: at 50% it reads as much as dense.)
        assert prov["weight_bytes"] < prov["dense_weight_bytes"]
    if prov["status"] == "mask only":
        assert not any(f for f in prov["format"] if f not in ("dense", FALLBACK)), prov["format"]

    # Provenance, what each built-in backend promises.
    want = expected(backend, key)
    if want is not None:
        status, fmt, reason = want
        assert prov["status"] == status, prov
        if backend == "native" and status == "accelerated":
            assert prov["format"] == native_formats(prov, key), prov["format"]
        else:
            assert prov["format"] == {fmt: len(layers)}, prov["format"]
        if reason is None:
            assert prov["fallbacks"] == {}
        else:
            assert len(prov["fallbacks"]) >= 1 and all(reason in r for r in prov["fallbacks"]), prov["fallbacks"]
    if backend in NATIVE:
        assert prov["max_batch"] == MAX_BATCH
    # the instruction set this project's kernels ran at and the pool's spin (either changes a measurement)
    assert prov.get("isa") == (_native.isa() if backend in NATIVE else None)
    assert prov.get("spin_us") == (_native.spin_us() if backend in NATIVE else None)
    if backend == "native" and prov["status"] == "accelerated":
        assert prov["weight_bytes"] < prov["dense_weight_bytes"]
        assert all(s["format"] == prov["format_choice"][f"{k}:float32"]["format"] for k, s in prov["shapes"].items())

    # Same logits as the reference: decode (1 row), a small batch (15 rows), a prefill above max_batch (40).
    native_layers = sum(isinstance(m, SparseLinear) for m in candidate.modules())
    if backend == "native" and key == "dense":
        # no zeros to skip: every layer stays the reference's own, so a dense job is 1x by definition
        assert native_layers == 0 and all(candidate.get_submodule(n) is m for n, m in layers.items())
    elif backend in NATIVE and prov["format"].get(FALLBACK, 0) == 0:
        assert native_layers == len(layers)
    gen = torch.Generator().manual_seed(0)
    vocab = candidate.config.vocab_size
    for shape, path in (((1, 1), "native"), ((3, 5), "native"), ((1, 40), "dense_batch_above_max")):
        assert (shape[0] * shape[1] <= MAX_BATCH) == (path == "native")
        ids = torch.randint(0, vocab, shape, generator=gen)
        before = call_counts(candidate)
        with torch.no_grad():
            got = candidate(ids).logits
            ref = reference(ids).logits
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0, msg=lambda m: f"{backend} {key} {shape}: {m}")
        after = call_counts(candidate)
        if native_layers:
            calls = {p: after.get(p, 0) - before.get(p, 0) for p in after}
            assert calls == {"native": native_layers if path == "native" else 0,
                             "dense_batch_above_max": native_layers if path != "native" else 0,
                             "dense_not_cpu": 0}, (shape, calls)


def test_torch_csr_falls_back_on_bfloat16(tiny_model):
    pattern = parse_pattern("70%")
    candidate, _ = pruned_pair(tiny_model, pattern, dtype=torch.bfloat16)
    layers = {name: module for name, _, module in target_layers(candidate)}
    prov = kernel_registry().get("torch-csr")().prepare(candidate, layers, pattern)
    assert prov["status"] == "mask only" and not prov["accelerated"]
    assert prov["format"] == {FALLBACK: len(layers)}
    assert sum(prov["fallbacks"].values()) == len(layers)
    assert all("bfloat16" in reason for reason in prov["fallbacks"]), prov["fallbacks"]
    assert prov["weight_bytes"] == prov["dense_weight_bytes"]
    assert all(isinstance(m, torch.nn.Linear) for m in layers.values())  # left in place


def test_native_runs_bfloat16_weights(tiny_model):
    """bf16 layers stay bf16 in and out; the native kernel accumulates in fp32, PyTorch's in bf16-ish
    steps, so the logits agree only to bf16 precision."""
    pattern = parse_pattern("2:4")
    candidate, reference = pruned_pair(tiny_model, pattern, dtype=torch.bfloat16)
    layers = {name: module for name, _, module in target_layers(candidate)}
    prov = kernel_registry().get("native")().prepare(candidate, layers, pattern)
    assert prov["status"] == "accelerated" and prov["format"] == native_formats(prov, "2:4")
    assert sum(prov["format"].values()) == len(layers) and set(prov["format_choice"]) == {
        f"{m.weight.shape[0]}x{m.weight.shape[1]}:bfloat16" for m in layers.values()}
    k_sum = sum(m.weight.numel() for m in layers.values())
    assert prov["dense_weight_bytes"] == 2 * k_sum
    ids = torch.randint(0, candidate.config.vocab_size, (2, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, ref = candidate(ids).logits, reference(ids).logits
    assert got.dtype == torch.bfloat16
    scale = float(ref.float().abs().max())
    torch.testing.assert_close(got.float(), ref.float(), atol=0.05 * scale, rtol=0)
    assert call_counts(candidate)["native"] == len(layers)


def test_native_layer_takes_an_empty_batch_like_nn_linear():
    linear = torch.nn.Linear(16, 8)
    layer = SparseLinear.from_linear(linear, "dense")
    x = torch.randn(2, 0, 16)
    with torch.no_grad():
        assert layer(x).shape == linear(x).shape == (2, 0, 8)


def test_describe_has_the_contract_keys():
    names = kernel_registry().names()
    assert {"torch-dense", "native", "native-dense"} <= set(names), names
    for name in names:
        cls = kernel_registry().get(name)
        d = cls.describe()
        assert {"name", "devices", "dtypes", "patterns", "max_batch"} <= set(d), (name, d)
        assert d["name"] == name and isinstance(d["devices"], list) and isinstance(d["dtypes"], list)
        assert d["max_batch"] is None or (isinstance(d["max_batch"], int) and d["max_batch"] >= 1)
        if name in NATIVE:
            assert d["max_batch"] == MAX_BATCH == 32
            assert set(d["dtypes"]) == {"float32", "bfloat16"}


def test_semi_structured_is_cuda_only():
    cls = kernel_registry().get("torch-semi-structured")
    assert "cpu" not in cls.devices
    assert cls.supports_device("cpu") is False
    assert cls.supports_device("cuda")
    assert "torch-semi-structured" not in CPU_BACKENDS
    # Handed CPU layers anyway, it leaves them on PyTorch and says why.
    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False, dtype=torch.float16))
    with torch.no_grad():
        model[0].weight.mul_(NM(2, 4).mask(model[0].weight.abs()))
    prov = cls().prepare(model, {"0": model[0]}, NM(2, 4))
    assert prov["status"] == "mask only" and prov["format"] == {FALLBACK: 1}
    assert list(prov["fallbacks"]) == ["torch-semi-structured runs on CUDA only"]
    assert isinstance(model[0], torch.nn.Linear)
    # and on a pattern it does not cover, whatever the device:
    with pytest.raises(Unsupported, match="2:4"):
        cls().convert(model[0], Block())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_semi_structured_runs_2_4_on_cuda():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs compute capability 8.0+")
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=True).to(device="cuda", dtype=torch.float16)
    with torch.no_grad():
        linear.weight.mul_(NM(2, 4).mask(linear.weight.abs()))
    reference = copy.deepcopy(linear)
    model = torch.nn.Sequential(linear)
    cls = kernel_registry().get("torch-semi-structured")
    with torch.no_grad():
        prov = cls().prepare(model, {"0": linear}, parse_pattern("2:4"))
    assert prov["status"] == "accelerated" and prov["format"] == {"torch-2:4": 1}, prov
    assert prov["fallbacks"] == {}
    assert model[0] is not linear
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert got.shape == (64, 128) and got.dtype == torch.float16
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_bsr_runs_block_pattern_on_cuda():
    from bench.patterns import Block

    linear = torch.nn.Linear(256, 128, bias=True).to(device="cuda")
    with torch.no_grad():
        keep = (torch.rand(128 // 4, 1, 256 // 4, 1, device="cuda") > 0.5).float()
        linear.weight.mul_(keep.expand(-1, 4, -1, 4).reshape(128, 256))
    reference = copy.deepcopy(linear)
    model = torch.nn.Sequential(linear)
    prov = kernel_registry().get("torch-bsr")().prepare(model, {"0": linear}, Block(target=0.5, rows=4, cols=4))
    assert prov["status"] == "accelerated" and prov["format"] == {"torch-bsr": 1}
    x = torch.randn(16, 256, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_transposed_conv1d_layers(backend):
    """GPT-2 stores its linear weights as (in, out) in Conv1D modules: every backend sees them as (out, in),
    the logits match the dense model with the same zeros, and the per-shape stage times the right layers."""
    from bench.speed.latency import LatencySpec, measure_layers
    from bench.stats import VERDICTS
    from bench.model.walk import weight_view
    from bench.model.zoo import builtin_path

    pattern = parse_pattern("2:4")
    candidate, reference = pruned_pair(builtin_path("tiny-gpt2"), pattern)
    layers = {name: module for name, _, module in target_layers(candidate)}
    assert {type(m).__name__ for m in layers.values()} == {"Conv1D"}
    with torch.no_grad():
        prov = kernel_registry().get(backend)().prepare(candidate, layers, pattern)
    assert set(prov["shapes"]) == {"x".join(map(str, weight_view(m).shape)) for m in layers.values()}
    ids = torch.randint(0, candidate.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(candidate(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)
    spec = LatencySpec(decode_batch=(1,), warmup=1, repeats=2, max_repeats=3)
    rows = measure_layers(candidate, reference, prov, spec, bandwidth=1e10)
    assert {r["details"]["shape"] for r in rows} == set(prov["shapes"])
    for r in rows:
        d = r["details"]
        assert 2 <= d["rounds"] <= 3 and d["aa"]["count"] == d["rounds"] and d["verdict"] in VERDICTS[:3]
        assert d["speedup_paired"]["lo"] <= d["speedup_paired"]["median"] <= d["speedup_paired"]["hi"]


def test_one_nm_rule_from_the_extension():
    """Which N:M masks the nm format holds is stated once, by the extension (NM_GROUPS); the backend's claim
    to accelerate a pattern, its format choice and the packer agree on every n:m. (8:16 keeps half of each
    group but is no group size the kernel takes: it was claimed as accelerated, then failed to pack.)"""
    from bench import _native
    from bench.speed.backends import Native
    from bench.speed.choice import NoFormat, rule_format
    from bench.speed.packers import NM_GROUPS, PackError, nm_supported, pack

    assert NM_GROUPS == tuple(_native.NM_GROUPS) == (2, 4, 8)
    native = Native()
    for m in (2, 4, 8, 16):
        for n in range(1, m):
            pattern = NM(n, m)
            w = pattern.mask(torch.randn(8, 32)) * torch.randn(8, 32)
            assert native.accelerates(pattern) == nm_supported(n, m) == (2 * n == m and m <= 8), (n, m)
            if nm_supported(n, m):
                assert rule_format(w, pattern)[0] == "nm"
                assert pack(w, "nm", nm=(n, m)).format == "nm"
            else:
                with pytest.raises(NoFormat):
                    rule_format(w, pattern)
                with pytest.raises(PackError):
                    pack(w, "nm", nm=(n, m))
