"""Calibration inputs for methods that observe activations (Wanda, SparseGPT, ...).

    tokens = calibration_tokens(tokenizer, CalibrationSpec(samples=32, seq_len=128))   # (32, 128)

`samples` windows of `seq_len` tokens start at seeded random offsets in the tokenized split (the usual
protocol of the pruning papers, which draw 128 windows of 2048 tokens from C4). The spec is part of the
job key and stored with the job.
"""

from __future__ import annotations

import torch

from bench.accuracy.data import load_text
from bench.errors import BenchError
from bench.spec.protocols import CalibrationSpec


def calibration_tokens(tokenizer, spec: CalibrationSpec) -> torch.Tensor:
    ids = tokenizer(load_text(spec.dataset, spec.split), add_special_tokens=False)["input_ids"]
    seq_len, samples = spec.seq_len, spec.samples
    if len(ids) <= seq_len:
        raise BenchError(f"calibration: {spec.dataset} split '{spec.split}' has {len(ids)} tokens, "
                         f"fewer than seq_len {seq_len}")
    gen = torch.Generator().manual_seed(spec.seed)
    starts = torch.randint(0, len(ids) - seq_len, (samples,), generator=gen)
    ids_t = torch.tensor(ids, dtype=torch.long)
    return torch.stack([ids_t[s:s + seq_len] for s in starts.tolist()])  # (samples, seq_len)
