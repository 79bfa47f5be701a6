"""The harness walks any decoder without naming its architecture, and checks every pruned layer."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bench.errors import BenchError
from bench.method import Method, ScorePruner
from bench.patterns import NM, Dense, Unstructured
from bench.model.walk import LayerFilter, find_blocks, target_layers, weight_view
from bench.prune.harness import prune_model
from methods.dense import Dense as DenseMethod
from methods.magnitude import Magnitude

TINY = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64),
}
EXPECTED_PER_BLOCK = {"llama": 7, "gpt2": 4, "opt": 6, "gpt_neox": 4}


def tiny(arch):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, vocab_size=97, **TINY[arch])).eval()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_finds_blocks_and_linears_without_naming_the_architecture(arch):
    model = tiny(arch)
    prefix, blocks = find_blocks(model)
    assert len(blocks) == 2
    layers = target_layers(model)
    assert len(layers) == 2 * EXPECTED_PER_BLOCK[arch]
    names = [n for n, _, _ in layers]
    assert all(n.startswith(prefix + ".") for n in names)
    assert not any("lm_head" in n or "embed" in n or "wte" in n for n in names)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4), Unstructured(0.9)], ids=lambda p: p.label)
def test_magnitude_prunes_exactly_and_leaves_the_rest(arch, pattern):
    model = tiny(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prune_model(model, Magnitude(), pattern)
    targets = {n + ".weight" for n, _, _ in target_layers(model)}
    for name, p in model.named_parameters():
        if name in targets:
            continue
        assert torch.equal(p, before[name]), f"{name} changed but is not a target"
    for layer in report.layers:
        assert layer["zeros"] >= math.ceil(pattern.sparsity * layer["numel"] - 1e-9)
    for name, _, module in target_layers(model):
        pattern.verify(weight_view(module))
    assert abs(report.measured_sparsity - pattern.sparsity) < 0.01


def test_gpt2_conv1d_is_pruned_along_its_input_dimension():
    model = tiny("gpt2")
    prune_model(model, Magnitude(), NM(2, 4))
    _, _, module = target_layers(model)[0]
    assert type(module).__name__ == "Conv1D"
    w = module.weight.t()  # (out, in)
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()


def test_layer_filter_narrows_targets():
    model = tiny("llama")
    only_mlp = LayerFilter(include=("*.mlp.*",))
    assert {n.split(".")[-1] for n, _, _ in target_layers(model, only_mlp)} == {"gate_proj", "up_proj", "down_proj"}
    no_down = LayerFilter(exclude=("*down_proj",))
    assert all("down_proj" not in n for n, _, _ in target_layers(model, no_down))
    with pytest.raises(BenchError, match="no linear layer"):
        target_layers(model, LayerFilter(include=("nothing",)))


def test_dense_method_changes_nothing():
    model = tiny("llama")
    before = [p.clone() for p in model.parameters()]
    report = prune_model(model, DenseMethod(), Dense())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert report.measured_sparsity < 0.01


class Cheater(Method):
    name = "cheater"

    def pruner(self, layer_name, weight):
        class P(ScorePruner):
            def prune(self, w, pattern):
                mask = pattern.mask(w.abs())
                return w, mask  # forgets to zero the pruned weights
        return P(lambda w: w)


class WrongPattern(Method):
    name = "wrong-pattern"

    def pruner(self, layer_name, weight):
        return ScorePruner(lambda w: w.abs())

    patterns = ("nm",)


def test_harness_rejects_a_method_that_breaks_its_promises():
    with pytest.raises(BenchError, match="left nonzero weights where its mask prunes"):
        prune_model(tiny("llama"), Cheater(), Unstructured(0.5))
    with pytest.raises(BenchError, match="does not support the unstructured pattern"):
        prune_model(tiny("llama"), WrongPattern(), Unstructured(0.5))


def test_model_without_blocks_is_reported():
    with pytest.raises(BenchError, match="no stack of transformer blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(3, 3)))
