"""The conformance suite every pruning method must pass (`bench check-method NAME`).

    results = check_method("wanda")            # one Check per (architecture, pattern, property)
    assert all(c.ok for c in results)

On small models of several transformers architectures built from configs (Llama, GPT-2, OPT, GPT-NeoX,
Qwen2: different module names, GPT-2's transposed Conv1D, OPT's projections outside the blocks), for each
pattern kind the method supports, it checks:
  - compliance: the harness accepts every target layer (zeros where the mask prunes, the pattern's
    verifier passes) and the measured sparsity reaches the target;
  - untouched: every parameter outside the target layers is bit-for-bit unchanged;
  - deterministic: pruning a fresh copy with the same seed gives bit-identical weights;
  - released: no per-layer state (LayerPruner) outlives the pruning (the harness drops each block's
    pruners when the block is done, so a method that keeps none frees its memory block by block).
"""

from __future__ import annotations

import copy
import gc
import weakref
from dataclasses import dataclass

import torch

from bench.errors import BenchError
from bench.patterns import NM, Block, Channels, Dense, Pattern, Unstructured
from bench.model.walk import target_layers
from bench.prune.harness import prune_model
from bench.registry import method_registry

ARCHITECTURES = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=64),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=16,
                max_position_embeddings=64),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=64),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64),
}
PATTERNS: dict[str, list[Pattern]] = {
    "dense": [Dense()],
    "unstructured": [Unstructured(0.5), Unstructured(0.7, "row")],
    "nm": [NM(2, 4), NM(1, 4)],
    "block": [Block(0.5, 2, 4)],
    "channels": [Channels(0.25)],
}
VOCAB = 97


@dataclass(frozen=True)
class Check:
    architecture: str
    pattern: str
    check: str
    ok: bool
    detail: str = ""


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(arch, vocab_size=VOCAB, **ARCHITECTURES[arch])
    return AutoModelForCausalLM.from_config(config).eval()


def _prune(model, cls, pattern, seed, calibration):
    """Prune and return (report, weakrefs to every LayerPruner the method made)."""
    method = cls(seed=seed)
    made = []
    original = method.pruner

    def tracked(name, weight):
        p = original(name, weight)
        made.append(weakref.ref(p))
        return p

    method.pruner = tracked
    report = prune_model(model, method, pattern, calibration=calibration if cls.needs_calibration else None)
    return report, made


def check_method(name: str, architectures: list[str] | None = None, seed: int = 0) -> list[Check]:
    cls = method_registry().get(name)
    archs = architectures or list(ARCHITECTURES)
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        raise BenchError(f"unknown architecture {unknown[0]!r}; known: {', '.join(ARCHITECTURES)}")
    patterns = [p for kind in cls.patterns for p in PATTERNS.get(kind, [])]
    if not patterns:
        raise BenchError(f"method '{name}' supports no pattern kind the suite knows ({', '.join(cls.patterns)})")
    calibration = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(seed))
    checks: list[Check] = []
    for arch in archs:
        base = tiny_model(arch)
        for pattern in patterns:
            def add(check, ok, detail=""):
                checks.append(Check(arch, pattern.label, check, bool(ok), detail))

            model = copy.deepcopy(base)
            try:
                report, made = _prune(model, cls, pattern, seed, calibration)
            except Exception as err:  # a method's failure is a finding, reported with the others
                add("compliance", False, f"{type(err).__name__}: {err}")
                continue
            short = [x["layer"] for x in report.layers if x["zeros"] < Unstructured(pattern.sparsity).pruned_count(x["numel"])
                     and pattern.kind in ("unstructured", "nm")]
            add("compliance", not short and len(report.layers) == len(target_layers(base)),
                f"{len(report.layers)} layers verified" + (f"; below target: {short[:3]}" if short else ""))

            targets = {n + ".weight" for n, _, _ in target_layers(base)}
            before = dict(base.named_parameters())
            changed = [n for n, p in model.named_parameters() if n not in targets and not torch.equal(p, before[n])]
            add("untouched", not changed, f"changed: {changed[:3]}" if changed else "")

            again = copy.deepcopy(base)
            _prune(again, cls, pattern, seed, calibration)
            differ = [n for (n, a), (_, b) in zip(model.named_parameters(), again.named_parameters()) if not torch.equal(a, b)]
            add("deterministic", not differ, f"differs: {differ[:3]}" if differ else "")

            gc.collect()
            alive = sum(r() is not None for r in made)
            add("released", alive == 0, f"{alive} of {len(made)} layer pruners still alive" if alive else "")
            del model, again
    return checks
