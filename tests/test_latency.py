"""Latency stage: statistics in one place, interleaved measurement of candidate and reference."""

import pytest
from transformers import AutoModelForCausalLM

from bench.speed.latency import LatencySpec, measure
from bench.stats import Summary, quantile


def test_summary_from_values():
    s = Summary.from_values([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.count, s.median, s.min, s.max, s.mean) == (5, 3.0, 1.0, 5.0, 3.0)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(4.6)
    assert Summary.from_values([7.0]).stdev == 0.0
    assert quantile([0.0, 10.0], 0.25) == 2.5


def test_measure_reports_both_regimes_with_spread(tiny_model):
    cand = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    spec = LatencySpec(prefill_length=16, prompt_length=4, decode_tokens=3, decode_batch=(1, 2), warmup=1, repeats=3)
    rows = {r["name"]: r for r in measure(cand, ref, spec, cand.config.vocab_size)}
    assert set(rows) == {"prefill_ms", "prefill_speedup", "decode_tok_s_b1", "decode_speedup_b1",
                         "decode_tok_s_b2", "decode_speedup_b2"}
    for r in rows.values():
        assert r["value"] > 0
        d = r["details"]
        assert d["candidate_s"]["count"] == 3 and d["reference_s"]["count"] == 3
        assert d["candidate_s"]["p10"] <= d["candidate_s"]["median"] <= d["candidate_s"]["p90"]
    assert rows["prefill_ms"]["unit"] == "ms" and rows["prefill_ms"]["higher_is_better"] is False
    d = rows["decode_tok_s_b2"]["details"]
    assert rows["decode_tok_s_b2"]["value"] == pytest.approx(2 * 3 / d["candidate_s"]["median"])
    paired = rows["decode_speedup_b1"]["details"]["speedup_paired"]
    assert paired["count"] == 3 and paired["p10"] <= rows["decode_speedup_b1"]["value"] <= paired["p90"]


def test_spec_round_trip():
    spec = LatencySpec(decode_batch=(1, 8))
    assert LatencySpec.from_dict(spec.to_dict()) == spec
