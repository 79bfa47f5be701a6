"""The native backend's format per layer shape: the rule's unless another format measures faster."""

import torch

from bench.patterns import NM, Unstructured
from bench.speed.backends import Native
from bench.speed.choice import alternatives, choose_by_measurement, decide, group_key, rule_format
from bench.stats import Speedup


def _speedup(ratio: float, spread: float = 0.0, n: int = 9) -> Speedup:
    ref = [1.0 + spread * (i % 3 - 1) for i in range(n)]
    return Speedup.from_times(ref, [1.0 / ratio] * n)


def test_a_format_replaces_the_rule_only_where_it_is_faster_at_every_batch():
    clear, noisy = _speedup(1.5), _speedup(1.05, spread=0.3)
    assert clear.lo > 1 and noisy.lo < 1
    assert decide("bitmask", {"csr16": {1: clear, 8: clear}}) == "csr16"
    assert decide("bitmask", {"csr16": {1: clear, 8: noisy}}) == "bitmask"  # not faster at batch 8
    assert decide("bitmask", {"csr16": {1: _speedup(0.7)}}) == "bitmask"  # slower: the rule stays
    assert decide("nm", {"bitmask": {1: _speedup(1.2)}, "csr16": {1: _speedup(1.4)}}) == "csr16"
    assert decide("nm", {}) == "nm"


def test_every_format_that_holds_the_mask_is_a_candidate_the_rules_first():
    w = torch.randn(16, 64)
    assert alternatives(NM(2, 4).mask(w.abs()) * w, NM(2, 4))[0] == ("nm", {"nm": (2, 4)})
    assert [f for f, _ in alternatives(w, NM(2, 4))] == ["nm", "bitmask", "csr16"]
    w70 = Unstructured(0.7).mask(w.abs()) * w
    assert rule_format(w70, Unstructured(0.7))[0] == "csr16"
    assert [f for f, _ in alternatives(w70, Unstructured(0.7))] == ["csr16", "bitmask"]


def test_the_measured_choice_records_what_it_timed_and_why():
    gen = torch.Generator().manual_seed(0)
    pattern = Unstructured(0.5)
    weights = {}
    for i in range(3):
        w = torch.randn(48, 128, generator=gen)
        weights[f"l{i}"] = pattern.mask(w.abs()) * w
    weights["other"] = torch.randn(32, 64, generator=gen).to(torch.bfloat16)
    choice = choose_by_measurement(weights, pattern, batches=(1, 3), seconds=0.2)
    assert set(choice) == {"48x128:float32", "32x64:bfloat16"}
    c = choice["48x128:float32"]
    assert c["rule"] == "bitmask" and c["candidates"] == ["bitmask", "csr16"]
    assert c["layers"] == c["sampled_layers"] == 3
    assert set(c["timing"]) == {"1", "3"} and set(c["timing"]["1"]["median_s"]) == {"bitmask", "csr16"}
    assert c["timing"]["1"]["rounds"] >= 5
    csr = c["speedup_over_rule"]["csr16"]
    assert c["format"] == ("csr16" if all(csr[b]["lo"] > 1 for b in ("1", "3")) else "bitmask")
    assert c["chosen_by"].startswith("measurement" if c["format"] != c["rule"] else "rule")
    # a dense layer has no zeros to skip: nothing is timed
    dense = choose_by_measurement({"d": torch.randn(8, 16)}, Unstructured(0.0))
    assert dense["8x16:float32"]["format"] == "dense" and "timing" not in dense["8x16:float32"]


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 64))


def test_the_backend_runs_each_shape_in_its_chosen_format_and_says_so(monkeypatch):
    pattern = NM(2, 4)
    model = _model()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(pattern.mask(layer.weight.abs()))
    x = torch.randn(1, 64)
    expected = model(x)
    layers = {"0": model[0], "2": model[2]}

    import bench.speed.backends as backends

    real = backends.choose_by_measurement

    def overruled(weights, pattern, batches, seconds):  # as if csr16 had measured faster at one shape
        out = real(weights, pattern, batches, seconds=0.1)
        key = group_key(weights["0"])
        out[key] = {**out[key], "format": "csr16", "kw": {}, "chosen_by": "measurement (test)"}
        return out

    monkeypatch.setattr(backends, "choose_by_measurement", overruled)
    provenance = Native().prepare(model, layers, pattern, batches=(1,))
    choice = provenance["format_choice"]
    assert set(choice) == {"96x64:float32", "64x96:float32"} and "kw" not in choice["96x64:float32"]
    assert choice["96x64:float32"]["rule"] == "nm" and choice["96x64:float32"]["format"] == "csr16"
    other = choice["64x96:float32"]["format"]  # nm, unless bitmask or csr16 really measured faster there
    assert model[0].packed.format == "csr16" and model[2].packed.format == other
    assert provenance["format"] == ({"csr16": 2} if other == "csr16" else {"csr16": 1, other: 1})
    assert provenance["status"] == "accelerated"
    with torch.inference_mode():
        assert torch.allclose(model(x), expected, atol=1e-5)
