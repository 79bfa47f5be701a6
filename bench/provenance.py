"""What produced a number: code version, package versions and the machine."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("sparsebench", "torch", "transformers", "tokenizers", "safetensors", "lm_eval", "accelerate",
            "datasets", "duckdb", "ray", "pandas", "numpy")
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "asimd", "sve")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, object]:
    """The commit of the sparsebench source tree, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent  # the checkout
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features") and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    return info


def hardware_fingerprint() -> dict[str, object]:
    import torch

    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory})
    return {
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_model": cpu.get("model name") or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "isa": sorted(flags & set(ISA_FLAGS)),
        "memory_bytes": mem,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpus": gpus,
    }
