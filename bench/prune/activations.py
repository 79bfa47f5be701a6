"""Activation thresholds of a pruned model: found by the job's activation rule in the prune stage (on the
pruned model, every target layer), stored in the artifact's manifest, read back by the stages after it.

    entry, row = calibrate_thresholds(job, model, calibration_tokens)   # manifest["activations"], a metric
    thresholds = thresholds_of(manifest, job)                           # {layer name: threshold}
"""

from __future__ import annotations

from typing import Any

from bench.model.artifacts import ArtifactError
from bench.model.walk import target_layers
from bench.registry import activation_registry
from bench.stats import metric


def calibrate_thresholds(job, model, calibration) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rule's thresholds on the pruned `model` for the manifest, and a metric of the sparsity they
    reach on the calibration data (per layer in its details)."""
    spec = job.activations
    rule = activation_registry().get(spec.name)(**spec.params)
    layers = {name: module for name, _, module in target_layers(model, job.layers)}
    found = rule.calibrate(model, layers, calibration)
    per_layer = {name: v["calibration_sparsity"] for name, v in found.items()}
    row = metric("activation_calibration_sparsity", sum(per_layer.values()) / len(per_layer), "fraction", None,
                 "prune", {"target": spec.target, "rule": spec.label, "per_layer": per_layer,
                           "note": "mean over layers of the fraction of each layer's calibration input entries "
                                   "at or under its threshold"})
    entry = {"spec": spec.to_dict(), "thresholds": {name: v["threshold"] for name, v in found.items()},
             "calibration_sparsity": per_layer}
    return entry, row


def thresholds_of(manifest: dict[str, Any] | None, job) -> dict[str, float]:
    """The activation thresholds an artifact's manifest holds for `job`; an artifact without them (made
    before, or for another rule) is an artifact error, so the runner rebuilds it."""
    entry = (manifest or {}).get("activations") or {}
    thresholds = entry.get("thresholds") or {}
    if not thresholds or (entry.get("spec") or {}).get("label") != job.activations.label:
        raise ArtifactError(f"artifact {job.prune_key} holds no activation thresholds for {job.activations.label}")
    return {name: float(t) for name, t in thresholds.items()}
