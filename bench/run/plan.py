"""The stage graph of a grid: each stage once by content key, the stored ones marked done.

    stages, notes = plan(jobs, stored, artifacts, blocked)   # {stage key: Stage}, what was planned again
    needed_by = dependents(stages)                           # {prune key: the stages that read its artifact}
    record = assemble({"prune": r1, "evaluate": r2})        # a job's record from its stages' results

A job's record is made of up to three stages (bench.run.execute): `prune` (one per pruned model),
`evaluate` (one per pruned model and accuracy protocol) and `latency` (one per pruned model x hardware x
kernel). A stage is shared by every job whose record includes it; when its last stage is in, the driver
assembles the job's record from them (workers only ever return their own stage's result).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.model.artifacts import Artifacts
from bench.spec.hardware import Hardware
from bench.spec.jobs import Job


@dataclass
class Stage:
    kind: str  # prune, evaluate, latency
    key: str
    job: Job  # the job whose spec it runs (the first in grid order that can be scheduled)
    needs: str | None  # the prune stage an evaluate or latency stage reads the artifact of
    jobs: list[Job] = field(default_factory=list)  # every job whose record includes this stage
    state: str = "todo"  # todo, running, done, failed, cancelled
    result: dict[str, Any] | None = None
    rebuild: bool = False  # prune: make the artifact even if a sound one is on disk
    artifact_retried: bool = False  # evaluate/latency: already re-run once after a bad artifact

    @property
    def hardware(self) -> Hardware:
        return self.job.hardware

    def payload(self, artifacts: Artifacts, timeout_s: float | None) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "job": self.job.to_dict(),
                "artifacts": str(artifacts.root), "timeout_s": timeout_s, "rebuild": self.rebuild}


def plan(jobs: list[Job], stored: dict[str, dict[str, Any]], artifacts: Artifacts, blocked: set[Hardware],
         force: bool = False) -> tuple[dict[str, Stage], list[str]]:
    """The stages `jobs` are made of, each once, with the stored ones marked done. A stored prune stage whose
    artifact is missing or truncated is planned again when a stage that still has to run needs it."""
    stages: dict[str, Stage] = {}
    for job in jobs:
        for kind, key in job.stage_keys().items():
            stage = stages.get(key)
            if stage is None:
                stage = stages[key] = Stage(kind, key, job, None if kind == "prune" else job.prune_key, rebuild=force)
            elif stage.job.hardware in blocked and job.hardware not in blocked:
                stage.job = job  # shared stages run on a target some node can run
            stage.jobs.append(job)
    for stage in stages.values():
        if stage.key in stored:
            stage.state, stage.result = "done", stored[stage.key]
    notes, needed_by = [], dependents(stages)
    for stage in stages.values():
        if stage.kind == "prune" and stage.state == "done":
            if any(s.state != "done" for s in needed_by[stage.key]):
                problem = artifacts.check(stage.key)
                if problem:
                    notes.append(f"{problem}: pruning again")
                    stage.state, stage.result, stage.rebuild = "todo", None, True
    return stages, notes


def dependents(stages: dict[str, Stage]) -> dict[str, list[Stage]]:
    """{prune key: the evaluate and latency stages that read its artifact}."""
    out: dict[str, list[Stage]] = {key: [] for key, s in stages.items() if s.kind == "prune"}
    for s in stages.values():
        if s.needs is not None:
            out.setdefault(s.needs, []).append(s)
    return out


def assemble(parts: dict[str, dict[str, Any]], reused: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """A job's record from its stages' results: every stage's metrics, the prune stage's layers, the latency
    stage's kernel provenance, the evaluation's warnings; failed if any stage failed (the first, by name).
    `reused` names the kinds of its stages taken from the store rather than run: the job's `duration_s` is
    this run's, their time counts as zero, and `timings["reused_stages"]` lists them."""
    failed = [(kind, r) for kind, r in parts.items() if r["status"] != "done"]
    timings: dict[str, Any] = {f"{kind}.{k}": v for kind, r in parts.items() for k, v in (r.get("timings") or {}).items()}
    if reused:
        timings["reused_stages"] = sorted(reused)
    result: dict[str, Any] = {
        "metrics": [m for r in parts.values() for m in r.get("metrics", [])],
        "layers": parts.get("prune", {}).get("layers", []),
        "kernel": parts.get("latency", {}).get("kernel"),
        "warnings": [w for r in parts.values() for w in r.get("warnings") or []],
        "timings": timings,
        "duration_s": sum(r.get("duration_s") or 0 for kind, r in parts.items() if kind not in reused),
        "started_at": min((r["started_at"] for r in parts.values() if r.get("started_at")), default=None),
        "finished_at": max((r["finished_at"] for r in parts.values() if r.get("finished_at")), default=None),
        "peak_rss_bytes": max((r.get("peak_rss_bytes") or 0 for r in parts.values()), default=None),
        "worker": {kind: r.get("worker") for kind, r in parts.items()},
        "artifact": parts.get("prune", {}).get("artifact"),
    }
    if failed:
        kind, r = failed[0]
        result.update(status="failed", failure=r.get("failure", "error"), error=f"{kind} stage: {r.get('error')}",
                      traceback=r.get("traceback"))
    else:
        result["status"] = "done"
    return result
