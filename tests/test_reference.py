"""KL against the dense model and answer flips: the dense side computed once, the figures exact."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.accuracy import cloze, reference
from bench.accuracy.lmeval import flips, run_tasks_with_answers
from bench.accuracy.perplexity import PerplexitySpec, perplexity
from bench.grid import parse_grid

SPEC = PerplexitySpec(context_length=64, stride=48, max_tokens=600)  # overlapping windows: only scored tokens count


@pytest.fixture(scope="module")
def dense_and_pruned(tiny_model):
    dense = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for lin in (m for m in pruned.model.layers.modules() if isinstance(m, torch.nn.Linear)):
            w = lin.weight
            w.mul_(w.abs() > w.abs().flatten().quantile(0.9))
    return dense, pruned, AutoTokenizer.from_pretrained(tiny_model)


def direct_kl(dense, pruned, tok) -> tuple[float, float]:
    """KL(dense || pruned) over the same scored tokens, from both models' full logits side by side."""
    from bench.world.language import split_text

    ids = torch.tensor(tok(split_text("test"), add_special_tokens=False)["input_ids"][:SPEC.max_tokens])
    total, agree, count, scored_until, begin = 0.0, 0, 0, 1, 0
    while True:
        end = min(begin + SPEC.context_length, len(ids))
        window = ids[begin:end].unsqueeze(0)
        with torch.no_grad():
            p = torch.log_softmax(dense(window).logits[0, :-1].double(), -1)
            q = torch.log_softmax(pruned(window).logits[0, :-1].double(), -1)
        keep = torch.arange(begin + 1, end) >= scored_until
        total += float((p.exp() * (p - q)).sum(-1)[keep].sum())
        agree += int((p.argmax(-1) == q.argmax(-1))[keep].sum())
        count += int(keep.sum())
        scored_until = end
        if end >= len(ids):
            return total / count, agree / count
        begin += SPEC.stride


def test_kl_from_head_inputs_equals_kl_from_both_models(dense_and_pruned):
    dense, pruned, tok = dense_and_pruned
    captured = perplexity(dense, tok, SPEC, capture=True)
    assert captured["head_inputs"].shape == (captured["protocol"]["tokens_scored"], dense.config.hidden_size)
    same = perplexity(dense, tok, SPEC, reference=captured["head_inputs"])
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["top1_agreement"] == 1
    assert same["perplexity"] == captured["perplexity"]
    out = perplexity(pruned, tok, SPEC, reference=captured["head_inputs"])
    kl, agree = direct_kl(dense, pruned, tok)
    assert out["kl"] > 1e-3 and out["kl"] == pytest.approx(kl, rel=1e-4), (out["kl"], kl)
    assert out["top1_agreement"] == pytest.approx(agree, abs=1e-9) and agree < 1
    with pytest.raises(Exception, match="not the same text and protocol"):
        perplexity(pruned, tok, PerplexitySpec(context_length=64, stride=64, max_tokens=300),
                   reference=captured["head_inputs"])


def test_the_reference_is_computed_once_and_recomputed_when_damaged(tiny_model, tmp_path):
    grid = (f'methods = ["dense"]\n[[models]]\nname = "tiny"\npath = "{tiny_model}"\n'
            '[evaluation.perplexity]\ncontext_length = 64\nstride = 64\nmax_tokens = 256\n'
            '[evaluation.tasks]\nnames = ["synthetic_add"]\nlimit = 12\n')
    from bench.grid.expand import expand

    job = expand(parse_grid(grid))[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cpu = torch.device("cpu")
    first = reference.obtain(tmp_path, job, model, tok, cpu)
    assert first.record["reused"] is False and first.answers["synthetic_add"] and len(first.answers["synthetic_add"]) == 12
    file = reference.path(tmp_path, first.record["key"])
    second = reference.obtain(tmp_path, job, model, tok, cpu)
    assert second.record["reused"] is True and torch.equal(second.head_inputs, first.head_inputs)
    assert second.answers == first.answers
    file.write_bytes(file.read_bytes()[:100])  # truncated: computed again, not trusted
    third = reference.obtain(tmp_path, job, model, tok, cpu)
    assert third.record["reused"] is False and torch.equal(third.head_inputs, first.head_inputs)
    assert [p.name for p in file.parent.iterdir()] == [file.name]  # no staging file left


def test_answers_are_what_acc_scores_and_flips_count_changed_answers(dense_and_pruned):
    dense, pruned, tok = dense_and_pruned
    from bench.spec.protocols import TasksSpec

    spec = TasksSpec(names=("synthetic_add", "synthetic_agree"), limit=40)
    rows, answers = run_tasks_with_answers(dense, tok, spec, seed=0)
    docs = {t: [json.loads(line) for line in open(f"bench/assets/tasks/synthetic/{t.split('_')[1]}.test.jsonl")][:40]
            for t in answers}
    for r in rows:
        if r["name"].endswith("/acc"):
            task = r["details"]["task"]
            assert r["value"] == pytest.approx(sum(a == d["label"] for a, d in zip(answers[task], docs[task])) / 40)
    _, pruned_answers = run_tasks_with_answers(pruned, tok, spec, seed=0)
    out = {r["name"]: r for r in flips(pruned_answers, answers, {"key": "k"})}
    for task in answers:
        changed = sum(a != b for a, b in zip(pruned_answers[task], answers[task]))
        assert out[f"{task}/flips"]["value"] == changed / 40 and out[f"{task}/flips"]["details"]["flipped"] == changed
    assert {r["value"] for r in flips(answers, answers, {})} == {0}


def test_the_cloze_task_is_frozen_deterministic_and_fair(tmp_path):
    written = cloze.write_task_folder(tmp_path)
    for path in written:  # the shipped folder is exactly what the builder writes
        assert path.read_bytes() == (cloze.FOLDER / path.name).read_bytes(), path.name
    from bench.accuracy import english

    train = set(english.split_text("train").splitlines())
    for split in cloze.SPLITS:
        docs = cloze.documents(split)
        assert len(docs) > (100 if split == "validation" else 250)
        for d in docs:
            assert len(d["choices"]) == len({c.lower() for c in d["choices"]}) == cloze.CHOICES
            assert 0 <= d["label"] < cloze.CHOICES and len(d["prompt"].split()) <= cloze.CONTEXT_WORDS
            assert not any(d["prompt"] in p for p in train)  # never a calibration paragraph
        labels = [d["label"] for d in docs]
        assert max(labels.count(i) for i in range(cloze.CHOICES)) < 0.4 * len(docs)  # the answer is not in one place
    assert cloze.item("Too short to use: a number at the end 42.") is None
    assert cloze.item("Ends on a short word: of it.") is None
    long = " ".join(["word"] * 60) + "."
    assert cloze.item(f"{long} Short one. The last sentence ends in a plain word.") == (
        "Short one. The last sentence ends in a plain", "word")  # whole sentences while they fit
    context, answer = cloze.item(f"{long[:-1]} ending.")
    assert answer == "ending" and context.split() == ["word"] * cloze.CONTEXT_WORDS
