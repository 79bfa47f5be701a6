import math

import pytest
import torch

from bench.patterns import NM, Block, Channels, Dense, PatternViolation, Unstructured, parse_pattern, pattern_from_dict


@pytest.mark.parametrize("text,expected", [
    ("dense", Dense()),
    ("unstructured:0.7", Unstructured(0.7)),
    ("50%", Unstructured(0.5)),
    ("2:4", NM(2, 4)),
    ({"kind": "nm", "n": 1, "m": 4}, NM(1, 4)),
    ({"kind": "unstructured", "target": 0.3, "scope": "row"}, Unstructured(0.3, "row")),
    ({"kind": "block", "target": 0.5, "rows": 2, "cols": 8}, Block(0.5, 2, 8)),
    ({"kind": "channels", "target": 0.25}, Channels(0.25)),
])
def test_parse(text, expected):
    p = parse_pattern(text)
    assert p == expected
    assert pattern_from_dict(p.to_dict()) == p


@pytest.mark.parametrize("value,field,fragment", [
    ("unstructured:1.3", "target", "1.3 is not in [0, 1)"),
    ("4:2", "n", "impossible"),
    ("4:4", "n", "impossible"),
    ("banana", "", "is not a pattern"),
    ({"kind": "blocky"}, "kind", "not a pattern kind"),
    ({"kind": "nm", "n": 2}, "m", "not an integer"),
    ({"kind": "unstructured"}, "target", "missing"),
    ({"kind": "unstructured", "target": 0.5, "scope": "tile"}, "scope", "not one of"),
    ({"kind": "nm", "n": 2, "m": 4, "x": 1}, "x", "unknown field"),
])
def test_parse_errors(value, field, fragment):
    with pytest.raises(ValueError) as info:
        parse_pattern(value)
    assert info.value.args[0] == field
    assert fragment in info.value.args[1]


def test_unstructured_layer_mask_is_exact():
    scores = torch.randn(37, 53, generator=torch.Generator().manual_seed(0))
    for target in (0.0, 0.3, 0.5, 0.9):
        p = Unstructured(target)
        mask = p.mask(scores)
        assert int((~mask).sum()) == math.ceil(target * scores.numel() - 1e-9)
        kept = scores[mask]
        if target > 0:
            assert kept.min() >= scores[~mask].max()
        p.verify(scores * mask)


def test_unstructured_row_scope():
    scores = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    mask = Unstructured(0.4, "row").mask(scores)
    assert ((~mask).sum(dim=1) == 4).all()
    w = scores * mask
    w[0, mask[0]] = 1.0  # row 0 still fine
    Unstructured(0.4, "row").verify(w)
    w2 = scores.clone()
    with pytest.raises(PatternViolation, match="row 0"):
        Unstructured(0.4, "row").verify(w2)


@pytest.mark.parametrize("n,m,k", [(2, 4, 16), (4, 8, 24), (1, 4, 13), (2, 4, 1), (2, 4, 6)])
def test_nm_mask_keeps_n_of_every_m(n, m, k):
    scores = torch.randn(5, k, generator=torch.Generator().manual_seed(2))
    mask = NM(n, m).mask(scores)
    assert mask.shape == scores.shape
    for start in range(0, k, m):
        group = mask[:, start:start + m]
        assert (group.sum(dim=1) == min(n, group.shape[1])).all()
        # the kept ones are the largest of their group
        for r in range(5):
            g = scores[r, start:start + m]
            if group[r].all() or not group[r].any():
                continue
            assert g[group[r]].min() >= g[~group[r]].max()
    NM(n, m).verify(scores * mask)


def test_nm_verify_names_the_offending_group():
    w = torch.ones(3, 8)
    w[:, 1::2] = 0  # 2 of every 4 kept: fine for 2:4
    NM(2, 4).verify(w)
    w[2, 5] = 1.0
    with pytest.raises(PatternViolation, match="row 2, group 1"):
        NM(2, 4).verify(w)


def test_unstructured_verify_counts_zeros():
    w = torch.ones(10, 10)
    w[:5] = 0
    assert Unstructured(0.5).verify(w)["sparsity"] == 0.5
    with pytest.raises(PatternViolation, match="needs at least 70"):
        Unstructured(0.7).verify(w)


def test_ties_are_broken_deterministically():
    scores = torch.ones(4, 8)
    a, b = NM(2, 4).mask(scores), NM(2, 4).mask(scores.clone())
    assert torch.equal(a, b)
    assert torch.equal(Unstructured(0.5).mask(scores), Unstructured(0.5).mask(scores.clone()))


def test_row_counts_never_add_up_to_fewer_zeros_than_the_layer_count():
    for out, k in [(2, 5), (3, 7), (5, 3), (16, 33)]:
        for target in (0.3, 0.5, 0.7):
            scores = torch.randn(out, k, generator=torch.Generator().manual_seed(out * k))
            w = scores * Unstructured(target, "row").mask(scores)
            Unstructured(target).verify(w)


@pytest.mark.parametrize("shape", [(8, 8), (10, 13), (3, 4)])
def test_block_mask_removes_whole_tiles(shape):
    scores = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
    p = Block(0.5, 2, 4)
    mask = p.mask(scores)
    w = scores * mask
    p.verify(w)
    # every tile is all kept or all removed
    from bench.patterns import _tiles
    kept = _tiles(mask.to(torch.int32), 2, 4, -1)
    for tile in kept.reshape(-1, 8):
        real = tile[tile >= 0]
        assert real.sum() in (0, len(real))
    with pytest.raises(PatternViolation, match="tiles are all zero"):
        p.verify(scores)


def test_channels_mask_removes_whole_rows():
    scores = torch.rand(10, 6, generator=torch.Generator().manual_seed(5))
    mask = Channels(0.3).mask(scores)
    assert (mask.all(dim=1) | (~mask).all(dim=1)).all()
    assert int((~mask).all(dim=1).sum()) == 3
    removed = (~mask).all(dim=1)
    assert scores[removed].sum(1).max() <= scores[~removed].sum(1).min()
    Channels(0.3).verify(scores * mask)
    with pytest.raises(PatternViolation, match="output channels are all zero"):
        Channels(0.3).verify(scores)


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "signed_zeros", "nan"])
def test_the_selection_keeps_exactly_what_the_stable_sort_keeps(kind):
    from bench.patterns import _keep_top

    torch.manual_seed(0)
    for shape in [(1, 5000), (40, 300), (3, 65)]:
        s = {"normal": torch.randn(shape), "ties": torch.randint(0, 5, shape).float(), "zeros": torch.zeros(shape),
             "signed_zeros": torch.where(torch.rand(shape) > 0.5, -0.0, 0.0),
             "nan": torch.where(torch.rand(shape) > 0.9, float("nan"), torch.randn(shape))}[kind]
        for n_keep in (0, 1, shape[-1] // 10, shape[-1] // 2, shape[-1] - 1, shape[-1]):
            order = torch.argsort(s, dim=-1, descending=True, stable=True)
            expected = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, order[..., :n_keep], True)
            assert torch.equal(_keep_top(s, n_keep), expected), (shape, n_keep)
