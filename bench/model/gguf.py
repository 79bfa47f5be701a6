"""GGUF files as a model source, through transformers' own GGUF loader, converted once into a plain folder.

    folder = converted("SmolLM2-135M-Instruct.Q4_1.gguf", fingerprint)   # a cached save_pretrained folder
    context_length("model.gguf")                                         # from the file's metadata

Transformers reads a GGUF file with `from_pretrained(dir, gguf_file=NAME)` (model and tokenizer alike) and
dequantizes its tensors to float32, which takes tens of seconds even for a 135M model. The model it
returns carries the GGUF quantizer, and `save_pretrained` refuses a model whose quantizer cannot be
serialised. The weights are plain float tensors by then, so the conversion builds a fresh model from the
same config with the quantization settings removed (`from_config`), loads the dequantized state dict into
it and saves that: an ordinary safetensors folder that every later stage loads in seconds.

The folder is content-addressed by the GGUF file's fingerprint (its bytes) under the model cache,
`$SPARSEBENCH_MODEL_CACHE` or `~/.cache/sparsebench/models`, one per node: it is written to a staging
folder and renamed into place, so a worker never sees half of one, and two workers converting at once
both end with the same complete folder. `gguf-source.json` in it records what it was made from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.errors import BenchError

MAGIC = b"GGUF"
RECORD = "gguf-source.json"


def cache_root() -> Path:
    return Path(os.environ.get("SPARSEBENCH_MODEL_CACHE") or Path.home() / ".cache" / "sparsebench" / "models")


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a readable file that starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def context_length(path: str | Path) -> int | None:
    """`<architecture>.context_length` from the file's metadata (read by the `gguf` package), or None."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = reader.get_field("general.architecture")
        if arch is None:
            return None
        field = reader.get_field(f"{arch.contents()}.context_length")
        return int(field.contents()) if field is not None else None
    except Exception:  # an unreadable header is reported when the model loads, with transformers' reason
        return None


def converted(path: str | Path, fingerprint: str) -> Path:
    """The cached folder of the dequantized model of GGUF file `path`, made now if it is not there yet."""
    path = Path(path)
    folder = cache_root() / f"gguf-{fingerprint}"
    if (folder / RECORD).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-gguf-{fingerprint}-", dir=folder.parent))
    try:
        record = _convert(path, staging)
        (staging / RECORD).write_text(json.dumps({**record, "fingerprint": fingerprint}, indent=1, sort_keys=True))
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / RECORD).is_file():  # not another worker's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(path: Path, out: Path) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    except Exception as err:
        raise BenchError(f"cannot read GGUF file {path}: {type(err).__name__}: {' '.join(str(err).split())}") from err
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: the copy is a plain float32 model
    state = loaded.state_dict()
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise BenchError(f"GGUF file {path}: its tensors do not match the {type(model).__name__} they name "
                         f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"gguf_file": path.name, "gguf_bytes": path.stat().st_size, "transformers": transformers.__version__,
            "architecture": type(model).__name__, "dtype": "float32",
            "note": "weights dequantized by transformers from the GGUF file's quantized tensors"}
