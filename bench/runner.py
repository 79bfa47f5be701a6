"""Run a grid's jobs on Ray and write each result to the store as it arrives.

    summary = run_grid(spec, jobs, Store(path), address=None)

`ray.init()` starts a local instance unless `address` names a cluster to join. Each job is one Ray task
with the resources its hardware needs (`cpu:N` -> N CPUs, `cuda` -> 1 GPU, `cuda:TYPE` -> 1 GPU of that
accelerator type). At most `max_in_flight` tasks are outstanding; `ray.wait` hands back whichever finishes
first. A lost worker is retried by Ray (`max_retries`); an exception inside a job comes back as a failed
result and is not retried. Only this driver writes to the store. Ctrl-C cancels what is outstanding and
records it as cancelled; a later submit of the same grid runs only what is not done.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError
from bench.jobs import Job
from bench.store import Store


@dataclass
class RunSummary:
    run_id: str
    total: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.counts.get("cancelled")


def resources_for(hardware: str) -> dict[str, Any]:
    """Ray task options for a hardware target."""
    kind, _, arg = hardware.partition(":")
    if kind == "cpu":
        return {"num_cpus": int(arg) if arg else 1}
    opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1}
    if arg:
        opts["accelerator_type"] = arg
    return opts


def _node_can_run(node_resources: dict[str, float], opts: dict[str, Any]) -> bool:
    if node_resources.get("CPU", 0) < opts.get("num_cpus", 0):
        return False
    if node_resources.get("GPU", 0) < opts.get("num_gpus", 0):
        return False
    acc = opts.get("accelerator_type")
    return acc is None or f"accelerator_type:{acc}" in node_resources


def unschedulable(hardware: list[str]) -> dict[str, str]:
    """Hardware targets that no alive node of the connected cluster can ever run, with the reason."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    out = {}
    for hw in hardware:
        opts = resources_for(hw)
        if not any(_node_can_run(r, opts) for r in nodes):
            have = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(r.items()) if not k.startswith(("node:", "memory", "object_store"))) for r in nodes)
            out[hw] = f"no node of the Ray cluster can run hardware '{hw}' (needs {opts}; nodes have: {have or 'none'})"
    return out


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when nothing listens at a Ray address of the form host:port."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"--address: '{address}' is not host:port (e.g. 10.0.0.5:6379), 'auto' or ray://host:10001")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise BenchError(f"--address: no Ray cluster answers at {address} ({err.strerror or err}); "
                         "start one with `ray start --head` or drop --address to run locally") from None


class Progress:
    """One live status line on a terminal; one line per finished job otherwise (logs, CI)."""

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and stream.isatty()
        self.start = time.monotonic()
        self.done = self.failed = self.running = 0

    def _clock(self, s: float) -> str:
        s = int(s)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"

    def line(self) -> str:
        finished = self.done + self.failed
        elapsed = time.monotonic() - self.start
        eta = self._clock(elapsed / finished * (self.total - finished)) if finished else "?"
        width = 24
        filled = int(width * finished / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (f"[{bar}] {finished}/{self.total} · {self.done} done · {self.failed} failed · "
                f"{self.running} running · {self._clock(elapsed)} elapsed · ETA {eta}")

    def update(self, running: int, finished: tuple[Job, dict[str, Any]] | None = None) -> None:
        self.running = running
        if finished is not None:
            job, result = finished
            if result["status"] == "done":
                self.done += 1
            else:
                self.failed += 1
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
        elif finished is not None:
            job, result = finished
            tail = f" ({result.get('duration_s', 0):.1f} s)" if result["status"] == "done" else f": {result.get('error')}"
            self.stream.write(f"[{self.done + self.failed}/{self.total}] {result['status']} {job.describe()}{tail}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K" + self.line() + "\n")
            self.stream.flush()


def init_ray(address: str | None) -> bool:
    """Connect to `address` or start a local instance; True if this call started Ray."""
    import logging

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if address:
        check_address(address)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True,
                 # workers import torch after this is set: see bench.cli.OMP_WAIT_POLICY
                 runtime_env={"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}})
    except ConnectionError as err:
        raise BenchError(f"--address: could not join the Ray cluster at {address}: {err}") from None
    return True


def run_grid(spec, jobs: list[Job], store: Store, *, address: str | None = None, force: bool = False,
             max_in_flight: int | None = None, progress: bool = True, command: str = "") -> RunSummary:
    from bench.provenance import git_state, hardware_fingerprint, package_versions

    statuses = {} if force else store.statuses([j.key for j in jobs])
    todo = [j for j in jobs if statuses.get(j.key) != "done"]
    summary = RunSummary(run_id=uuid.uuid4().hex[:12], total=len(jobs), skipped=len(jobs) - len(todo))
    started = time.monotonic()
    if not todo:
        return summary

    import ray

    started_ray = init_ray(address)
    try:
        blocked = unschedulable(sorted({j.hardware for j in todo}))
        run = {
            "run_id": summary.run_id, "grid_name": spec.name, "grid_file": spec.source, "grid_text": spec.text,
            "command": command, "git": git_state(), "packages": package_versions(), "hardware": hardware_fingerprint(),
            "ray_address": address or "local",
        }
        store.begin_run(run, todo, summary.skipped)
        counts = {"done": 0, "failed": 0, "cancelled": 0}
        for job in [j for j in todo if j.hardware in blocked]:
            store.record_result(job.key, {"status": "failed", "error": f"Unschedulable: {blocked[job.hardware]}"})
            counts["failed"] += 1
            summary.failed.append((job, blocked[job.hardware]))
        queue = [j for j in todo if j.hardware not in blocked]
        if max_in_flight is None:
            max_in_flight = max(2, int(2 * ray.cluster_resources().get("CPU", 1)))
        bar = Progress(len(todo), enabled=progress)
        bar.failed = counts["failed"]
        from bench.execute import run_job

        remote = ray.remote(run_job)
        pending: dict[Any, Job] = {}
        try:
            while queue or pending:
                while queue and len(pending) < max_in_flight:
                    job = queue.pop(0)
                    ref = remote.options(max_retries=2, retry_exceptions=False, **resources_for(job.hardware)).remote(job.to_dict())
                    pending[ref] = job
                bar.update(len(pending))
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as err:  # the worker or node died, retries spent
                        message = " ".join(str(err).split())
                        result = {"status": "failed", "error": f"{type(err).__name__}: {message[:2000]}"}
                    store.record_result(job.key, result)
                    for warning in result.get("warnings") or []:
                        summary.warnings.append(warning)
                        print(f"\nWARNING: {warning}", file=sys.stderr, flush=True)
                    counts[result["status"]] += 1
                    if result["status"] != "done":
                        summary.failed.append((job, result.get("error", "")))
                    bar.update(len(pending), (job, result))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            cancelled = [j.key for j in pending.values()] + [j.key for j in queue]
            store.mark(cancelled, "cancelled", "cancelled by the user (Ctrl-C)")
            counts["cancelled"] = len(cancelled)
            summary.counts = counts
            store.finish_run(summary.run_id, "cancelled", counts)
            bar.close()
            raise
        bar.close()
        summary.counts = counts
        store.finish_run(summary.run_id, "failed" if counts["failed"] else "done", counts)
    finally:
        if started_ray:
            ray.shutdown()
    summary.elapsed_s = time.monotonic() - started
    return summary
