"""Accuracy stage: perplexity under a recorded protocol.

    spec = PerplexitySpec(dataset="builtin:synthetic", split="test", context_length=128, stride=128)
    result = perplexity(model, tokenizer, spec)     # {"perplexity": ..., "protocol": {...}}

Protocol. The split's text is tokenized once without special tokens and cut to `max_tokens`. Windows of
`context_length` tokens start every `stride` tokens (with `bos`, each window is a BOS token plus
`context_length - 1` text tokens, and windows advance by at most that many). Each text token is scored exactly once, in the first window where it has
at least one token before it, so with stride == context_length (the GPTQ protocol) the first token of each
window is not scored, and with a smaller stride later tokens see at least context_length - stride tokens
of context. Perplexity is exp of the mean token-level negative log-likelihood over scored tokens. Every
field, and the counts of tokens and windows, is stored with the figure.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.errors import BenchError
from bench.spec.protocols import PerplexitySpec  # noqa: F401 (the protocol; imported from here too)


@torch.inference_mode()
def perplexity(model, tokenizer, spec: PerplexitySpec, text: str | None = None) -> dict[str, Any]:
    from bench.accuracy.data import load_text, provenance

    if text is None:
        text = load_text(spec.dataset, spec.split)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: spec.max_tokens]
    n = len(ids)
    if n < 2:
        raise BenchError(f"{spec.dataset} split '{spec.split}' has {n} tokens; perplexity needs at least 2")
    bos_id = None
    if spec.bos:
        bos_id = tokenizer.bos_token_id
        if bos_id is None:
            raise BenchError("the perplexity protocol asks for bos = true but the tokenizer has no BOS token")
    device = next(model.parameters()).device
    shift = 1 if spec.bos else 0
    width = spec.context_length - shift
    if width < 1:
        raise BenchError("context_length must leave room for at least one text token")

    ids_t = torch.tensor(ids, dtype=torch.long)
    nll_sum, scored, windows = 0.0, 0, 0
    scored_until = 0 if spec.bos else 1  # first position not yet scored
    begin = 0
    while True:
        end = min(begin + width, n)
        window = ids_t[begin:end]
        if spec.bos:
            window = torch.cat([torch.tensor([bos_id]), window])
        logits = model(window.unsqueeze(0).to(device)).logits[0, :-1].float()  # (T-1, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = window[1:].to(device)
        positions = torch.arange(begin + 1 - shift, end, device=device)  # text position of each target
        keep = positions >= scored_until
        nll_sum -= float(logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)[keep].double().sum())
        scored += int(keep.sum())
        windows += 1
        scored_until = end
        if end >= n:
            break
        begin += min(spec.stride, width)  # with BOS a window holds one text token fewer; never skip one
    mean_nll = nll_sum / scored
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "protocol": {**spec.to_dict(), "tokens_total": n, "tokens_scored": scored, "windows": windows,
                     **({"dataset_provenance": source} if (source := provenance(spec.dataset)) else {})},
    }
