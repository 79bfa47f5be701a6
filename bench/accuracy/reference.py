"""The dense model's side of KL and answer flips: computed once per model and protocol, then shared.

    ref = reference.obtain(root, job, model, tokenizer)   # on the dense model, before the artifact is applied
    ref.head_inputs, ref.answers, ref.record               # what the evaluate stage compares the pruned model with

An evaluate stage needs, from the dense model, the input of its output head at every scored perplexity
position (for KL: `bench.accuracy.perplexity`) and its answer to every multiple-choice document (for flips:
`bench.accuracy.lmeval.flips`). Both depend only on the model's contents, the perplexity protocol, the task
suite, the seed and the device kind, so they are computed once per such key and written, content-addressed
and atomically, as `<artifacts>/references/<key>.safetensors` (the tensor, plus the answers and the protocol
as JSON metadata). Every stage that uses one records its key, how it was made, and whether it was
computed by this stage or read from an earlier one (`reused`); the bytes are deterministic for the same
key on the same machine, so a reused reference is the one this stage would compute.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the functions that use it: bench.model.artifacts reads FOLDER
    import torch

FOLDER = "references"


@dataclass
class DenseReference:
    head_inputs: torch.Tensor  # (scored tokens, hidden), float32
    answers: dict[str, list[int]]  # multiple-choice task: the dense model's choice per document
    record: dict[str, Any]  # key, protocol, how long it took, reused or not


def reference_key(job, device: torch.device) -> str:
    from bench.spec.jobs import STAGE_VERSIONS, content_key
    from bench.spec.protocols import as_json

    return content_key({"model": job.model.identity(), "perplexity": as_json(job.perplexity),
                        "tasks": as_json(job.tasks) if job.tasks else None, "seed": job.seed,
                        "device": device.type, "code": STAGE_VERSIONS["reference"]}, 32)


def path(root: str | Path, key: str) -> Path:
    return Path(root) / FOLDER / f"{key}.safetensors"


def _read(file: Path) -> DenseReference | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            head_inputs = f.get_tensor("head_inputs")
        return DenseReference(head_inputs, json.loads(meta["answers"]), json.loads(meta["record"]))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError):  # absent, partial or foreign: made again
        return None


def _write(file: Path, ref: DenseReference) -> None:
    from safetensors.torch import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    staging = file.with_name(f".staging-{file.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        save_file({"head_inputs": ref.head_inputs.contiguous()}, str(staging),
                  metadata={"answers": json.dumps(ref.answers), "record": json.dumps(ref.record, default=str)})
        os.replace(staging, file)
    finally:
        staging.unlink(missing_ok=True)


def compute(job, model, tokenizer, key: str, device: torch.device) -> DenseReference:
    """The dense model's head inputs on the perplexity protocol and its answers on the tasks."""
    from bench.accuracy.perplexity import perplexity

    t = time.perf_counter()
    ppl = perplexity(model, tokenizer, job.perplexity, capture=True)
    answers: dict[str, list[int]] = {}
    if job.tasks is not None:
        from bench.accuracy.lmeval import run_tasks_with_answers

        _, answers = run_tasks_with_answers(model, tokenizer, job.tasks.spec, seed=job.seed)
    record = {"key": key, "dense_perplexity": ppl["perplexity"], "tokens_scored": ppl["protocol"]["tokens_scored"],
              "tasks": {task: len(a) for task, a in answers.items()}, "device": device.type,
              "seconds": time.perf_counter() - t}
    return DenseReference(ppl["head_inputs"], answers, record)


def obtain(root: str | Path, job, model, tokenizer, device: torch.device) -> DenseReference:
    """The stored reference for this job's key, or one computed now on `model` (the dense model) and stored."""
    key = reference_key(job, device)
    file = path(root, key)
    ref = _read(file)
    if ref is not None and ref.record.get("key") == key:
        ref.record = {**ref.record, "reused": True}
        return ref
    ref = compute(job, model, tokenizer, key, device)
    _write(file, ref)
    ref.record = {**ref.record, "reused": False}
    return ref
