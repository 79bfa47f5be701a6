"""What `bench submit` says while it works: a line per stage (queued, started, ended) and per finished job,
and a live bar on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.spec.jobs import Job


def stage_label(kind: str, job) -> str:
    """What a stage is, in the words of its job: a prune stage serves every kernel and hardware target of its
    pruned model, an evaluate stage every kernel; a latency stage is one job."""
    acts = f" · activations {job.activations.label}" if job.activations else ""
    what = f"{job.model.name} · {job.method_label} · {job.pattern.label}{acts}"
    if kind == "latency":
        return f"{what} · {job.hardware.label} · {job.kernel} · seed {job.seed}"
    return f"{what} · seed {job.seed}"


class Progress:
    """What a run says while it works: a line when a stage is handed to Ray (queued), when a worker begins
    it (started: it waits until a worker with its resources is free; a latency stage waits for a whole node)
    and when it ends (its kind, what it runs for, when it started, its seconds and peak memory), and one per
    finished job. On a terminal these lines scroll above a live bar of finished jobs (tqdm) with the stages
    running and queued and the time left; in a log they are all there is."""

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and stream.isatty()
        self.start, self.start_wall = time.monotonic(), time.time()
        self.done = self.failed = self.running = self.queued = 0
        self.queued_at: dict[tuple[str, str], float] = {}
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="job", file=stream, dynamic_ncols=True, smoothing=0)

    def _clock(self, s: float) -> str:
        s = int(s)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"

    def line(self) -> str:
        finished = self.done + self.failed
        elapsed = time.monotonic() - self.start
        eta = self._clock(elapsed / finished * (self.total - finished)) if finished else "?"
        return (f"{finished}/{self.total} · {self.done} done · {self.failed} failed · "
                f"{self.running} stages running · {self.queued} queued · {self._clock(elapsed)} elapsed · ETA {eta}")

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line for the user whether or not progress is shown (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=sys.stderr, flush=True)

    def stage_queued(self, kind: str, job) -> None:
        now = time.monotonic()
        self.queued_at[(kind, job.key)] = now
        self._write(f"  {self._clock(now - self.start)} queued {kind} · {stage_label(kind, job)}")

    def stage_started(self, kind: str, job) -> None:
        """A worker has begun the stage (its note reached the driver): how long it waited in Ray's queue."""
        now = time.monotonic()
        since = self.queued_at.pop((kind, job.key), None)
        waited = "" if since is None else f" (queued {now - since:.1f} s)"
        self._write(f"  {self._clock(now - self.start)} started {kind} · {stage_label(kind, job)}{waited}")

    def stage_finished(self, kind: str, job, result: dict[str, Any]) -> None:
        clock = self._clock(time.monotonic() - self.start)
        if result["status"] != "done":
            self._write(f"  {clock} {result['status']} {kind} · {stage_label(kind, job)}: {result.get('error')}")
            return
        peak = result.get("peak_rss_bytes")
        memory = "" if not peak else (f", peak {peak / 2**30:.2f} GiB" +
                                      ("" if result.get("peak_rss_scope") == "stage" else " over the worker's life"))
        began = ""
        if result.get("started_at"):
            from datetime import datetime

            offset = datetime.fromisoformat(result["started_at"]).timestamp() - self.start_wall
            began = f"started {self._clock(max(0.0, offset))}, "
        self._write(f"  {clock} done {kind} · {stage_label(kind, job)} ({began}{result.get('duration_s', 0):.1f} s"
                    f"{memory})")

    def update(self, running: int, finished: tuple[Job, dict[str, Any]] | None = None, queued: int = 0) -> None:
        self.running, self.queued = running, queued
        if finished is not None:
            job, result = finished
            if result["status"] == "done":
                self.done += 1
            else:
                self.failed += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.done} done · {self.failed} failed · {self.running} stages running · "
                                     f"{self.queued} queued", refresh=False)
            self.bar.update(1 if finished is not None else 0)
        if finished is not None:
            job, result = finished
            reused = (result.get("timings") or {}).get("reused_stages")
            note = f"; {', '.join(reused)} reused from the store" if reused else ""
            tail = (f" ({result.get('duration_s', 0):.1f} s in this run{note})" if result["status"] == "done"
                    else f": {result.get('error')}")
            self._write(f"[{self.done + self.failed}/{self.total}] {result['status']} {job.describe()}{tail}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
