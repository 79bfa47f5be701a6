"""Loading models and tokenizers through transformers' own `from_pretrained`, from a folder or a hub id."""

from __future__ import annotations

import torch

from bench.errors import BenchError
from bench.spec.hardware import Hardware
from bench.spec.jobs import ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(spec: ModelSpec, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": spec.revision} if spec.source == "hub" else {}
    location = spec.location
    if spec.source == "gguf":  # dequantized once per node into a cached folder (bench.model.gguf)
        from bench.model.gguf import converted

        location = str(converted(spec.location, spec.fingerprint))
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=DTYPES[spec.dtype], **kwargs)
    except Exception as err:  # missing files, corrupt weights, unknown architecture: all name the model
        hint = " (is the hub reachable? set HF_HUB_OFFLINE=1 to use only the local cache)" if spec.source == "hub" else ""
        raise BenchError(f"cannot load model '{spec.name}' from {spec.location}: "
                         f"{type(err).__name__}: {' '.join(str(err).split())}{hint}") from err
    return model.to(device).eval(), tokenizer


def device_for(hardware: Hardware) -> torch.device:
    if hardware.device == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"hardware '{hardware}' asks for CUDA but torch sees no CUDA device on this worker")
        return torch.device("cuda")
    return torch.device("cpu")

