"""Run a grid's stage graph on Ray and write each result to the store as it arrives.

    summary = run_grid(spec, jobs, Store(path), artifacts=Artifacts(root), address=None)

A job's record is made of up to three stages (bench.run.execute): `prune` (one per pruned model: model, method,
pattern, calibration, seed), `evaluate` (one per pruned model and accuracy protocol, whatever the hardware)
and `latency` (one per pruned model x hardware x kernel). Stages are keyed by content and shared: a pruned
model is made once, stored as an artifact, and used by its evaluation and by every latency stage. Only
stages missing from the store run; a job's record is written when its last stage finishes.

`ray.init()` starts a local instance unless `address` (else `RAY_ADDRESS`) names a cluster to join. Each stage
is one Ray task with the resources of its hardware target (bench.spec.hardware); a target no alive node can ever run fails its
jobs before anything starts, with the cluster's resources in the message. At most `max_in_flight` tasks
are outstanding; `ray.wait` hands back whichever has news first: each stage is a generator task that
says when a worker begins it, then returns its result. A lost worker or node is retried by Ray
(`max_retries`), an exception inside a stage is not (it comes back as a failed result), a stage killed by
Ray's memory monitor is recorded as out of memory. Only this driver writes to the store, and only one
driver at a time (Store.submit_lock). SIGINT or SIGTERM cancels what is outstanding, records it as
cancelled and leaves the store consistent; a later submit runs only what is missing.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bench.errors import Interrupted
from bench.model.artifacts import Artifacts
from bench.run.cluster import init_ray, timing_cpus, unschedulable
from bench.run.progress import Progress, stage_label  # noqa: F401 (Progress: tests and callers import it here)
from bench.run.plan import Stage, assemble, dependents, plan
from bench.spec.hardware import Hardware
from bench.spec.jobs import Job
from bench.store import Store


@dataclass
class RunSummary:
    run_id: str
    total: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stages: dict[str, int] = field(default_factory=dict)  # ran, reused, failed, cancelled
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.counts.get("cancelled")


def _lost(err: Exception) -> dict[str, Any]:
    """A failed result for a stage whose worker, node or memory Ray gave up on."""
    import ray

    message = " ".join(str(err).split())[:2000]
    if isinstance(err, ray.exceptions.OutOfMemoryError):
        failure, error = "out_of_memory", f"out of memory: Ray's memory monitor killed the worker ({message})"
    elif isinstance(err, ray.exceptions.TaskCancelledError):
        failure, error = "cancelled", f"cancelled: {message}"
    else:
        failure = "lost"
        error = f"{type(err).__name__}: the worker or its node was lost and retries are spent: {message}"
    return {"status": "failed", "failure": failure, "error": error}


class _Signals:
    """SIGINT and SIGTERM set a flag that the scheduling loop checks between store writes, so an interrupt
    never lands in the middle of a transaction."""

    def __init__(self):
        self.received: int | None = None

    def __enter__(self):
        self.previous = {}
        if sys.platform != "win32" and _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._set)
        return self

    def check(self) -> None:
        """Between start-up steps: a signal received so far stops the run here, before anything is dispatched."""
        if self.received is not None:
            raise Interrupted(self.received, started=False)

    def _set(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the cleanup
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_grid(spec, jobs: list[Job], store: Store, *, artifacts: Artifacts, address: str | None = None,
             force: bool = False, max_in_flight: int | None = None, progress: bool = True, command: str = "",
             wait: bool = False) -> RunSummary:
    def waiting(holder: str) -> None:
        print(f"bench: waiting for the other bench process writing {store.path} ({holder})", file=sys.stderr, flush=True)

    from bench.run.cluster import check_address, resolve_address

    address, source = resolve_address(address)
    if address:
        check_address(address, source=source)  # an unreachable cluster is refused before anything is written
    # SIGINT and SIGTERM are caught from here on, start-up included: a signal before the first dispatch ends
    # the run at the next start-up step with one line; after it, the scheduler cancels and records.
    with _Signals() as signals, store.submit_lock(wait=wait, command=command, on_wait=waiting):
        return _run_locked(spec, jobs, store, artifacts, (address, source), force, max_in_flight, progress, command,
                           signals)


def _run_locked(spec, jobs, store, artifacts, cluster, force, max_in_flight, progress, command, signals) -> RunSummary:
    from bench.provenance import git_state, hardware_fingerprint, package_versions

    for run_id in store.close_abandoned_runs():  # we hold the lock: no driver of theirs is alive
        print(f"bench: run {run_id} was still marked running, but its bench submit is gone (killed?): closed it "
              "as abandoned, its unfinished stages and jobs as cancelled", file=sys.stderr, flush=True)
    statuses = {} if force else store.statuses([j.key for j in jobs])
    todo = [j for j in jobs if statuses.get(j.key) != "done"]
    summary = RunSummary(run_id=uuid.uuid4().hex[:12], total=len(jobs), skipped=len(jobs) - len(todo))
    started = time.monotonic()
    if not todo:
        return summary

    import ray

    signals.check()
    address, source = cluster
    started_ray = init_ray(address, oom_retries=spec.max_retries, source=source)
    try:
        signals.check()
        targets = sorted({j.hardware for j in todo}, key=str)
        blocked = unschedulable(targets)
        stored = {} if force else store.stage_results(sorted({k for j in todo for k in j.stage_keys().values()}))
        stages, summary.notes = plan(todo, stored, artifacts, set(blocked), force)
        signals.check()
        for note in summary.notes:
            print(f"bench: {note}", file=sys.stderr, flush=True)
        run = {
            "run_id": summary.run_id, "grid_name": spec.name, "grid_file": spec.source, "grid_text": spec.text,
            "command": command, "git": git_state(), "packages": package_versions(), "hardware": hardware_fingerprint(),
            "ray_address": address or "local",
        }
        store.begin_run(run, todo, summary.skipped)
        sched = _Scheduler(spec, todo, stages, blocked, store, artifacts, summary, progress)
        sched.timing_cpus = timing_cpus(targets)
        store.queue_stages(summary.run_id, [{"key": s.key, "kind": s.kind, "prune_key": s.needs or s.key,
                                             "hardware": s.hardware.label} for s in sched.to_run])
        if max_in_flight is None:
            max_in_flight = max(2, int(2 * ray.cluster_resources().get("CPU", 1)))
        if progress:
            print(f"bench: {len(todo)} jobs to run: {len(sched.to_run)} stages to run, "
                  f"{sched.stage_counts['reused']} reused from the store; dispatching", file=sys.stderr, flush=True)
        sched.run(max_in_flight, signals)
    finally:
        if started_ray:
            ray.shutdown()
    summary.elapsed_s = time.monotonic() - started
    return summary


class _Scheduler:
    def __init__(self, spec, todo: list[Job], stages: dict[str, Stage], blocked: dict[Hardware, str], store: Store,
                 artifacts: Artifacts, summary: RunSummary, progress: bool):
        self.spec, self.stages, self.store, self.artifacts, self.summary = spec, stages, store, artifacts, summary
        self.todo, self.blocked = todo, blocked
        self.counts = {"done": 0, "failed": 0, "cancelled": 0}
        self.stage_counts = {"ran": 0, "reused": sum(s.state == "done" for s in stages.values()), "failed": 0,
                             "cancelled": 0}
        self.finished_jobs: set[str] = set()
        self.bar = Progress(len(todo), enabled=progress)
        self.to_run = [s for s in stages.values() if s.state == "todo"]
        self.needed_by = dependents(stages)
        self.unschedulable = [s for s in self.to_run if s.hardware in blocked]
        self.timing_cpus: dict[Hardware, float] = {}  # CPUs a latency stage reserves, per target
        self.reused = {key for key, s in stages.items() if s.state == "done"}  # taken from the store, not run

    def run(self, max_in_flight: int, signals: "_Signals") -> None:
        import ray

        from bench.run.execute import stage_events

        # A stage stopped by its timeout was interrupted at an arbitrary point (an import half done, say), and
        # its process must not run another stage: with a timeout, every stage gets a fresh worker process.
        # Each stage is a generator task (stage_events): a worker's "started" note, then the stage's result.
        remote = ray.remote(max_calls=1)(stage_events) if self.spec.stage_timeout_s else ray.remote(stage_events)
        for hw, why in self.blocked.items():
            print(f"bench: {why}: its stages are failed now", file=sys.stderr, flush=True)
        with self.store.write() as con:
            for stage in self.unschedulable:  # no node can ever run them: fail now, never leave them pending
                self._finish(stage, {"status": "failed", "failure": "unschedulable",
                                     "error": f"Unschedulable: {self.blocked[stage.hardware]}"}, con)
            for job in self.todo:  # jobs whose every stage is already stored
                self._maybe_finish_job(job, con)
        self.ready = ready = deque(s for s in self.to_run if s.state == "todo" and self._deps_done(s))
        pending: dict[Any, Stage] = {}  # a stage's ObjectRefGenerator: ready when its next object is
        started: set[Any] = set()       # those whose worker has begun them (the rest wait in Ray's queue)
        while (ready or pending) and signals.received is None:
            while ready and len(pending) < max_in_flight:
                stage = ready.popleft()
                if stage.state != "todo":
                    continue
                opts = stage.hardware.ray_options()
                if stage.kind == "latency":  # alone on its node while it times (cluster.timing_cpus)
                    opts["num_cpus"] = self.timing_cpus.get(stage.hardware, opts["num_cpus"])
                ref = remote.options(max_retries=self.spec.max_retries, retry_exceptions=False,
                                     name=f"bench:{stage.kind}", **opts).remote(
                    stage.payload(self.artifacts, self.spec.stage_timeout_s))
                stage.state = "running"
                pending[ref] = stage
                self.bar.stage_queued(stage.kind, stage.job)
            self.bar.update(len(started), queued=len(pending) - len(started))
            done_refs, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if done_refs:  # and whatever else is finished by now: one store transaction for all of them
                done_refs, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            finished = []
            for gen in done_refs:
                if (result := self._news(gen, pending[gen], started)) is not None:
                    finished.append((pending.pop(gen), result))
            if finished:
                with self.store.write() as con:
                    for stage, result in finished:
                        self._finish(stage, result, con)
            for stage, result in finished:
                if result["status"] == "done":
                    ready.extend(s for s in self.needed_by.get(stage.key, ()) if s.state == "todo")
        if signals.received is not None:
            self._cancel(pending, signals.received)
        self.bar.close()
        self.summary.counts, self.summary.stages = self.counts, self.stage_counts
        self.store.finish_run(self.summary.run_id, "failed" if self.counts["failed"] else "done", self.counts)

    def _news(self, gen, stage: Stage, started: set) -> dict[str, Any] | None:
        """The next object of a stage's generator task: None for its worker's "started" note (printed), else
        the stage's result (printed, and `gen` leaves `started`)."""
        import ray

        try:
            result = ray.get(next(gen))
        except StopIteration:  # not reached: stage_events always yields its result
            result = {"status": "failed", "failure": "lost", "error": "the stage returned no result"}
        except ray.exceptions.RayError as err:  # the worker or node died, retries spent; or OOM
            result = _lost(err)
        if result.get("event") == "started":
            started.add(gen)
            self.bar.stage_started(stage.kind, stage.job)
            return None
        started.discard(gen)
        self.bar.stage_finished(stage.kind, stage.job, result)
        return result

    def _note(self, note: str) -> None:
        self.summary.notes.append(note)
        self.bar.note(f"bench: {note}")

    def _deps_done(self, stage: Stage) -> bool:
        return stage.needs is None or self.stages[stage.needs].state == "done"

    def _finish(self, stage: Stage, result: dict[str, Any], con) -> None:
        """Record a stage's outcome, fail what depended on a failed prune stage, and write every job that is
        now complete (all in the caller's transaction `con`)."""
        stage.state, stage.result = result["status"], result
        self.store.record_stage(stage.key, result, con)
        if result["status"] != "done" and result.get("failure") == "artifact" and stage.needs \
                and not stage.artifact_retried:
            # The artifact went bad after it was made (altered, truncated, deleted): make it again, once,
            # then run this stage again.
            prune = self.stages[stage.needs]
            self._note(f"{result['error']}: pruning again")
            stage.state, stage.artifact_retried = "todo", True
            if prune.state == "done":
                prune.state, prune.rebuild = "todo", True
                if prune not in self.to_run:
                    self.to_run.append(prune)
                self.ready.append(prune)
            return
        self.stage_counts["ran" if result["status"] == "done" else "failed"] += 1
        if stage.kind == "prune" and result["status"] == "done" and (result.get("artifact") or {}).get("reused"):
            self._note(f"artifact {stage.key} was already on disk: reused, not pruned again")
        affected = list(stage.jobs)
        if result["status"] != "done":
            skipped = [s for s in self.needed_by.get(stage.key, ()) if s.state == "todo"]
            for s in skipped:
                s.state = "failed"
                s.result = {"status": "failed", "failure": "not_run",
                            "error": f"not run: its prune stage failed ({result.get('error')})"}
                affected += s.jobs
            self.store.mark_stages([s.key for s in skipped], "failed", "not run: its prune stage failed", con)
        for job in affected:
            self._maybe_finish_job(job, con)

    def _maybe_finish_job(self, job: Job, con) -> None:
        if job.key in self.finished_jobs:
            return
        parts = {kind: self.stages[key] for kind, key in job.stage_keys().items()}
        if any(s.state in ("todo", "running") for s in parts.values()):
            return
        result = assemble({kind: s.result for kind, s in parts.items()},
                          reused={kind for kind, s in parts.items() if s.key in self.reused})
        self.finished_jobs.add(job.key)
        self.store.record_result(job.key, result, con)
        for warning in result.get("warnings") or []:
            if warning not in self.summary.warnings:
                self.summary.warnings.append(warning)
                self.bar.note(f"WARNING: {warning}")
        self.counts[result["status"]] += 1
        if result["status"] != "done":
            self.summary.failed.append((job, result.get("error", "")))
        self.bar.update(self.bar.running, (job, result), queued=self.bar.queued)

    def _cancel(self, pending: dict[Any, Stage], signum: int) -> None:
        import ray

        for ref in pending:
            ray.cancel(ref, force=True)
        why = f"cancelled: bench submit received {signal.Signals(signum).name}"
        cancelled = [s for s in self.to_run if s.state in ("todo", "running")]
        for s in cancelled:
            s.state = "cancelled"
        self.stage_counts["cancelled"] = len(cancelled)
        self.store.mark_stages([s.key for s in cancelled], "cancelled", why)
        jobs = [j.key for j in self.todo if j.key not in self.finished_jobs]
        self.store.mark(jobs, "cancelled", why)
        self.counts["cancelled"] = len(jobs)
        self.summary.counts, self.summary.stages = self.counts, self.stage_counts
        self.store.finish_run(self.summary.run_id, "cancelled", self.counts)
        self.bar.close()
        raise Interrupted(signum)
