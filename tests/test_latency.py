"""Latency stage: statistics in one place, rounds of candidate, reference and A/A until precise, verdicts, Amdahl."""

import math

import pytest
from transformers import AutoModelForCausalLM

from bench.speed.latency import LatencySpec, amdahl, decode_shares, measure, run_rounds
from bench.stats import VERDICTS, Speedup, Summary, median_interval, quantile


def test_summary_from_values():
    s = Summary.from_values([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.count, s.median, s.min, s.max, s.mean) == (5, 3.0, 1.0, 5.0, 3.0)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(4.6)
    assert Summary.from_values([7.0]).stdev == 0.0
    assert quantile([0.0, 10.0], 0.25) == 2.5


def test_measure_reports_both_regimes_with_intervals_verdicts_and_the_noise_floor(tiny_model):
    cand = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    spec = LatencySpec(prefill_length=16, prompt_length=4, decode_tokens=3, decode_batch=(1, 2), warmup=1, repeats=3,
                       max_repeats=4)
    rows = {r["name"]: r for r in measure(cand, ref, spec, cand.config.vocab_size)}
    assert set(rows) == {"prefill_ms", "prefill_speedup", "aa_prefill_speedup", "decode_tok_s_b1", "decode_speedup_b1",
                         "aa_decode_speedup_b1", "decode_tok_s_b2", "decode_speedup_b2", "aa_decode_speedup_b2"}
    for r in rows.values():
        assert r["value"] > 0
        d = r["details"]
        assert 3 <= d["rounds"] <= 4 and d["candidate_s"]["count"] == d["reference_s"]["count"] == d["rounds"]
        assert d["candidate_s"]["p10"] <= d["candidate_s"]["median"] <= d["candidate_s"]["p90"]
        assert d["stopped_by"] in ("precision", "max_repeats", "max_seconds") and d["cap_hit"] == (d["stopped_by"] != "precision")
        assert d["aa"]["lo"] <= d["aa"]["median"] <= d["aa"]["hi"] and d["by_definition"] is False
        assert d["verdict"] in VERDICTS[:3]
    assert rows["prefill_ms"]["unit"] == "ms" and rows["prefill_ms"]["higher_is_better"] is False
    assert rows["aa_decode_speedup_b1"]["higher_is_better"] is None  # the noise floor is no figure of merit
    d = rows["decode_tok_s_b2"]["details"]
    assert rows["decode_tok_s_b2"]["value"] == pytest.approx(2 * 3 / d["candidate_s"]["median"])
    paired = rows["decode_speedup_b1"]["details"]["speedup_paired"]
    assert paired["lo"] <= rows["decode_speedup_b1"]["value"] == paired["median"] <= paired["hi"]
    assert rows["aa_decode_speedup_b1"]["value"] == rows["decode_speedup_b1"]["details"]["aa"]["median"]


def test_a_dense_candidate_is_one_by_definition_and_only_its_noise_floor_is_timed(tiny_model):
    ref = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    spec = LatencySpec(prefill_length=8, prompt_length=4, decode_tokens=2, decode_batch=(1,), warmup=0, repeats=2,
                       max_repeats=2)
    calls = []
    ref.register_forward_pre_hook(lambda m, a: calls.append(1))
    rows = {r["name"]: r for r in measure(None, ref, spec, ref.config.vocab_size, candidate_is_reference=True)}
    assert rows["decode_speedup_b1"]["value"] == rows["prefill_speedup"]["value"] == 1.0
    d = rows["decode_speedup_b1"]["details"]
    assert d["verdict"] == "dense" and d["by_definition"] is True and d["speedup_paired"] is None
    assert d["rounds"] == 2 and d["aa"]["count"] == 2 and rows["aa_decode_speedup_b1"]["value"] == d["aa"]["median"]
    # two slots (reference, reference again) x two regimes x two rounds: prefill is one forward, decode a
    # prompt and two steps
    assert len(calls) == 2 * 2 * (1 + (1 + 2))


class _Clock:
    """A timer that returns preset seconds per slot, in turn, so the stopping rule is tested exactly."""

    def __init__(self, seconds: dict[str, list[float]]):
        self.seconds = {k: iter(v) for k, v in seconds.items()}

    def __call__(self, fn):
        return next(self.seconds[fn()])


def _slots(*names):
    return {n: (lambda n=n: (lambda: n)) for n in names}


def test_rounds_stop_at_the_precision_once_the_minimum_is_recorded():
    clock = _Clock({"a": [1.0] * 20, "b": [0.5] * 20})
    r = run_rounds(_slots("a", "b"), [("a", "b")], warmup=1, repeats=6, max_repeats=20, precision=0.03,
                   max_seconds=1e9, timer=clock)
    assert (r.rounds, r.stop) == (6, "precision") and r.times["a"] == [1.0] * 6
    assert r.speedup("a", "b").median == 2.0 and r.speedup("a", "b").half_width == 0.0
    assert r.record(0.03)["cap_hit"] is False


def test_rounds_go_on_while_noisy_and_say_which_cap_stopped_them():
    noisy = [1.0, 1.5] * 20
    r = run_rounds(_slots("a", "b"), [("a", "b")], warmup=0, repeats=3, max_repeats=9, precision=0.03,
                   max_seconds=1e9, timer=_Clock({"a": noisy, "b": [1.0] * 40}))
    assert (r.rounds, r.stop) == (9, "max_repeats") and r.record(0.03)["cap_hit"] is True
    r = run_rounds(_slots("a", "b"), [("a", "b")], warmup=0, repeats=3, max_repeats=9, precision=0.03,
                   max_seconds=0.0, timer=_Clock({"a": noisy, "b": [1.0] * 40}))
    assert (r.rounds, r.stop) == (3, "max_seconds")  # the time cap never cuts below the minimum


def test_rounds_alternate_the_order_of_the_slots():
    order = []
    slots = {n: (lambda n=n: (lambda: order.append(n))) for n in "abc"}
    run_rounds(slots, [], warmup=1, repeats=2, max_repeats=2, precision=0.5, max_seconds=1e9)
    assert "".join(order) == "abccbaabc"


def test_median_interval_is_the_order_statistics_with_binomial_coverage():
    assert median_interval(list(range(1, 11))) == (2, 9, pytest.approx(1 - 2 * 11 / 1024))
    lo, hi, cov = median_interval([5.0, 1.0, 3.0, 2.0, 4.0])  # too few for 95%: the whole range, its coverage said
    assert (lo, hi) == (1.0, 5.0) and cov == pytest.approx(1 - 2 / 32)
    for n in range(6, 60):
        lo, hi, cov = median_interval(list(range(n)))
        assert cov >= 0.95 and lo <= (n - 1) / 2 <= hi
        k = lo + 1  # one step narrower would fall below 95%
        if k + 1 <= (n + 1) // 2:
            assert 1 - 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n < 0.95


def test_verdicts_need_the_interval_off_one_and_the_median_beyond_the_noise_floor():
    def sp(ratios):
        return Speedup.from_times(ratios, [1.0] * len(ratios))

    quiet = sp([0.99, 1.0, 1.01, 1.0, 0.995, 1.005, 1.0])
    assert sp([1.30, 1.32, 1.28, 1.31, 1.29, 1.33, 1.30]).verdict(quiet) == "faster"
    assert sp([0.70, 0.72, 0.71, 0.69, 0.70, 0.71, 0.70]).verdict(quiet) == "slower"
    assert sp([0.9, 1.2, 1.0, 1.1, 0.95, 1.05, 1.0]).verdict(quiet) == "no measurable difference"
    # tight and above 1, but inside a wide A/A band: the machine cannot tell it from noise
    wide = sp([0.8, 0.9, 1.0, 1.1, 1.2, 1.25, 0.85])
    assert sp([1.04, 1.05, 1.05, 1.06, 1.05, 1.04, 1.06]).verdict(wide) == "no measurable difference"
    assert sp([1.04, 1.05, 1.05, 1.06, 1.05, 1.04, 1.06]).verdict(quiet) == "faster"


def test_amdahl_from_shares_and_per_shape_speedups():
    shares = {"decode_s": 10.0, "layers_s": {"4x8": 4.0, "8x4": 2.0}}
    got = amdahl(shares, {"4x8": 2.0})  # 8x4 not measured: taken as 1
    assert got["outside_share"] == pytest.approx(0.4)
    assert got["predicted_speedup"] == pytest.approx(1 / (0.4 + 0.4 / 2 + 0.2))
    assert amdahl(shares, {"4x8": 1.0, "8x4": 1.0})["predicted_speedup"] == pytest.approx(1.0)
    bound = amdahl(shares, {}, ideal={"4x8": 4.0, "8x4": 2.0})["bound_from_bytes"]
    assert bound == pytest.approx(1 / (0.4 + 0.4 / 4 + 0.2 / 2))  # every layer at its ideal


def test_decode_shares_time_the_pruned_layers_inside_the_decode(tiny_model):
    from bench.model.walk import target_layers, weight_view

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    spec = LatencySpec(prompt_length=4, decode_tokens=3, decode_batch=(1, 2))
    shares = decode_shares(model, spec, model.config.vocab_size, passes=2)
    shapes = {"x".join(map(str, weight_view(m).shape)) for _, _, m in target_layers(model)}
    for b in (1, 2):
        s = shares[b]
        assert set(s["layers_s"]) == shapes and s["passes"] == 2
        assert 0 < sum(s["layers_s"].values()) < s["decode_s"]
    assert not model._forward_pre_hooks and all(not m._forward_hooks for m in model.modules())  # hooks removed


def test_spec_round_trip():
    spec = LatencySpec(decode_batch=(1, 8))
    assert LatencySpec.from_dict(spec.to_dict()) == spec



def test_each_phase_says_which_kernels_ran_it(tiny_model):
    """A prefill longer than the native kernels' batch limit falls back to PyTorch dense in every layer: that
    phase is "dense fallback", not "accelerated", while the decode runs on the native kernels; a backend
    whose layers count nothing keeps its own status."""
    from bench.model.walk import target_layers
    from bench.patterns import parse_pattern
    from bench.prune.harness import prune_model
    from bench.registry import method_registry
    from bench.speed.backends import Native
    from bench.speed.phases import phase_calls, phase_status
    from bench.speed.packers import MAX_BATCH

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pattern = parse_pattern("2:4")
    prune_model(model, method_registry().get("magnitude")(seed=0), pattern)
    layers = {name: m for name, _, m in target_layers(model)}
    assert Native().prepare(model, layers, pattern, seconds=0)["status"] == "accelerated"
    for prefill, want in ((MAX_BATCH, "accelerated"), (MAX_BATCH + 8, "dense fallback")):
        spec = LatencySpec(prefill_length=prefill, prompt_length=4, decode_tokens=2, decode_batch=(1, 2))
        phases = phase_calls(model, spec, model.config.vocab_size)
        assert set(phases) == {"prefill", "decode_b1", "decode_b2"}
        assert phase_status(phases["prefill"], "accelerated") == want
        assert sum(phases["prefill"].values()) == len(layers)  # one call per layer
        assert phases["decode_b1"] == {"native": 2 * len(layers)} and phases["decode_b2"] == {"native": 2 * len(layers)}
    assert phases["prefill"] == {"dense_batch_above_max": len(layers)}
    assert phase_status({"native": 3, "dense_batch_above_max": 1}, "accelerated") == "partly accelerated"
    assert phase_status({}, "mask only") == "mask only"
