"""The embedded small world: shipped models reproduce their cards, tasks are frozen, training works."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.model import zoo
from bench.accuracy.perplexity import PerplexitySpec, perplexity
from bench.accuracy.lmeval import SYNTHETIC_DIR, chance, write_task_folder


def test_the_shipped_task_folder_is_what_the_generator_writes(tmp_path):
    written = write_task_folder(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in SYNTHETIC_DIR.iterdir() if p.is_file())
    for path in written:
        assert path.read_bytes() == (SYNTHETIC_DIR / path.name).read_bytes(), path.name


def test_both_architectures_ship():
    tiny = [n for n in zoo.builtin_names() if n not in zoo.GGUF_BUILTINS]
    assert tiny == ["tiny-gpt2", "tiny-llama"]
    archs = {json.loads((zoo.builtin_path(n) / "config.json").read_text())["model_type"] for n in tiny}
    assert archs == {"llama", "gpt2"}
    # a GGUF built-in is listed where its package is installed, and names that package where it is not
    for name in zoo.GGUF_BUILTINS:
        assert (name in zoo.builtin_names()) == zoo.builtin_path(name).is_file()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_shipped_model_reproduces_its_card(name):
    folder = zoo.builtin_path(name)
    card = json.loads((folder / "model_card.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    out = perplexity(model, tok, PerplexitySpec(**zoo.CARD_PERPLEXITY))
    assert out["perplexity"] == pytest.approx(card["dense"]["perplexity"], rel=0.01)
    assert card["dense"]["perplexity_protocol"]["tokens_scored"] == out["protocol"]["tokens_scored"]
    assert {t: s["chance"] for t, s in card["dense"]["tasks"].items()} == {t: chance(t) for t in card["dense"]["tasks"]}


def test_a_short_training_run_end_to_end(tmp_path):
    card = zoo.build("tiny-gpt2", tmp_path / "m", steps=4, seed=3, log=None)
    assert card["recipe"]["steps"] == 4 and card["final_loss"] > 0
    assert json.loads((tmp_path / "m" / "model_card.json").read_text()) == card
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "gpt2"
    assert set(card["dense"]["tasks"]) == {f"synthetic_{a}" for a in ("add", "agree", "brackets", "copy", "recall")}
    assert card["dense"]["perplexity"] > 1


def test_training_is_reproducible(tmp_path):
    a = zoo.build("tiny-llama", tmp_path / "a", steps=3, seed=7, log=None, score=False)
    b = zoo.build("tiny-llama", tmp_path / "b", steps=3, seed=7, log=None, score=False)
    assert a["final_loss"] == b["final_loss"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_unknown_zoo_model():
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="did you mean 'tiny-llama'"):
        zoo.build("tiny-lama", "/nonexistent")
