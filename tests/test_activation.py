"""Activation sparsity: the grid's `activations` axis, the teal rule's thresholds, the thresholds in the
forward pass, the kernel backends with them, and a grid with them end to end."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.activation import ActivationMethod, Thresholds, zero_under
from bench.errors import GridError
from bench.grid import expand, parse_grid
from bench.method import Param
from bench.model.walk import target_layers
from bench.registry import activation_registry
from bench.store import Store
from conftest import bench

HEAD = 'models = ["builtin:tiny-llama"]\nmethods = ["magnitude"]\npatterns = ["50%"]\n'


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tokens(seed: int = 1, shape=(4, 24)) -> torch.Tensor:
    return torch.randint(0, 96, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the grid axis


def test_activations_axis_forms_keys_and_calibration():
    spec = parse_grid(HEAD + 'activations = ["none", "teal:0.4", {name = "teal", params = {sparsity = 0.5}}]\n')
    assert [a and a.label for a in spec.activations] == [None, "teal:0.4", "teal:0.5"]
    jobs = expand(spec)
    labels = [(j.method, j.activations_label) for j in jobs]
    assert labels == [("dense", "none"), ("dense", "teal:0.4"), ("dense", "teal:0.5"),
                      ("magnitude", "none"), ("magnitude", "teal:0.4"), ("magnitude", "teal:0.5")]
    assert len({j.key for j in jobs}) == len({j.prune_key for j in jobs}) == 6  # thresholds live in the artifact
    # "none" is the grid without the field: the same keys, so stored weight-only results are reused
    plain = {j.key for j in expand(parse_grid(HEAD))}
    assert {j.key for j in jobs if j.activations is None} == plain
    # every activation rule calibrates, the dense method's included
    assert all(j.calibration is not None for j in jobs if j.activations is not None)
    assert "activations teal:0.5" in jobs[2].describe()
    again = type(jobs[4]).from_dict(jobs[4].to_dict())
    assert again == jobs[4] and again.key == jobs[4].key


@pytest.mark.parametrize("value, field, message", [
    ('["teal:x"]', "activations[0]", "'x' is not a number; write e.g. 'teal:0.5'"),
    ('["cats:0.5"]', "activations[0].name", "unknown activation rule 'cats'; known: none, teal"),
    ('["teal:1.5"]', "activations[0].params.sparsity", "1.5 is above the maximum 0.99"),
    ('[{name = "teal", params = {fraction = 0.5}}]', "activations[0].params.fraction", "unknown parameter of 'teal'"),
    ('["none", "none"]', "activations[1]", "'none' is listed twice"),
    ('["teal:0.5", {name = "teal"}]', "activations[1]", "'teal:0.5' is listed twice"),
    ("[]", "activations", 'must not be empty; give ["none"]'),
    ("[3]", "activations[0]", 'expected "none", a rule such as "teal:0.5" or a table, got 3'),
])
def test_bad_activations_name_the_field(value, field, message):
    with pytest.raises(GridError) as err:
        parse_grid(HEAD + f"activations = {value}\n")
    text = str(err.value)
    assert f": {field}: " in text and message in text and "\n" not in text


def test_exclude_rules_match_on_activations():
    spec = parse_grid(HEAD + 'activations = ["none", "teal:0.5"]\n[[exclude]]\nmethod = "dense"\nactivations = "teal:0.5"\n')
    assert [(j.method, j.activations_label) for j in expand(spec)] == [
        ("dense", "none"), ("magnitude", "none"), ("magnitude", "teal:0.5")]


class ZerosOnly(ActivationMethod):
    """A rule for the test: threshold 0 everywhere (only exact zeros count)."""

    name = "zeros-only"
    version = "3"
    params = {"scale": Param(float, 1.0, min=0.0)}

    def calibrate(self, model, layers, tokens):
        return {name: {"threshold": 0.0, "calibration_sparsity": 0.0} for name in layers}


def test_a_rule_registered_as_a_plugin_is_found_by_the_grid():
    registry = activation_registry()
    registry.register("zeros-only", ZerosOnly)
    try:
        spec = parse_grid(HEAD + 'activations = [{name = "zeros-only", params = {scale = 2}}]\n')
        (act,) = spec.activations
        assert (act.name, act.version, act.params, act.label) == ("zeros-only", "3", {"scale": 2.0}, "zeros-only(scale=2.0)")
        with pytest.raises(GridError, match="takes no NAME:VALUE form"):
            parse_grid(HEAD + 'activations = ["zeros-only:2"]\n')
    finally:
        registry.unregister("zeros-only")
    assert "teal" in registry.names() and registry.distribution("teal")[0] == "sparsebench"


# ---------------------------------------------------------------- thresholds


def test_teal_thresholds_hit_their_target_layer_by_layer():
    """Each layer's threshold zeroes the target fraction of its calibration input as the pruned model
    produces it with the earlier thresholds applied: running the calibration windows again with every
    threshold on reaches, layer by layer, exactly the sparsity the calibration recorded."""
    model, x = tiny_llama(), tokens()
    layers = {name: m for name, _, m in target_layers(model)}
    found = activation_registry().get("teal")(sparsity=0.5).calibrate(model, layers, x)
    assert set(found) == set(layers)
    for name, v in found.items():
        assert v["threshold"] > 0 and 0.5 <= v["calibration_sparsity"] < 0.5 + 1e-3, name
    hooks = Thresholds(model, {n: v["threshold"] for n, v in found.items()})
    with torch.inference_mode():
        model(x, use_cache=False)
    reached = hooks.sparsity()
    hooks.remove()
    assert reached == pytest.approx({n: v["calibration_sparsity"] for n, v in found.items()}, abs=1e-12)
    # thresholds found on the dense model alone differ for the later layers: the earlier zeros count
    alone = {}
    for name, module in layers.items():
        seen = []
        h = module.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].abs().flatten()))
        with torch.inference_mode():
            model(x, use_cache=False)
        h.remove()
        mags = seen[0]
        alone[name] = float(mags.kthvalue(int(0.5 * mags.numel() + 0.999)).values)
    first = next(iter(layers))
    assert alone[first] == pytest.approx(found[first]["threshold"])
    assert any(alone[n] != pytest.approx(found[n]["threshold"]) for n in layers if n != first)


def test_zero_under_and_the_hooks_count_what_they_zero():
    x = torch.tensor([[0.5, -0.2, 0.0, float("nan"), -0.6, 0.3]])
    assert torch.equal(zero_under(x, 0.3).isnan(), x.isnan())
    assert zero_under(x, 0.3)[0, [0, 1, 2, 4, 5]].tolist() == pytest.approx([0.5, 0.0, 0.0, -0.6, 0.0])
    model = torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False))
    hooks = Thresholds(model, {"0": 0.3})
    y = model(x)
    assert torch.isnan(y).all()  # NaN is never under a threshold
    assert hooks.seen == {"0": 6} and hooks.zero == {"0": 3} and hooks.sparsity() == {"0": 0.5}
    hooks.remove()
    assert model(torch.ones(1, 6)).shape == (1, 3) and hooks.seen == {"0": 6}


# ---------------------------------------------------------------- backends


def _pruned_with_thresholds():
    from bench.patterns import Unstructured

    model, x = tiny_llama(seed=3), tokens(seed=4)
    pattern = Unstructured(0.7)  # sparse enough for bitmask_in (BITMASK_IN_FROM)
    with torch.no_grad():
        for _, _, m in target_layers(model):
            m.weight.mul_(pattern.mask(m.weight.abs()))
    layers = {name: m for name, _, m in target_layers(model)}
    found = activation_registry().get("teal")(sparsity=0.5).calibrate(model, layers, x)
    return model, pattern, {n: v["threshold"] for n, v in found.items()}, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_native_kernels_skip_the_inputs_and_match_the_hooks(dtype):
    """On the native backend every layer with a threshold runs an input-major format that applies the
    threshold itself; its outputs match the same model with the thresholds applied by hooks."""
    from bench.speed.backends import Native
    from bench.speed.activations import skipped_inputs

    model, pattern, thresholds, x = _pruned_with_thresholds()
    model = model.to(dtype)
    want_model = copy.deepcopy(model)
    Thresholds(want_model, thresholds, count=False)
    layers = {name: m for name, _, m in target_layers(model)}
    kernel = Native().prepare(model, layers, pattern, batches=(1,), seconds=1.0, thresholds=thresholds)
    Thresholds(model, thresholds, count=False)  # the latency stage's hooks: none on a layer that skips itself
    assert kernel["status"] == "accelerated" and set(kernel["format"]) == {"bitmask_in"}
    assert kernel["activations"] == {"layers": len(layers), "skipped_in_kernel": len(layers), "zeroed_in_front": 0,
                                     "why_not_skipped": {}, "status": "accelerated"}
    assert all(s["activation_threshold"] == "kernel" for s in kernel["shapes"].values())
    ids = x[:1, :1]
    with torch.inference_mode():
        for step in range(3):  # decode steps: one row per call, as the kernels run them
            out = model(ids, use_cache=False).logits[:, -1]
            want = want_model(ids, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.float(), want.float(), rtol=2e-2 if dtype == torch.bfloat16 else 1e-4,
                                       atol=2e-2 if dtype == torch.bfloat16 else 1e-4)
            ids = torch.cat([ids, out.argmax(-1, keepdim=True)], 1)
    counts = skipped_inputs(model)
    assert counts["calls"] > 0 and 0.3 < counts["entries_zero_fraction"] < 0.7
    assert 0 < counts["inputs_skipped"] <= counts["entries_zero"]  # an input is skipped when zero in every row


def test_a_dense_weight_takes_dense_in_and_torch_dense_is_mask_only():
    from bench.patterns import Dense
    from bench.speed.backends import Native, TorchDense

    model, x = tiny_llama(seed=5), tokens(seed=6)
    layers = {name: m for name, _, m in target_layers(model)}
    found = activation_registry().get("teal")(sparsity=0.4).calibrate(model, layers, x)
    thresholds = {n: v["threshold"] for n, v in found.items()}
    native = Native().prepare(copy.deepcopy(model), layers, Dense(), thresholds=thresholds)
    assert native["status"] == "accelerated" and native["format"] == {"dense_in": len(layers)}
    plain = TorchDense().prepare(model, layers, Dense(), thresholds=thresholds)
    assert plain["status"] == "mask only" and plain["activations"]["status"] == "mask only"
    assert plain["activations"]["zeroed_in_front"] == len(layers)
    assert plain["activations"]["why_not_skipped"] == {"torch-dense has no kernel that skips zero inputs": len(layers)}
    assert TorchDense().prepare(model, layers, Dense())["status"] == "dense"  # no rule: the dense model itself


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_grid_with_activations_runs_end_to_end(dashboard_store):
    """Weight-only, activation-only and combined rows from one grid (the dashboard tests' store: `bench
    submit` of tests/conftest.py's DASHBOARD_GRID, with teal:0.5 on dense and magnitude 50%, native): each
    with its activation rule, the sparsity reached on the test data, and the dense model (dense
    activations) as every row's reference."""
    db = dashboard_store
    board = Store(db).leaderboard()
    board = board[(board["kernel"] == "native") & board["method"].isin(["dense", "magnitude"])
                  & board["pattern"].isin(["dense", "50%"])].set_index(["method", "activations"])
    assert sorted(board.index) == [("dense", "none"), ("dense", "teal:0.5"), ("magnitude", "none"),
                                   ("magnitude", "teal:0.5")]
    assert board["activation_sparsity"].isna().tolist() == [a == "none" for _, a in board.index]
    for key in [("dense", "teal:0.5"), ("magnitude", "teal:0.5")]:
        row = board.loc[key]
        assert 0.4 < row["activation_sparsity"] < 0.6 and row["kernel_status"] == "accelerated"
        assert row["perplexity_change_vs_dense"] > 0 and row["kl_vs_dense"] > 0
    assert board.loc[("dense", "none"), "perplexity_change_vs_dense"] == 0  # the reference: dense activations
    assert board.loc[("dense", "none"), "kernel_status"] == "dense"
    # the combined row is worse than either alone
    combined = board.loc[("magnitude", "teal:0.5"), "perplexity"]
    assert combined > max(board.loc[("magnitude", "none"), "perplexity"], board.loc[("dense", "teal:0.5"), "perplexity"])
    store = Store(db)
    kernel = store.query("SELECT kernel_provenance FROM jobs WHERE activations = 'teal:0.5' AND method = 'magnitude'")["kernel_provenance"][0]
    import json

    acts = json.loads(kernel)["activations"]
    assert acts["skipped_in_kernel"] == acts["layers"] > 0 and acts["counts"]["inputs_skipped"] > 0
    layer_rows = store.query("SELECT m.details FROM metrics m JOIN jobs j USING (job_key) WHERE j.activations = "
                             "'teal:0.5' AND j.method = 'magnitude' AND m.name LIKE 'layer_speedup_b1:%'")
    details = [json.loads(d) for d in layer_rows["details"]]
    assert details and all(d["inputs"] == "captured from a decode" and 0 < d["inputs_skipped"] < 1 for d in details)
    assert all(d["ideal_speedup"] > 1 for d in details)
    shown = bench("leaderboard", "--db", db)
    assert shown.returncode == 0 and "teal:0.5" in shown.stdout, shown.stdout + shown.stderr
