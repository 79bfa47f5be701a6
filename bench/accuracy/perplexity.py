"""Accuracy stage: perplexity under a recorded protocol.

    spec = PerplexitySpec(dataset="builtin:synthetic", split="test", context_length=128, stride=128)
    result = perplexity(model, tokenizer, spec)     # {"perplexity": ..., "protocol": {...}}

Protocol. The split's text is tokenized once without special tokens; with `max_tokens` set, only its first
`max_tokens` tokens are evaluated (a cut split: the record's `tokens_total` is then less than its
`split_tokens`, and the leaderboard's protocol label says "first N of M tokens"). Windows of
`context_length` tokens start every `stride` tokens (with `bos`, each window is a BOS token plus
`context_length - 1` text tokens, and windows advance by at most that many). Each text token is scored exactly once, in the first window where it has
at least one token before it, so with stride == context_length (the GPTQ protocol) the first token of each
window is not scored, and with a smaller stride later tokens see at least context_length - stride tokens
of context. Perplexity is exp of the mean token-level negative log-likelihood over scored tokens. Every
field, and the counts of tokens and windows, is stored with the figure.

KL against the dense model, on the same windows and scored tokens: `capture=True` (on the dense model)
also returns the input of the output head at every scored position (`head_inputs`, tokens x hidden, float32:
a few MB where the logits would be GB); a later call on the pruned model with `reference=head_inputs`
rebuilds the dense distribution through the same, unpruned head and reports the mean over scored tokens of
KL(dense || pruned) in nats, and how often both models' most likely next token agree.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.errors import BenchError
from bench.spec.protocols import PerplexitySpec  # noqa: F401 (the protocol; imported from here too)


class _HeadInputs:
    """Records the input of the model's output head on each forward."""

    def __init__(self, model):
        head = model.get_output_embeddings()
        if head is None:
            raise BenchError(f"{type(model).__name__} has no output head (get_output_embeddings); KL needs one")
        self.head, self.last = head, None
        self.handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self.last = args[0]


def _kl(logprobs: torch.Tensor, dense_logprobs: torch.Tensor) -> tuple[float, int]:
    """Sum over rows of KL(dense || candidate), and how many rows have the same argmax."""
    kl = (dense_logprobs.exp() * (dense_logprobs - logprobs)).sum(-1)
    return float(kl.double().sum()), int((dense_logprobs.argmax(-1) == logprobs.argmax(-1)).sum())


@torch.inference_mode()
def perplexity(model, tokenizer, spec: PerplexitySpec, text: str | None = None, capture: bool = False,
               reference: torch.Tensor | None = None) -> dict[str, Any]:
    from bench.accuracy.data import load_text, provenance

    if text is None:
        text = load_text(spec.dataset, spec.split)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    split_tokens = len(ids)
    if spec.max_tokens is not None:
        ids = ids[: spec.max_tokens]
    n = len(ids)
    if n < 2:
        raise BenchError(f"{spec.dataset} split '{spec.split}' has {n} tokens; perplexity needs at least 2")
    bos_id = None
    if spec.bos:
        bos_id = tokenizer.bos_token_id
        if bos_id is None:
            raise BenchError("the perplexity protocol asks for bos = true but the tokenizer has no BOS token")
    if spec.context_length - (1 if spec.bos else 0) < 1:
        raise BenchError("context_length must leave room for at least one text token")
    hook = _HeadInputs(model) if capture or reference is not None else None
    acc = _Sums(reference, capture)
    try:
        windows = _windows(model, spec, torch.tensor(ids, dtype=torch.long), bos_id, hook, acc)
    finally:
        if hook is not None:
            hook.handle.remove()
    if reference is not None and acc.offset != len(reference):
        raise BenchError(f"the dense reference holds {len(reference)} scored tokens, this run scored {acc.offset}: "
                         "not the same text and protocol")
    mean_nll = acc.nll / acc.scored
    out = {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "protocol": {**spec.to_dict(), "tokens_total": n, "split_tokens": split_tokens, "tokens_scored": acc.scored, "windows": windows,
                     **({"dataset_provenance": source} if (source := provenance(spec.dataset)) else {})},
    }
    if capture:
        out["head_inputs"] = torch.cat(acc.captured)
    if reference is not None:
        out["kl"], out["top1_agreement"] = acc.kl / acc.scored, acc.agree / acc.scored
    return out


class _Sums:
    def __init__(self, reference: torch.Tensor | None, capture: bool):
        self.reference, self.capture = reference, capture
        self.nll, self.scored, self.kl, self.agree, self.offset = 0.0, 0, 0.0, 0, 0
        self.captured: list[torch.Tensor] = []

    def add(self, logprobs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, hook: _HeadInputs | None) -> None:
        self.nll -= float(logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)[keep].double().sum())
        k = int(keep.sum())
        self.scored += k
        if self.capture:
            self.captured.append(hook.last[0, :-1][keep].float().cpu())
        if self.reference is not None:
            dense = self.reference[self.offset:self.offset + k].to(logprobs.device, hook.head.weight.dtype)
            dense_logprobs = torch.log_softmax(hook.head(dense).float(), dim=-1)
            kl, agree = _kl(logprobs[keep], dense_logprobs)
            self.kl += kl
            self.agree += agree
        self.offset += k


def _windows(model, spec: PerplexitySpec, ids_t: torch.Tensor, bos_id, hook, acc: _Sums) -> int:
    """Runs every window, adding to `acc`; returns the number of windows."""
    device = next(model.parameters()).device
    n, shift = len(ids_t), 1 if spec.bos else 0
    width = spec.context_length - shift
    windows, scored_until, begin = 0, 0 if spec.bos else 1, 0  # scored_until: first position not yet scored
    while True:
        end = min(begin + width, n)
        window = ids_t[begin:end]
        if spec.bos:
            window = torch.cat([torch.tensor([bos_id]), window])
        logits = model(window.unsqueeze(0).to(device)).logits[0, :-1].float()  # (T-1, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        positions = torch.arange(begin + 1 - shift, end, device=device)  # text position of each target
        acc.add(logprobs, window[1:].to(device), positions >= scored_until, hook)
        windows += 1
        scored_until = end
        if end >= n:
            return windows
        begin += min(spec.stride, width)  # with BOS a window holds one text token fewer; never skip one
