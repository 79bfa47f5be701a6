"""The worker process a stage runs in: its peak memory (reset per stage, so that a reused Ray worker
reports the stage's own peak) and where it runs."""

from __future__ import annotations

import os
import resource
from typing import Any


def _reset_peak_rss() -> bool:
    """Start the process's peak resident memory (VmHWM) afresh, so that a reused Ray worker reports the
    stage's own peak, not its lifetime's (Linux: `5` to /proc/self/clear_refs). False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """Peak resident memory since the last `_reset_peak_rss` (VmHWM), else over the process's life."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return None


def _where() -> dict[str, Any]:
    """Which process on which Ray node ran the stage."""
    where: dict[str, Any] = {"pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            where["node_id"] = ctx.get_node_id()
            where["node_ip"] = ray.util.get_node_ip_address()
    except Exception as err:  # provenance must never hide the stage's own outcome
        where["ray_error"] = repr(err)
    return where
