"""Built-in methods do what their papers say, and the harness calibrates block by block."""

import copy

import pytest
import torch

from bench.prune.conformance import tiny_model
from bench.method import LayerPruner, Method
from bench.patterns import NM, Unstructured
from bench.model.walk import target_layers, weight_view
from bench.prune.harness import prune_model
from bench.registry import method_registry
from bench.spec.protocols import LayerFilter, Refinement


def layer_and_inputs(seed=0, out=16, k=32, tokens=256):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, k, generator=g)
    scale = torch.rand(k, generator=g) * 4 + 0.1  # input features of very different size, as in LLMs
    x = torch.randn(tokens, k, generator=g) * scale
    return w, x


def prune_one(name, w, x, pattern, **params):
    method = method_registry().get(name)(seed=0, **params)
    pruner = method.pruner("layer", w)
    for chunk in x.split(64):
        pruner.add_batch(chunk)
    return pruner.prune(w.clone(), pattern)


def output_error(w, pruned, x):
    return float(((x @ w.T - x @ pruned.T) ** 2).sum())


def test_wanda_score_is_weight_times_input_norm_per_row():
    w, x = layer_and_inputs()
    pruned, mask = prune_one("wanda", w, x, Unstructured(0.5))
    score = w.abs() * x.norm(dim=0)
    for r in range(w.shape[0]):
        kept, dropped = score[r][mask[r]], score[r][~mask[r]]
        assert len(dropped) == 16 and kept.min() >= dropped.max()
    assert torch.equal(pruned, w * mask)  # no weight update


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4), Unstructured(0.7)], ids=lambda p: p.label)
def test_reconstruction_error_ordering(pattern):
    """On the calibration inputs: sparsegpt < wanda < magnitude < random (the papers' ordering)."""
    w, x = layer_and_inputs(seed=1, out=32, k=64, tokens=512)
    errors = {name: output_error(w, prune_one(name, w, x, pattern)[0], x)
              for name in ("sparsegpt", "wanda", "magnitude", "random")}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"] < errors["random"], errors


def test_sparsegpt_updates_kept_weights_and_obeys_nm():
    w, x = layer_and_inputs(seed=2, k=30)  # 30 inputs: the last 2:4 group is short
    pruned, mask = prune_one("sparsegpt", w, x, NM(2, 4), blocksize=8)
    NM(2, 4).verify(pruned)
    assert not torch.allclose(pruned[mask], w[mask])  # reconstruction moved the kept weights
    assert (pruned[~mask] == 0).all()


def test_random_is_seeded_per_layer():
    cls = method_registry().get("random")
    w = torch.randn(8, 8)
    a = cls(seed=0).pruner("a", w).prune(w, Unstructured(0.5))[1]
    assert torch.equal(a, cls(seed=0).pruner("a", w).prune(w, Unstructured(0.5))[1])
    assert not torch.equal(a, cls(seed=1).pruner("a", w).prune(w, Unstructured(0.5))[1])
    assert not torch.equal(a, cls(seed=0).pruner("b", w).prune(w, Unstructured(0.5))[1])


class Recorder(Method):
    """Prunes by magnitude and keeps a copy of every input batch each layer observed."""

    name = "recorder"
    needs_calibration = True
    seen: dict = {}

    def pruner(self, layer_name, weight):
        seen = Recorder.seen.setdefault(layer_name, [])

        class P(LayerPruner):
            def add_batch(self, inputs):
                seen.append(inputs.clone())

            def prune(self, w, pattern):
                mask = pattern.mask(w.abs())
                return w * mask, mask
        return P()


ENTRY = {"llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "gpt2": ("attn.c_attn",)}


def capture_inputs(model, tokens, names):
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.setdefault(n, []).append(inp[0].reshape(-1, inp[0].shape[-1])))
             for n, _, m in target_layers(model) if n in names]
    with torch.no_grad():
        for batch in tokens.split(2):
            model(batch, use_cache=False)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_calibration_feeds_each_block_the_outputs_of_the_pruned_block_before(arch):
    """The layers that read a block's input (q/k/v in Llama, c_attn in GPT-2) must observe, during
    calibration, exactly what the fully pruned model feeds them: block i+1 sees pruned block i's outputs.
    (Deeper layers of a block observe the block before it is pruned, as in SparseGPT and Wanda.)"""
    model = tiny_model(arch)
    dense = copy.deepcopy(model)
    tokens = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(0))
    Recorder.seen = {}
    prune_model(model, Recorder(), Unstructured(0.5), calibration=tokens, batch_size=2)
    entry = {n for n, _, _ in target_layers(model) if n.endswith(ENTRY[arch])}
    pruned_inputs = capture_inputs(model, tokens, entry)
    dense_inputs = capture_inputs(dense, tokens, entry)
    for name in entry:
        observed = torch.cat(Recorder.seen[name])
        torch.testing.assert_close(observed, pruned_inputs[name], rtol=1e-5, atol=1e-5)
        if ".1." in name:  # the second block: pruning block 0 changed its inputs
            assert not torch.allclose(observed, dense_inputs[name], atol=1e-4)


def test_calibration_method_without_data_is_refused():
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="needs calibration data"):
        prune_model(tiny_model("llama"), method_registry().get("wanda")(), Unstructured(0.5))


def test_layer_filter_reaches_the_job(untrained_model):
    from bench.grid import expand, parse_grid

    body = (f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\npatterns = ["50%"]\n'
            '[layers]\nexclude = ["*.mlp.down_proj"]\n')
    jobs = expand(parse_grid(body))
    mag = [j for j in jobs if j.method == "magnitude"][0]
    assert mag.layers == LayerFilter(include=("*",), exclude=("*.mlp.down_proj",))
    assert mag.to_dict()["layers"] == {"include": ["*"], "exclude": ["*.mlp.down_proj"]}
    plain = expand(parse_grid(body.split("[layers]")[0]))
    assert [j for j in plain if j.method == "magnitude"][0].key != mag.key


def expected_error(dense, pruned, x):
    """|mean over tokens of the output difference|, summed over rows: what DSnoT minimises."""
    return float(((x @ (dense - pruned).T).mean(dim=0)).abs().sum())


@pytest.mark.parametrize("pattern", [Unstructured(0.5), Unstructured(0.6, "row"), NM(2, 4)], ids=lambda p: p.label)
@pytest.mark.parametrize("base", ["magnitude", "wanda"])
def test_dsnot_reduces_the_expected_error_and_keeps_the_pattern(pattern, base):
    from bench.prune.refine import dsnot

    w, x = layer_and_inputs(seed=3, out=24, k=48, tokens=400)
    x = x + 0.5  # inputs with a nonzero mean, as activations have
    pruned, mask = prune_one(base, w, x, pattern)
    refined, new_mask = dsnot(w, pruned, mask, x.mean(0), x.norm(dim=0), pattern, cycles=30)
    assert expected_error(w, refined, x) < expected_error(w, pruned, x)
    pattern.verify(refined)
    assert torch.equal(mask.sum(1), new_mask.sum(1))  # per-row counts unchanged
    assert (refined[~new_mask] == 0).all() and torch.equal(refined[new_mask], w[new_mask])


def test_owl_allocates_more_to_blocks_with_more_outliers():
    from bench.patterns import parse_pattern

    model = tiny_model("llama")
    # give block 1 strong outliers in its first layer
    with torch.no_grad():
        weight_view(target_layers(model)[7][2])[:, :3] *= 40
    tokens = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    pattern = parse_pattern({"kind": "unstructured", "target": 0.6, "allocation": "owl", "owl_lambda": 0.1})
    report = prune_model(model, method_registry().get("magnitude")(), pattern, calibration=tokens)
    targets = {layer["block"]: layer["target_sparsity"] for layer in report.layers}
    assert targets[1] < targets[0]
    assert sum(targets.values()) / 2 == pytest.approx(0.6)
    assert report.measured_sparsity == pytest.approx(0.6, abs=1e-3)
    for layer in report.layers:
        assert layer["measured_sparsity"] >= layer["target_sparsity"] - 1e-9


def test_refine_and_owl_through_the_grid(untrained_model):
    from bench.errors import GridError
    from bench.grid import expand, parse_grid

    base = f'models = [{{ path = "{untrained_model}" }}]\npatterns = ["2:4", {{kind = "block", target = 0.5}}, {{kind = "unstructured", target = 0.5, allocation = "owl"}}]\n'
    jobs = expand(parse_grid(base + 'methods = [{ name = "magnitude", refine = "dsnot" }]'))
    refined = [j for j in jobs if j.method == "magnitude"]
    assert [j.pattern.label for j in refined] == ["2:4", "50%/owl"]  # DSnoT does not refine block patterns
    assert all(j.refine == Refinement("dsnot", 50) and j.calibration for j in refined)
    assert refined[0].method_label == "magnitude+dsnot"
    plain = [j for j in expand(parse_grid(base + 'methods = ["magnitude"]')) if j.method == "magnitude"]
    assert [j.calibration is not None for j in plain] == [False, False, True]  # OWL measures on calibration data
    with pytest.raises(GridError, match=r"methods\[0\].refine.name: unknown refinement 'dsnt' \(did you mean 'dsnot'\?\)"):
        parse_grid(base + 'methods = [{ name = "magnitude", refine = "dsnt" }]')
    with pytest.raises(GridError, match=r"patterns\[2\].owl_lambda"):
        parse_grid(base.replace('allocation = "owl"', 'allocation = "owl", owl_lambda = 0.9') + 'methods = ["magnitude"]')


@pytest.mark.parametrize("name", ["magnitude", "wanda"])
def test_global_scope_uses_one_threshold_across_layers(name):
    from bench.patterns import parse_pattern

    model = tiny_model("gpt2")
    with torch.no_grad():  # make one layer's weights much larger: a global threshold spares it
        weight_view(target_layers(model)[0][2]).mul_(10)
    tokens = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    pattern = parse_pattern({"kind": "unstructured", "target": 0.5, "scope": "global"})
    cls = method_registry().get(name)
    report = prune_model(model, cls(), pattern, calibration=tokens if cls.needs_calibration else None)
    by_layer = {x["layer"]: x for x in report.layers}
    first = report.layers[0]
    assert first["measured_sparsity"] < 0.1  # the scaled-up layer keeps nearly everything
    assert report.measured_sparsity == pytest.approx(0.5, abs=0.01)
    assert len({round(x["target_sparsity"], 3) for x in by_layer.values()}) > 1


def test_global_scope_needs_scores():
    from bench.errors import BenchError
    from bench.patterns import parse_pattern

    tokens = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(BenchError, match="cannot prune with a global scope"):
        prune_model(tiny_model("llama"), method_registry().get("sparsegpt")(),
                    parse_pattern({"kind": "unstructured", "target": 0.5, "scope": "global"}), calibration=tokens)
