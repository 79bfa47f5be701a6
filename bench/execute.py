"""One job, start to finish, inside a worker: load, prune, verify, evaluate, measure.

    result = run_job(job.to_dict())      # never raises: a failure comes back as {"status": "failed", ...}

Workers hold no state from the driver and never touch the store; they return a plain dict that the
driver writes. A deterministic error (bad weights, a pattern a layer cannot take) is returned as a failed
result, so Ray does not retry it; only a lost worker is retried.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from datetime import datetime, timezone
from typing import Any

import torch


def _metric(name, value, unit, higher_is_better, stage, details=None, stderr=None):
    return {"name": name, "value": float(value), "unit": unit, "higher_is_better": higher_is_better,
            "stderr": stderr, "stage": stage, "details": details}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return None


def run_job(job_dict: dict[str, Any]) -> dict[str, Any]:
    from bench import hub
    from bench.provenance import hardware_fingerprint

    hub.offline_unless_reachable()  # before transformers or datasets touch the network
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    result: dict[str, Any] = {"key": job_dict.get("key"), "started_at": started.isoformat()}
    try:
        result.update(_run(job_dict, timings))
        result["status"] = "done"
    except Exception as err:
        message = " ".join(str(err).split()) or type(err).__name__
        result.update(status="failed", error=f"{type(err).__name__}: {message}", traceback=traceback.format_exc())
    result["timings"] = timings
    result["duration_s"] = time.perf_counter() - t0
    result["finished_at"] = datetime.now(timezone.utc).isoformat()
    result["peak_rss_bytes"] = _peak_rss_bytes()
    try:
        result["worker"] = hardware_fingerprint()
    except Exception as err:  # provenance must never hide the job's own outcome
        result["worker"] = {"error": repr(err)}
    return result


def _run(job_dict: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    from bench.evaluate import PerplexitySpec, perplexity
    from bench.jobs import Job
    from bench.latency import LatencySpec, measure
    from bench.models import device_for, load_model, threads_for
    from bench.patterns import pattern_from_dict
    from bench.prune import LayerFilter, prune_model, target_layers
    from bench.registry import kernel_registry, method_registry

    job = Job.from_dict(job_dict)
    torch.set_num_threads(threads_for(job.hardware))
    torch.manual_seed(job.seed)
    device = device_for(job.hardware)
    pattern = pattern_from_dict(job.pattern)
    metrics = []

    t = time.perf_counter()
    model, tokenizer = load_model(job.model, device)
    timings["load_s"] = time.perf_counter() - t

    method = method_registry().get(job.method)(seed=job.seed, **job.method_params)
    calibration = None
    if method.needs_calibration or pattern.needs_calibration or job.refine:
        from bench.calibration import calibration_tokens

        calibration = calibration_tokens(tokenizer, job.calibration)
    layer_filter = LayerFilter(tuple(job.layers["include"]), tuple(job.layers["exclude"])) if job.layers else None
    rss_before = _rss_bytes()
    report = prune_model(model, method, pattern, layer_filter, calibration=calibration, refine=job.refine)
    timings["prune_s"] = report.seconds
    metrics.append(_metric("measured_sparsity", report.measured_sparsity, "fraction", None, "prune",
                           {"target": pattern.sparsity, "layers": len(report.layers)}))
    metrics.append(_metric("prune_s", report.seconds, "s", False, "prune",
                           {"calibration_tokens": int(calibration.numel()) if calibration is not None else 0}))
    metrics.append(_metric("prune_peak_rss_bytes", _peak_rss_bytes(), "bytes", False, "prune",
                           {"rss_before_prune_bytes": rss_before,
                            "cuda_peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                            "note": "peak resident memory of the worker process up to the end of pruning"}))

    t = time.perf_counter()
    ppl = perplexity(model, tokenizer, PerplexitySpec(**job.perplexity))
    timings["perplexity_s"] = time.perf_counter() - t
    metrics.append(_metric("perplexity", ppl["perplexity"], "ppl", False, "perplexity", ppl["protocol"]))
    warnings = _dense_gate(job, ppl["perplexity"])

    if job.tasks is not None:
        from bench.lmeval import TasksSpec, run_tasks

        t = time.perf_counter()
        spec = TasksSpec.from_dict({k: v for k, v in job.tasks.items() if k in TasksSpec.__dataclass_fields__})
        metrics += run_tasks(model, tokenizer, spec, seed=job.seed)
        timings["lm_eval_s"] = time.perf_counter() - t

    kernel = None
    if job.latency is not None:
        t = time.perf_counter()
        backend = kernel_registry().get(job.kernel)()
        layers = {name: module for name, _, module in target_layers(model)}
        kernel = backend.prepare(model, layers, pattern)
        reference, _ = load_model(job.model, device)
        spec = LatencySpec.from_dict(job.latency)
        rows = measure(model, reference, spec, model.config.vocab_size, seed=job.seed)
        if device.type == "cpu":  # the probe and the per-shape stage time CPU kernels
            from bench.latency import measure_layers, read_bandwidth

            bandwidth = read_bandwidth()
            metrics.append(_metric("read_bandwidth_GBps", bandwidth.median / 1e9, "GB/s", True, "latency",
                                   {"bytes_per_s": bandwidth.to_dict(), "threads": torch.get_num_threads(),
                                    "probe": "native vector sum over 256 MiB"}))
            rows += measure_layers(model, reference, kernel, spec.decode_batch, spec.warmup, spec.repeats,
                                   bandwidth.median, seed=job.seed)
        from bench.backends import call_counts

        kernel["calls"] = call_counts(model)
        for row in rows:
            row["details"] = {**row["details"], "threads": torch.get_num_threads(), "kernel": kernel["backend"],
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        metrics += rows
        del reference
        timings["latency_s"] = time.perf_counter() - t
    return {"metrics": metrics, "layers": report.layers, "kernel": kernel, "warnings": warnings}


def _dense_gate(job, measured: float) -> list[str]:
    """A warning when the dense model misses the perplexity the grid says it should reach."""
    expect = job.model.expect_perplexity
    if job.method != "dense" or expect is None:
        return []
    off = measured / expect - 1
    if abs(off) <= job.model.expect_tolerance:
        return []
    return [f"dense {job.model.name} has perplexity {measured:.6g}, expected {expect:.6g} "
            f"({off:+.1%}, tolerance {job.model.expect_tolerance:.1%}): check the model, the data and the protocol "
            "before trusting any relative figure of this model"]
