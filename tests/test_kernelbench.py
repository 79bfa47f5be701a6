"""`bench kernels` and the latency stage on native kernels: rows, provenance and per-shape metrics."""

import json

import pytest

from bench.cli import main
from tests.conftest import FAST_LATENCY, FAST_PPL, write_grid

SMALL = ["kernels", "--shapes", "64x128", "--batch", "1,3", "--sparsity", "0.5,0.9", "--nm", "2:4",
         "--dtype", "float32,bfloat16", "--repeats", "2"]


def test_kernels_json_rows(capsys):
    assert main([*SMALL, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = {(r["dtype"], r["batch"], r["pattern"], r["kernel"], r["format"]) for r in rows}
    for dtype in ("float32", "bfloat16"):
        for b in (1, 3):
            assert {(dtype, b, "dense", "native-dense", "dense"), (dtype, b, "dense", "torch-dense", "dense"),
                    (dtype, b, "50%", "native", "bitmask"), (dtype, b, "90%", "native", "csr16"),
                    (dtype, b, "2:4", "native", "nm")} <= kinds
    # PyTorch's CPU CSR matmul takes float32 only
    assert ("float32", 1, "90%", "torch-csr", "csr (int32)") in kinds
    assert not any(r["kernel"] == "torch-csr" and r["dtype"] == "bfloat16" for r in rows)
    for r in rows:
        t = r["time_s"]
        assert t["count"] == 2 and t["p10"] <= t["median"] <= t["p90"]
        assert r["GBps"] == pytest.approx(r["weight_bytes_read"] / t["median"] / 1e9)
        ci = r["speedup_vs_native_dense_interval"]
        assert ci["lo"] <= r["speedup_vs_native_dense"] <= ci["hi"]
        assert r["verdict_vs_native_dense"] in ("faster", "slower", "no measurable difference")
        assert 0 < r["bandwidth_fraction"]
        if r["pattern"] == "dense" and r["activations"] is None:
            assert r["ideal_speedup"] == pytest.approx(1.0) or r["kernel"] == "torch-dense"
        if r["native_default"]:
            assert r["ideal_speedup"] > 1  # the format the backend picks reads fewer bytes than dense
    # activation sparsity: the input-major formats on activations with that fraction of entries zeroed per row;
    # at batch 1 a zero input is a skipped one, at batch 3 only inputs zero in all three rows are
    acts = {(r["dtype"], r["batch"], r["pattern"], r["format"], r["activations"]): r for r in rows if r["activations"]}
    for dtype in ("float32", "bfloat16"):
        for a in (0.4, 0.5):
            for pat, fmt in (("dense", "dense_in"), ("50%", "bitmask_in"), ("2:4", "bitmask_in")):
                one, three = acts[(dtype, 1, pat, fmt, a)], acts[(dtype, 3, pat, fmt, a)]
                assert abs(one["inputs_skipped"] - a) < 0.1 and three["inputs_skipped"] < one["inputs_skipped"]
                assert one["weight_bytes_read"] == pytest.approx(one["weight_bytes"] * (1 - one["inputs_skipped"]))
                assert one["ideal_speedup"] > (1.4 if pat == "dense" else 2.2) and not one["native_default"]
    assert all(r["inputs_skipped"] is None for r in rows if not r["activations"])
    # exactly one native format per (dtype, batch, pattern) is the one the backend would pick
    chosen = [(r["dtype"], r["batch"], r["pattern"]) for r in rows if r["native_default"]]
    assert len(chosen) == len(set(chosen)) == 2 * 2 * 3


def test_kernels_table_and_save(tmp_path, capsys):
    assert main([*SMALL, "--dtype", "float32", "--save", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs ours" in out and "native-dense" in out and "csr16" in out
    saved = list(tmp_path.glob("kernels-*.json"))
    assert len(saved) == 1 and saved[0].with_suffix(".md").exists()
    body = json.loads(saved[0].read_text())
    assert body["machine"]["isa"] and body["machine"]["read_bandwidth_Bps"]["median"] > 0
    assert body["machine"]["versions"]["torch"] and body["rows"]


@pytest.mark.parametrize("args, field", [
    (["--batch", "64"], "--batch"), (["--nm", "2:8"], "--nm"), (["--shapes", "4096"], "--shapes"),
    (["--sparsity", "1.5"], "--sparsity"), (["--dtype", "float16"], "--dtype"),
    (["--threads", "-1"], "--threads"), (["--batch", ""], "--batch"), (["--shapes", " , "], "--shapes"),
    (["--activations", "1.0"], "--activations"),
])
def test_kernels_bad_options(args, field, capsys, tmp_path):
    assert main(["kernels", "--quick", *args, "--save", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bench: error: {field}") and "\n" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_kernels_lists_backends(capsys):
    assert main(["kernels", "--backends"]) == 0
    described = {json.loads(line)["name"]: json.loads(line) for line in capsys.readouterr().out.splitlines()}
    assert described["native"]["max_batch"] == 32 and described["torch-semi-structured"]["devices"] == ["cuda"]


def test_job_on_native_kernels_records_layers_and_provenance(tiny_model, tmp_path):
    """One whole job, as a worker runs it: 2:4 on the native backend, end to end and per shape."""
    from bench.run.execute import run_job
    from bench.grid import expand, load_grid

    grid = write_grid(tmp_path, f"""
        models = ["{tiny_model}"]
        methods = ["magnitude"]
        patterns = ["2:4"]
        kernels = ["native"]
        dense_baseline = false
        {FAST_PPL}
        {FAST_LATENCY.replace("prefill_length = 32", "prefill_length = 40")}
    """)
    [job] = expand(load_grid(grid))
    result = run_job(job.to_dict(), artifacts=str(tmp_path / "artifacts"))
    assert result["status"] == "done", result.get("error")
    kernel = result["kernel"]
    assert kernel["backend"] == "native" and kernel["status"] == "accelerated"
    chosen = {k.removesuffix(":float32"): c["format"] for k, c in kernel["format_choice"].items()}
    assert all(c["rule"] == "nm" for c in kernel["format_choice"].values()) and not kernel["fallbacks"]
    assert sum(kernel["format"].values()) == len(result["layers"]) and set(kernel["format"]) == set(chosen.values())
    assert kernel["weight_bytes"] < kernel["dense_weight_bytes"]
    assert kernel["calls"]["native"] > 0 and kernel["calls"]["dense_batch_above_max"] > 0  # decode / prefill
    metrics = {m["name"]: m for m in result["metrics"]}
    assert metrics["read_bandwidth_GBps"]["value"] > 0
    for key, shape in kernel["shapes"].items():
        speed, gbps = metrics[f"layer_speedup_b1:{key}"], metrics[f"layer_GBps_b1:{key}"]
        d = speed["details"]
        assert d["format"] == chosen[key] and d["shape"] == key and d["layers_per_sweep"] == shape["layers"]
        assert d["ideal_speedup"] == pytest.approx(shape["dense_weight_bytes"] / shape["weight_bytes"])
        assert d["speedup_paired"]["p10"] <= speed["value"] <= d["speedup_paired"]["p90"]
        assert gbps["value"] == pytest.approx(shape["weight_bytes"] * shape["layers"] / d["candidate_s"]["median"] / 1e9)
        assert d["bandwidth_fraction"] == pytest.approx(gbps["value"] * 1e9 / d["read_bandwidth_Bps"])
        assert d["verdict"] in ("faster", "slower", "no measurable difference") and d["aa"]["count"] == d["rounds"]
    # the end-to-end figure explained: Amdahl from the per-shape speedups, and what lies outside the layers
    predicted, outside = metrics["decode_predicted_speedup_b1"], metrics["decode_outside_share_b1"]
    assert predicted["value"] > 0 and 0 < outside["value"] < 1
    assert set(predicted["details"]["layer_shares"]) == set(kernel["shapes"])
    assert predicted["details"]["bound_from_bytes"] > 1 and predicted["details"]["measured_speedup"] == metrics["decode_speedup_b1"]["value"]
