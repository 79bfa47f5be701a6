"""One stage of one job, inside a Ray worker: prune, evaluate or time.

    result = run_stage({"kind": "prune", "key": ..., "job": job.to_dict(), "artifacts": "/shared/artifacts",
                        "timeout_s": 600})      # never raises: a failure comes back as {"status": "failed", ...}
    started, result = stage_events(stage)      # as Ray runs it: a "started" note, then the same result

- prune: load the dense model, calibrate, prune, verify every layer, then (with an activation rule) find
  each pruned layer's input threshold on the pruned model; save the artifact (bench.model.artifacts),
  thresholds in its manifest, under the stage's key. If a sound artifact with that key is already there (another store, or a store that
  was lost), it is reused and its manifest's figures are returned.
- evaluate: load the dense model, take its reference for KL and flips (bench.accuracy.reference: stored
  once per model and protocol, computed here on the dense model if absent), apply the artifact in place
  (checksums verified) and its activation thresholds (forward hooks that also count the sparsity they
  reach on the test data, per layer), perplexity and KL vs dense under the recorded protocol, the dense sanity gate,
  lm-eval tasks and the answers that flipped against the dense model.
- latency: load the dense model twice (one copy gets the artifact and the kernel backend, the other is the
  dense reference), time the candidate, the reference and the reference again (A/A, the noise floor) in
  rounds until their intervals are tight or a cap is reached, then the same per layer shape, and predict the
  end-to-end speedup from the per-shape ones and the dense decode's time in the pruned layers (Amdahl). A
  dense job the backend left on the reference's kernels is 1x by definition: only its A/A is timed.

Workers hold no state from the driver and never touch the store; they return a plain dict that the driver
writes. A deterministic error (bad weights, a pattern a layer cannot take, a stage over its timeout) is
returned as a failed result, so Ray does not retry it; only a lost worker is retried by Ray.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Iterator

import torch

from bench.run.worker import _peak_rss_bytes, _reset_peak_rss, _rss_bytes, _where  # noqa: F401
from bench.stats import metric as _metric

STAGES = ("prune", "evaluate", "latency")
# What a failed stage's result says went wrong (`result["failure"]`), so that the scheduler acts on a kind,
# never on the text of a message: a damaged artifact is rebuilt; the others fail the stage's jobs.
FAILURES = ("artifact", "timeout", "out_of_memory", "lost", "cancelled", "unschedulable", "not_run", "error")


class StageTimeout(BaseException):
    """Raised in a stage by its deadline. A BaseException, like KeyboardInterrupt, so that the `except
    Exception` of a library (or of bench.model.load.load_model) does not turn it into another error."""


class _Deadline:
    """Raise StageTimeout in the stage after `seconds` (SIGALRM; only where the stage runs on the main thread,
    as Ray runs tasks). Python code is interrupted at once; a single long native call when it returns."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds if seconds and threading.current_thread() is threading.main_thread() else None

    def _fire(self, signum, frame):
        raise StageTimeout(f"the stage ran past its timeout of {self.seconds:g} s (stage_timeout_s)")

    def __enter__(self):
        if self.seconds:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def stage_events(stage: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The stage as Ray runs it, a generator task: first a note that a worker has begun it (a stage can wait
    in Ray's queue for a worker with its resources, so the driver's progress says when it really began),
    then its result. Both are always yielded, in this order, so a retry replays the same two objects."""
    yield {"event": "started"}
    yield run_stage(stage)


def run_stage(stage: dict[str, Any]) -> dict[str, Any]:
    from bench.accuracy import hub
    from bench.provenance import hardware_fingerprint

    hub.offline_unless_reachable()  # before transformers or datasets touch the network
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    result: dict[str, Any] = {"key": stage.get("key"), "kind": stage.get("kind"), "started_at": started.isoformat(),
                              "peak_rss_scope": "stage" if _reset_peak_rss() else "process"}
    try:
        with _Deadline(stage.get("timeout_s")):
            result.update(RUNNERS[stage["kind"]](stage, timings))
        result["status"] = "done"
    except (Exception, StageTimeout) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        failure = failure_kind(err)
        if failure == "out_of_memory":
            message = f"out of memory in the {stage.get('kind')} stage: {message}"
        result.update(status="failed", failure=failure, error=f"{type(err).__name__}: {message}",
                      traceback=traceback.format_exc())
        if getattr(err, "partial_metrics", None):  # measured before the failure (the perplexity of a stage
            result["metrics"] = err.partial_metrics  # whose lm-eval tasks failed): stored with the failed job
    result["timings"] = timings
    result["duration_s"] = time.perf_counter() - t0
    result["finished_at"] = datetime.now(timezone.utc).isoformat()
    result["peak_rss_bytes"] = _peak_rss_bytes()
    try:
        result["worker"] = {**hardware_fingerprint(), **_where()}
    except Exception as err:
        result["worker"] = {"error": repr(err)}
    return result


def failure_kind(err: BaseException) -> str:
    """One of FAILURES for an exception raised inside a stage."""
    from bench.model.artifacts import ArtifactError

    if isinstance(err, ArtifactError):
        return "artifact"
    if isinstance(err, StageTimeout):
        return "timeout"
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return "out_of_memory"
    return "error"


def _setup(stage: dict[str, Any], timings: dict[str, float]):
    """The job, its device and its dense model, with threads and seed set as the hardware says."""
    from bench.spec.jobs import Job
    from bench.model.load import device_for, load_model

    job = Job.from_dict(stage["job"])  # the one conversion back from the JSON that crossed into the worker
    torch.set_num_threads(job.hardware.threads)
    torch.manual_seed(job.seed)
    device = device_for(job.hardware)
    t = time.perf_counter()
    model, tokenizer = load_model(job.model, device)
    timings["load_s"] = time.perf_counter() - t
    return job, device, model, tokenizer


def _apply_artifact(stage: dict[str, Any], job, model, timings: dict[str, float]) -> dict[str, Any]:
    """The prune stage's artifact applied to `model` in place (checksums verified); its manifest."""
    from bench.model.artifacts import Artifacts

    t = time.perf_counter()
    manifest = Artifacts(stage["artifacts"]).load_into(model, job.prune_key)
    timings["artifact_load_s"] = time.perf_counter() - t
    return manifest


def _pruned(stage: dict[str, Any], timings: dict[str, float]):
    """`_setup`, then the prune stage's artifact applied to the model."""
    job, device, model, tokenizer = _setup(stage, timings)
    return job, device, model, tokenizer, _apply_artifact(stage, job, model, timings)


def _prune(stage: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    from bench.model.artifacts import Artifacts
    from bench.prune.harness import prune_model
    from bench.registry import method_registry

    artifacts = Artifacts(stage["artifacts"])
    key = stage["key"]
    manifest = None if stage.get("rebuild") or artifacts.check(key, deep=True) else artifacts.manifest(key)
    if manifest is not None and isinstance(manifest.get("result"), dict):  # else pruned again, not a KeyError
        return {**manifest["result"], "artifact": {"key": key, "bytes": artifacts.size(key), "reused": True,
                                                   "created_at": manifest.get("created_at")}}
    job, device, model, tokenizer = _setup(stage, timings)
    pattern = job.pattern
    method = method_registry().get(job.method)(seed=job.seed, **job.method_params)
    calibration = None
    if method.needs_calibration or pattern.needs_calibration or job.refine or job.activations:
        from bench.prune.calibration import calibration_tokens

        calibration = calibration_tokens(tokenizer, job.calibration)
    rss_before = _rss_bytes()
    report = prune_model(model, method, pattern, job.layers, calibration=calibration, refine=job.refine)
    timings["prune_s"] = report.seconds
    metrics = [
        _metric("measured_sparsity", report.measured_sparsity, "fraction", None, "prune",
                {"target": pattern.sparsity, "layers": len(report.layers)}),
        _metric("prune_s", report.seconds, "s", False, "prune",
                {"calibration_tokens": int(calibration.numel()) if calibration is not None else 0,
                 "hardware": job.hardware.label}),
        _metric("prune_peak_rss_bytes", _peak_rss_bytes(), "bytes", False, "prune",
                {"rss_before_prune_bytes": rss_before,
                 "cuda_peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                 "note": "peak resident memory of the worker from the start of the stage to the end of pruning"}),
    ]
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight.detach().to("cpu", copy=True) for name in report.rewritten}
    extra = {}
    if job.activations is not None:
        from bench.prune.activations import calibrate_thresholds

        t = time.perf_counter()
        extra["activations"], row = calibrate_thresholds(job, model, calibration)
        metrics.append(row)
        timings["activation_calibration_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = {"metrics": metrics, "layers": report.layers}
    manifest = artifacts.save(key, weights, report.masks, {
        "model": job.model.identity(), "model_name": job.model.name, "prune": job.prune_identity(),
        "made_on": job.hardware.label, "result": result, **extra})
    timings["artifact_save_s"] = time.perf_counter() - t
    return {**result, "artifact": {"key": key, "bytes": artifacts.size(key), "reused": False,
                                   "created_at": manifest["created_at"]}}


def _evaluate(stage: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    from bench.accuracy import reference
    from bench.accuracy.perplexity import perplexity

    job, device, model, tokenizer = _setup(stage, timings)
    t = time.perf_counter()
    task_error = None
    try:
        ref = reference.obtain(stage["artifacts"], job, model, tokenizer, device)  # on the dense model, before the artifact
    except Exception as err:
        if job.tasks is None:
            raise
        # The dense model's tasks failed (they fail the same way on the pruned one): the perplexity and KL
        # are still measured, on a reference without tasks (not stored), and kept with the failure.
        import dataclasses

        task_error = err
        ref = reference.compute(dataclasses.replace(job, tasks=None), model, tokenizer,
                                reference.reference_key(job, device), device)
        ref.record = {**ref.record, "reused": False, "stored": False}
    timings["dense_reference_s"] = time.perf_counter() - t
    manifest = _apply_artifact(stage, job, model, timings)  # in place: one copy of the model at a time
    hooks = None
    if job.activations is not None:
        from bench.activation import Thresholds
        from bench.prune.activations import thresholds_of

        hooks = Thresholds(model, thresholds_of(manifest, job))
    t = time.perf_counter()
    ppl = perplexity(model, tokenizer, job.perplexity, reference=ref.head_inputs)
    timings["perplexity_s"] = time.perf_counter() - t
    # the protocol alone: the leaderboard matches dense references on it (where it ran is in the stage row)
    metrics = [_metric("perplexity", ppl["perplexity"], "ppl", False, "perplexity", ppl["protocol"]),
               _metric("kl_vs_dense", ppl["kl"], "nats/token", False, "perplexity",
                       {**ppl["protocol"], "divergence": "mean over scored tokens of KL(dense || pruned) of the "
                        "next-token distributions", "top1_agreement": ppl["top1_agreement"],
                        "dense_reference": ref.record})]
    if hooks is not None:
        per_layer = hooks.sparsity()
        metrics.append(_metric("activation_sparsity", hooks.overall(), "fraction", None, "perplexity",
                               {**ppl["protocol"], "target": job.activations.target, "rule": job.activations.label,
                                "per_layer": per_layer, "note": "fraction of the pruned layers' input entries at or "
                                "under their thresholds over the perplexity pass (entries weighted alike)"}))
        hooks.reset()  # the tasks below are scored with the thresholds on; their counts are not kept
    warnings = _dense_gate(job, ppl["perplexity"])
    if task_error is not None:
        task_error.partial_metrics = metrics
        raise task_error
    if job.tasks is not None:
        from bench.accuracy.lmeval import flips, run_tasks_with_answers

        t = time.perf_counter()
        try:
            rows, answers = run_tasks_with_answers(model, tokenizer, job.tasks.spec, seed=job.seed)
        except Exception as err:  # the stage fails, but what it measured before is kept with the failure
            err.partial_metrics = metrics
            raise
        metrics += rows + flips(answers, ref.answers, ref.record)
        timings["lm_eval_s"] = time.perf_counter() - t
    return {"metrics": metrics, "warnings": warnings}


def _on_backend(job, manifest, model, layers) -> tuple[dict[str, Any], dict[str, float]]:
    """The pruned `model` with its `layers` on the job's kernel backend, and the activation thresholds (if
    the job has a rule): applied by the kernels that skip inputs, zeroed in front of the other layers (by
    hooks, timed with the model). Returns the backend's provenance and the thresholds."""
    from bench.registry import kernel_registry

    thresholds = {}
    if job.activations is not None:
        from bench.prune.activations import thresholds_of

        thresholds = thresholds_of(manifest, job)
    spec = job.latency
    kernel = kernel_registry().get(job.kernel)().prepare(model, layers, job.pattern, batches=tuple(spec.decode_batch),
                                                        seconds=spec.max_seconds, thresholds=thresholds)
    if thresholds:
        from bench.activation import Thresholds

        Thresholds(model, thresholds, count=False)
    return kernel, thresholds


def _latency(stage: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    from bench.speed.backends import call_counts
    from bench.speed import phases
    from bench.speed.latency import amdahl, decode_shares, ideal_speedup, measure
    from bench.model.load import load_model
    from bench.model.walk import target_layers

    job, device, model, tokenizer, manifest = _pruned(stage, timings)
    t = time.perf_counter()
    layers = {name: module for name, _, module in target_layers(model)}
    spec = job.latency
    kernel, thresholds = _on_backend(job, manifest, model, layers)
    # A dense model whose layers the backend left as they were is the reference itself: 1x by definition.
    same = kernel["status"] == "dense" and all(model.get_submodule(n) is m for n, m in layers.items())
    reference, _ = load_model(job.model, device)
    rows = measure(model, reference, spec, model.config.vocab_size, seed=job.seed, candidate_is_reference=same)
    metrics = []
    if device.type == "cpu" and not same:  # the probe and the per-shape stage time CPU kernels
        from bench.speed.latency import measure_layers, read_bandwidth

        bandwidth = read_bandwidth()
        metrics.append(_metric("read_bandwidth_GBps", bandwidth.median / 1e9, "GB/s", True, "latency",
                               {"bytes_per_s": bandwidth.to_dict(), "threads": torch.get_num_threads(),
                                "probe": "native vector sum over 256 MiB"}))
        inputs = None
        if thresholds:  # the thresholds act on real activations: each layer is timed on its own
            from bench.speed.activations import capture_inputs

            inputs = capture_inputs(model, list(layers), spec, model.config.vocab_size, seed=job.seed)
        layer_rows = measure_layers(model, reference, kernel, spec, bandwidth.median, seed=job.seed, inputs=inputs)
        rows += layer_rows
        shares = decode_shares(reference, spec, model.config.vocab_size, seed=job.seed)
        measured = {r["name"]: r for r in rows}
        for b, share in shares.items():
            batch_rows = [r for r in layer_rows if r["name"].startswith(f"layer_speedup_b{b}:")]
            per_shape = {r["details"]["shape"]: r["value"] for r in batch_rows}
            # the bound from bytes: per shape, what its kernel read at this batch (skipped inputs left out)
            ideal = {k: ideal_speedup(s) for k, s in kernel["shapes"].items()}
            ideal.update({r["details"]["shape"]: r["details"]["ideal_speedup"] for r in batch_rows})
            why = amdahl(share, per_shape, ideal)
            details = {**why, "measured_speedup": measured[f"decode_speedup_b{b}"]["value"], "decode_share_timing": share,
                       "note": "shares of the dense model's decode time, timed by forward hooks around each pruned layer"}
            rows.append(_metric(f"decode_predicted_speedup_b{b}", why["predicted_speedup"], "x", True, "latency", details))
            rows.append(_metric(f"decode_outside_share_b{b}", why["outside_share"], "fraction", None, "latency", details))
    kernel["calls"] = call_counts(model)
    kernel["timed_as_reference"] = same
    if thresholds:
        from bench.speed.activations import skipped_inputs

        kernel["activations"]["counts"] = skipped_inputs(model)
    # what ran each phase (untimed passes, so after the skip counts above): dense fallback is said as such
    kernel["phases"] = phases.of_backend(model, spec, model.config.vocab_size, kernel["status"], seed=job.seed)
    phases.annotate(rows, kernel["phases"])
    for row in rows:
        row["details"] = {**row["details"], "threads": torch.get_num_threads(), "kernel": kernel["backend"],
                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    metrics += rows
    del reference
    timings["latency_s"] = time.perf_counter() - t
    return {"metrics": metrics, "kernel": kernel}


RUNNERS = {"prune": _prune, "evaluate": _evaluate, "latency": _latency}


def run_job(job_dict: dict[str, Any], artifacts: str) -> dict[str, Any]:
    """Every stage of one job in this process, in order, as the runner would assemble them (for tests and
    the serial baseline of the runner benchmark)."""
    from bench.spec.jobs import Job

    job = Job.from_dict(job_dict)
    parts = {}
    for kind, key in job.stage_keys().items():
        parts[kind] = run_stage({"kind": kind, "key": key, "job": job_dict, "artifacts": artifacts})
        if parts[kind]["status"] != "done":
            break
    from bench.run.plan import assemble

    return assemble(parts)


def _dense_gate(job, measured: float) -> list[str]:
    """A warning when the dense model misses the perplexity the grid says it should reach."""
    expect = job.model.expect_perplexity
    if not job.is_dense_baseline or expect is None:
        return []
    off = measured / expect - 1
    if abs(off) <= job.model.expect_tolerance:
        return []
    return [f"dense {job.model.name} has perplexity {measured:.6g}, expected {expect:.6g} "
            f"({off:+.1%}, tolerance {job.model.expect_tolerance:.1%}): check the model, the data and the protocol "
            "before trusting any relative figure of this model"]
