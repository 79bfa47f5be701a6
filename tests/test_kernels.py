"""Native kernels (bench._native through bench.speed.packers.pack): every format, weight type and batch size
against a float64 dense matmul, on every instruction set this CPU supports.

Tolerance. The reference is x.double() @ W.double().T with the very weights that were packed (bf16
weights are exact in float64) and the same fp32 activations, so the only error is the kernels' fp32
accumulation, in whatever order each kernel sums. Elementwise we require

    |y - ref| <= RTOL * (|x| @ |W|.T) + ATOL,   RTOL = 1e-5, ATOL = 1e-6

i.e. relative to the sum of the magnitudes of the products (a sum of K fp32 roundings is far below
1e-5 of it for the sizes here). Exception: the avx512bf16 build runs the bf16 *dense* GEMV with the
activations rounded to bf16 (vdpbf16ps), which loses ~3 significant digits: RTOL = 1e-2 there.
All-zero rows and matrices get a bound of ATOL, so they must come out (essentially) exactly zero.
"""

from __future__ import annotations

import math
import threading
import zlib

import pytest
import torch

from bench import _native
from bench.patterns import NM
from bench.speed.packers import FORMATS, MAX_BATCH, VALUE_PAD, PackError, pack

RTOL, ATOL, RTOL_XBF16 = 1e-5, 1e-6, 1e-2
BATCHES = (1, 2, 7, 8, 9, 17, 32)  # 1: GEMV; 2-32: SpMM with 1, 2, 3 and 4 vectors of accumulators
DTYPES = (torch.float32, torch.bfloat16)


@pytest.fixture(params=_native.available_isas())
def isa(request):
    """Run the test with the kernels built for one instruction set, then restore the one in use."""
    before = _native.isa()
    _native.set_isa(request.param)
    assert _native.isa() == request.param
    try:
        yield request.param
    finally:
        _native.set_isa(before)


# name -> (pack kwargs, (N, K) shapes): odd sizes, one row, one column where the format allows it,
# K exactly one vector loop, and K wide enough for two CSR16 column tiles.
VARIANTS = {
    "dense": (dict(format="dense"), [(37, 203), (1, 203), (37, 1), (5, 64), (3, 1000)]),
    "nm2:4": (dict(format="nm", nm=(2, 4)), [(37, 204), (37, 208), (1, 204), (37, 4), (5, 36), (4, 64)]),
    "nm4:8": (dict(format="nm", nm=(4, 8)), [(37, 200), (1, 200), (37, 8), (5, 40), (4, 64)]),
    "nm1:2": (dict(format="nm", nm=(1, 2)), [(37, 204), (1, 8), (6, 36)]),
    "bitmask": (dict(format="bitmask"), [(37, 203), (1, 203), (37, 1), (6, 128), (3, 70_000)]),
    "csr16": (dict(format="csr16"), [(37, 203), (1, 203), (37, 1), (3, 70_000)]),  # 70000 > 65536: 2 tiles
    "csr16/tile64": (dict(format="csr16", tile=64), [(37, 203), (1, 203), (37, 1), (3, 1000)]),
    "bsr4x4": (dict(format="bsr", block=(4, 4)), [(37, 203), (1, 203), (37, 1), (32, 64), (3, 7)]),
    "bsr2x16": (dict(format="bsr", block=(2, 16)), [(37, 203), (1, 203), (37, 1), (32, 64)]),
    "bsr3x5": (dict(format="bsr", block=(3, 5)), [(37, 203), (1, 203), (37, 1), (3, 7)]),
    # input-major: N decides the segments of 256 outputs and the mask words (ragged, one, several)
    "dense_in": (dict(format="dense_in"), [(37, 203), (1, 203), (37, 1), (300, 64), (513, 77), (256, 5)]),
    "bitmask_in": (dict(format="bitmask_in"), [(37, 203), (1, 203), (37, 1), (300, 64), (513, 77), (64, 128)]),
}
KINDS = ("random", "zero_rows", "zeros")


def sparse_weight(kw: dict, n: int, k: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """A float32 (n, k) weight whose zeros fit the format in `kw` (random positions, some extra zeros)."""
    w = torch.randn(n, k, generator=gen)
    if kind == "zeros":
        return torch.zeros(n, k)
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    fmt = kw["format"]
    if fmt in ("dense", "dense_in"):
        keep = u(n, k) > 0.3
    elif fmt == "nm":
        keep = NM(*kw["nm"]).mask(u(n, k)) & (u(n, k) > 0.2)  # some groups keep fewer than N
    elif fmt == "bitmask":
        keep = u(n, k) > 0.6
        keep[0] = True  # a full row: every mask byte is 0xff
        if n > 2:
            keep[1, : min(k, 200)] = False  # whole zero mask words inside a row
    elif fmt == "bitmask_in":
        keep = u(n, k) > 0.6
        keep[:, 0] = True  # a full input: every mask byte over the outputs is 0xff
        if k > 2:
            keep[: min(n, 200), 1] = False  # whole zero mask words inside an input
    elif fmt == "csr16":
        keep = u(n, k) > 0.85
        keep[0, -1] = True  # the last column (the last tile's highest index)
    else:
        bh, bw = kw["block"]
        rb, cb = math.ceil(n / bh), math.ceil(k / bw)
        blocks = u(rb, cb) > 0.5
        blocks[-1, -1] = True  # the ragged corner block
        keep = blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:n, :k] & (u(n, k) > 0.1)
    w = w * keep
    if kind == "zero_rows":
        w[::3] = 0
    return w


def reference(w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ W.T, |x| @ |W|.T), both in float64."""
    w64, x64 = w.to(torch.float64), x.to(torch.float64)
    return x64 @ w64.T, x64.abs() @ w64.abs().T


def assert_matches(y: torch.Tensor, w: torch.Tensor, x: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    ref, scale = reference(w, x)
    assert y.dtype == torch.float32 and y.shape == ref.shape, what
    err = (y.to(torch.float64) - ref).abs()
    bound = rtol * scale + ATOL
    bad = err > bound
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {y.numel()} outputs off, first at {i}: "
                             f"got {float(y[i])!r}, want {float(ref[i])!r} (bound {float(bound[i]):.3g})")


def rtol_for(isa: str, fmt: str, dtype: torch.dtype) -> float:
    return RTOL_XBF16 if isa == "avx512bf16" and fmt == "dense" and dtype == torch.bfloat16 else RTOL


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_matches_float64_reference(isa, variant, dtype):
    kw, shapes = VARIANTS[variant]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{variant} {dtype}".encode()))
    rtol = rtol_for(isa, kw["format"], dtype)
    for n, k in shapes:
        for kind in KINDS:
            w = sparse_weight(kw, n, k, kind, gen).to(dtype)
            packed = pack(w, **kw)
            assert packed.format == kw["format"] and packed.shape == (n, k) and packed.dtype == dtype
            for b in BATCHES:
                x = torch.randn(b, k, generator=gen)
                assert_matches(packed.mm(x), w, x, rtol, f"{isa} {variant} {dtype} {n}x{k} {kind} B={b}")


def test_csr16_wide_uses_two_column_tiles(isa):
    """K = 70000 puts columns in both 65536-column tiles; a value only in the second tile must count."""
    n, k = 2, 70_000
    w = torch.zeros(n, k)
    w[0, 65_536] = 2.0   # first column of tile 1 (local index 0)
    w[0, 69_999] = -3.0  # last column
    w[1, 65_535] = 5.0   # last column of tile 0 (local index 65535: the whole uint16 range)
    w[1, 0] = 1.0
    packed = pack(w, "csr16")
    assert packed.native.weight_bytes > 0 and packed.arrays["ptr"].numel() == n * 2 + 1
    for b in (1, 3, 32):
        x = torch.randn(b, k)
        assert_matches(packed.mm(x), w, x, what=f"{isa} B={b}")
        expect = torch.stack([2 * x[:, 65_536] - 3 * x[:, 69_999], 5 * x[:, 65_535] + x[:, 0]], 1)
        torch.testing.assert_close(packed.mm(x), expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(format="dense"), dict(format="nm", nm=(2, 4)), dict(format="nm", nm=(4, 8)),
                                dict(format="bitmask"), dict(format="csr16"), dict(format="bsr", block=(4, 4)),
                                dict(format="bsr", block=(3, 5)), dict(format="dense_in"), dict(format="bitmask_in")],
                         ids=["dense", "nm2:4", "nm4:8", "bitmask", "csr16", "bsr4x4", "bsr3x5", "dense_in", "bitmask_in"])
def test_two_threads_split_rows_bit_identically(isa, kw):
    """A weight of >= 256 KiB runs on two threads; rows are split (no split reductions), so the result is
    bit-identical to one thread's."""
    gen = torch.Generator().manual_seed(7)
    n, k = 512, 1024
    w = sparse_weight(kw, n, k, "random", gen)
    w[100:140] = 0  # uneven work: the split balances stored values
    packed = pack(w, **kw)
    assert packed.weight_bytes >= 2**18, "too small for the two-thread path"
    for b in (1, 8, 32):
        x = torch.randn(b, k, generator=gen)
        y1 = packed.mm(x, threads=1)
        y2 = packed.mm(x, threads=2)
        assert torch.equal(y1, y2), f"{kw} B={b}: threads=2 differs from threads=1"
        assert torch.equal(packed.mm(x, threads=3), y1)
        assert_matches(y2, w, x, what=f"{isa} {kw} B={b}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", ["dense_in", "bitmask_in"])
def test_input_major_skips_the_inputs_under_the_threshold(isa, fmt, dtype):
    """The input-major kernels give x' @ W.T, x' being x with every entry at or under the threshold in
    magnitude zeroed, and count what they skipped: the inputs under it in every row of the batch, and the
    entries under it. Inputs zero in some rows only are kept for the batch (and zero in those rows)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"skip {fmt} {dtype}".encode()))
    n, k = 300, 203
    w = sparse_weight(dict(format=fmt), n, k, "random", gen).to(dtype)
    packed = pack(w, fmt)
    assert packed.input_major and packed.threshold == 0.0
    for b in (1, 2, 8, 32):
        for threshold in (0.0, 0.5, 1e9):
            x = torch.randn(b, k, generator=gen)
            x[:, ::3] = 0.0          # inputs zero in every row: skipped at any threshold
            x[0, 1::3] = 0.0         # zero in one row only: kept when b > 1
            x[:, 2::7] = -0.0        # negative zeros count as zero
            packed.threshold = threshold
            packed.reset_counts()
            kept = x.abs() > threshold
            want_x = torch.where(kept, x, torch.zeros(()))
            assert_matches(packed.mm(x), w, want_x, what=f"{isa} {fmt} {dtype} B={b} threshold={threshold}")
            counts = packed.activation_counts()
            assert counts == {"calls": 1, "inputs": k, "inputs_skipped": int((~kept.any(0)).sum()),
                              "entries": b * k, "entries_zero": int((~kept).sum())}
    packed.threshold = 0.0
    x = torch.randn(1, k, generator=gen)
    x[0, 5] = float("nan")  # NaN is never under a threshold: it propagates as in a dense product
    assert torch.isnan(packed.mm(x)[0, (w[:, 5] != 0)]).all()


def test_only_input_major_formats_take_a_threshold():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="only the input-major formats"):
        pack(w, "dense").threshold = 0.1
    with pytest.raises(ValueError, match=">= 0"):
        pack(w, "dense_in").threshold = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        pack(w, "bitmask_in").threshold = float("nan")
    assert not pack(w, "bitmask").input_major


@pytest.mark.parametrize("spin_us", [0, 200])
def test_concurrent_calls_from_python_threads(isa, spin_us):
    """mm releases the GIL: calls from several Python threads (with different thread counts) share one
    worker pool and must not disturb each other's results, whether its threads sleep at once between calls
    or spin for the next one first (workers that take no part in a call included)."""
    _native.set_spin_us(spin_us)
    try:
        _concurrent_calls()
    finally:
        _native.set_spin_us(0)
    assert _native.spin_us() == 0


def _concurrent_calls():
    gen = torch.Generator().manual_seed(8)
    w = sparse_weight(dict(format="bitmask"), 512, 1024, "random", gen)
    packed = pack(w, "bitmask")
    xs = [torch.randn(b, 1024, generator=gen) for b in (1, 8, 32)]
    want = [packed.mm(x, threads=1) for x in xs]
    wrong = []

    def work(tid: int) -> None:
        for it in range(60):
            i, threads = (it + tid) % 3, 1 + (it * 7 + tid) % 4
            if not torch.equal(packed.mm(xs[i], threads=threads), want[i]):
                wrong.append((tid, it, threads))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert wrong == []


def test_out_argument_and_non_contiguous_input(isa):
    w = sparse_weight(dict(format="bitmask"), 9, 70, "random", torch.Generator().manual_seed(1))
    packed = pack(w, "bitmask")
    x = torch.randn(70, 5).T  # (5, 70), not contiguous
    out = torch.full((5, 9), float("nan"))
    y = packed.mm(x, out=out)
    assert y is out
    assert_matches(out, w, x)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_activations_are_rejected(fmt):
    w = sparse_weight(dict(format=fmt, nm=(2, 4), block=(4, 4)), 6, 16, "random", torch.Generator().manual_seed(2))
    packed = pack(w, fmt, nm=(2, 4))
    with pytest.raises(ValueError, match="columns"):
        packed.mm(torch.randn(2, 17))
    with pytest.raises(ValueError, match="batch"):
        packed.mm(torch.randn(MAX_BATCH + 1, 16))
    with pytest.raises(ValueError, match="batch"):
        packed.mm(torch.randn(0, 16))
    with pytest.raises(ValueError, match="2-D"):
        packed.mm(torch.randn(16))
    with pytest.raises(ValueError, match="must be"):
        packed.mm(torch.randn(2, 16), out=torch.empty(2, 5))
    # The extension itself takes float32 only; Packed.mm casts activations to float32 first.
    out = torch.empty(2, 6)
    for dt in (torch.float64, torch.bfloat16):
        with pytest.raises((ValueError, TypeError), match="float32"):
            packed.native.mm(torch.randn(2, 16, dtype=dt), out, 1)
    with pytest.raises((ValueError, TypeError), match="float32"):
        packed.native.mm(torch.randn(2, 16), torch.empty(2, 6, dtype=torch.float64), 1)


def test_float64_activations_are_cast_to_float32():
    """Packed.mm documents x as fp32 and casts other float types (SparseLinear relies on it for bf16 models)."""
    w = torch.randn(4, 16)
    packed = pack(w, "dense")
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.equal(packed.mm(x), packed.mm(x.float()))


def test_set_isa_rejects_unknown_and_unsupported_sets():
    before = _native.isa()
    with pytest.raises(ValueError, match=r"nonsense.*known: .*portable"):
        _native.set_isa("nonsense")
    assert _native.isa() == before
    available, compiled = _native.available_isas(), _native.compiled_isas()
    assert available[0] == "portable" and set(available) <= set(compiled) and before in available
    for name in compiled:
        if name not in available:
            with pytest.raises(ValueError, match="does not support"):
                _native.set_isa(name)
            assert _native.isa() == before


def test_pack_errors_are_clear():
    with pytest.raises(PackError, match="K=203 is not a multiple of 4"):
        pack(torch.zeros(5, 203), "nm", nm=(2, 4))
    with pytest.raises(PackError, match="K=204 is not a multiple of 8"):
        pack(torch.zeros(5, 204), "nm", nm=(4, 8))
    with pytest.raises(PackError, match="K=1 is not a multiple of 4"):
        pack(torch.ones(5, 1), "nm", nm=(1, 2))
    w = torch.zeros(3, 8)
    w[1, 4:7] = 1.0  # three nonzeros in one group of four
    with pytest.raises(PackError, match="more than 2 nonzeros"):
        pack(w, "nm", nm=(2, 4))
    with pytest.raises(PackError, match="half of each group"):
        pack(torch.zeros(3, 8), "nm", nm=(1, 4))
    with pytest.raises(PackError, match="unknown format"):
        pack(torch.zeros(3, 8), "coo")
    with pytest.raises(PackError, match="2-D"):
        pack(torch.zeros(2, 3, 8), "dense")
    with pytest.raises(PackError, match="float16"):
        pack(torch.zeros(3, 8, dtype=torch.float16), "bitmask")
    with pytest.raises(PackError, match="tile"):
        pack(torch.zeros(3, 8), "csr16", tile=65537)
    assert issubclass(PackError, ValueError)


# ---------------------------------------------------------------- bytes read


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_bitmask_weight_bytes(dtype):
    n, k = 37, 203
    w = sparse_weight(dict(format="bitmask"), n, k, "zero_rows", torch.Generator().manual_seed(3)).to(dtype)
    vb = torch.finfo(dtype).bits // 8
    nnz = int((w != 0).sum())
    index = n * math.ceil(k / 64) * 8 + (n + 1) * 8  # uint64 mask words per row + int64 row offsets
    packed = pack(w, "bitmask")
    assert nnz * vb + index <= packed.weight_bytes <= (nnz + VALUE_PAD) * vb + index
    assert packed.weight_bytes == (nnz + VALUE_PAD) * vb + index
    assert packed.dense_bytes == n * k * vb


@pytest.mark.parametrize("k", [204, 208, 64])
def test_nm_weight_bytes(k):
    n = 37
    w = sparse_weight(dict(format="nm", nm=(2, 4)), n, k, "random", torch.Generator().manual_seed(4))
    assert pack(w, "nm", nm=(2, 4)).weight_bytes == n * k // 2 * 4 + n * math.ceil(k / 8)
    assert pack(w.bfloat16(), "nm", nm=(2, 4)).weight_bytes == n * k // 2 * 2 + n * math.ceil(k / 8)


@pytest.mark.parametrize("n", [37, 256, 300])
def test_bitmask_in_weight_bytes(n):
    k = 203
    w = sparse_weight(dict(format="bitmask_in"), n, k, "random", torch.Generator().manual_seed(6))
    nnz = int((w != 0).sum())
    index = k * math.ceil(n / 64) * 8 + (k * math.ceil(n / 256) + 1) * 8  # mask words + segment offsets
    assert pack(w, "bitmask_in").weight_bytes == (nnz + VALUE_PAD) * 4 + index
    assert pack(w, "dense_in").weight_bytes == n * k * 4


def test_sparse_formats_read_fewer_bytes_than_dense():
    gen = torch.Generator().manual_seed(5)
    n, k = 64, 256
    for kw in (dict(format="nm", nm=(2, 4)), dict(format="csr16"), dict(format="bsr", block=(4, 4))):
        w = sparse_weight(kw, n, k, "random", gen)
        assert pack(w, **kw).weight_bytes < pack(w, "dense").weight_bytes == n * k * 4, kw
