"""The project's own small models, trained on the synthetic language of `bench.world`.

    bench zoo build tiny-llama --out results/models/tiny-llama            # the recipe's steps
    bench zoo build tiny-llama --out /tmp/m --steps 0                     # untrained, for tests

A model folder is written with `save_pretrained` (config, safetensors weights, tokenizer) plus
`model_card.json` (parameters, recipe, seed, final loss), so it loads through `from_pretrained` like any
hub model. Training is seeded and single-process; the same command on the same machine gives the same
weights.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench import world
from bench.errors import BenchError, did_you_mean

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]

RECIPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "architecture": "llama",
        "config": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 4, "max_position_embeddings": 512, "rope_theta": 10000.0,
                   "tie_word_embeddings": False},
        "train": {"steps": 600, "batch": 16, "seq_len": 128, "lr": 3e-3, "warmup": 50, "weight_decay": 0.1},
    },
}


def make_tokenizer():
    """A word-level tokenizer over the language's fixed vocabulary (every word is one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + world.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def _config(recipe: dict[str, Any], tokenizer):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        recipe["architecture"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **recipe["config"],
    )


def build(name: str, out: str | Path, steps: int | None = None, seed: int = 0, log=print) -> dict[str, Any]:
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    card = {
        "name": name, "architecture": recipe["architecture"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": train, "seed": seed, "train_seconds": time.perf_counter() - t0,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
        "command": f"bench zoo build {name} --out {out.name} --steps {train['steps']} --seed {seed}",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _train(model, tokenizer, train: dict[str, Any], seed: int, log) -> list[float]:
    ids = torch.tensor(tokenizer(world.split_text("train"), add_special_tokens=False)["input_ids"], dtype=torch.long)
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
