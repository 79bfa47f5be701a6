"""The perplexity protocol scores every token once and records what it did."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.errors import BenchError
from bench.accuracy.perplexity import PerplexitySpec, perplexity


@pytest.fixture(scope="module")
def model_and_tok(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def reference_nll(model, ids, width):
    """Plain, independent computation for non-overlapping windows without BOS."""
    total, count = 0.0, 0
    for start in range(0, len(ids), width):
        window = torch.tensor(ids[start:start + width]).unsqueeze(0)
        if window.shape[1] < 2:
            continue
        with torch.no_grad():
            logits = model(window).logits[0, :-1]
        total += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return total, count


def test_non_overlapping_matches_independent_computation(model_and_tok):
    model, tok = model_and_tok
    spec = PerplexitySpec(context_length=64, stride=64, max_tokens=1000)
    out = perplexity(model, tok, spec)
    ids = tok(__import__("bench.world.language", fromlist=["x"]).split_text("test"), add_special_tokens=False)["input_ids"][:1000]
    total, count = reference_nll(model, ids, 64)
    assert out["protocol"]["tokens_scored"] == count
    assert out["protocol"]["tokens_total"] == 1000
    assert out["protocol"]["windows"] == math.ceil(1000 / 64)
    assert out["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    for field in ("dataset", "split", "context_length", "stride", "bos", "max_tokens"):
        assert field in out["protocol"]


def test_sliding_window_scores_each_token_once(model_and_tok):
    model, tok = model_and_tok
    out = perplexity(model, tok, PerplexitySpec(context_length=64, stride=16, max_tokens=500))
    assert out["protocol"]["tokens_scored"] == 499  # every token but the very first
    # more context per scored token cannot be much worse than non-overlapping windows
    flat = perplexity(model, tok, PerplexitySpec(context_length=64, stride=64, max_tokens=500))
    assert out["perplexity"] < flat["perplexity"] * 1.05


def test_bos_scores_the_first_token_too(model_and_tok):
    model, tok = model_and_tok
    out = perplexity(model, tok, PerplexitySpec(context_length=64, stride=64, max_tokens=300, bos=True))
    assert out["protocol"]["tokens_scored"] == 300


def test_local_text_folder(model_and_tok, tmp_path):
    model, tok = model_and_tok
    (tmp_path / "test.txt").write_text("add 1 plus 2 is 3 .\n" * 50)
    out = perplexity(model, tok, PerplexitySpec(dataset=str(tmp_path), split="test", context_length=32, stride=32))
    assert out["perplexity"] > 1.0
    with pytest.raises(BenchError, match="no validation.txt"):
        perplexity(model, tok, PerplexitySpec(dataset=str(tmp_path), split="validation"))


def test_max_tokens_unset_is_the_whole_split_and_a_cut_says_so(model_and_tok, tmp_path):
    model, tok = model_and_tok
    text = "add 1 plus 2 is 3 . add 2 plus 2 is 4 .\n" * 40
    (tmp_path / "test.txt").write_text(text)
    length = len(tok(text, add_special_tokens=False)["input_ids"])
    whole = perplexity(model, tok, PerplexitySpec(dataset=str(tmp_path), context_length=32, stride=32))
    assert whole["protocol"]["max_tokens"] is None
    assert whole["protocol"]["tokens_total"] == whole["protocol"]["split_tokens"] == length > 200
    cut = perplexity(model, tok, PerplexitySpec(dataset=str(tmp_path), context_length=32, stride=32, max_tokens=100))
    assert (cut["protocol"]["tokens_total"], cut["protocol"]["split_tokens"]) == (100, length)
    # a max_tokens beyond the split's length evaluates it whole, and the record shows that it did
    over = perplexity(model, tok, PerplexitySpec(dataset=str(tmp_path), context_length=32, stride=32, max_tokens=10**6))
    assert over["protocol"]["tokens_total"] == over["protocol"]["split_tokens"] == length
    assert over["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-9)


def test_the_shipped_model_is_far_better_than_uniform():
    from bench.model import zoo

    folder = zoo.builtin_path("tiny-llama")
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    out = perplexity(model, tok, PerplexitySpec(max_tokens=2000))
    assert out["perplexity"] < len(tok) / 10  # uniform guessing gives len(tok)
