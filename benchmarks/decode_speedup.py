"""End-to-end decode speedup of the native kernels on SmolLM2-135M, with the A/A noise floor and Amdahl.

    python benchmarks/decode_speedup.py [--threads 1] [--patterns 2:4,50%,70%,90%] [--save benchmarks/results]

For each pattern: the dense model (builtin:smollm2-135m, fp32) is pruned by magnitude (the mask is all
that matters for speed), its layers are put on the `native` backend (which first chooses each layer
shape's format by measurement, `bench.speed.choice`), and the latency stage's own
measurement runs: candidate, dense reference and dense again (A/A) in alternating rounds, at least
`--repeats` and until every interval is within `--precision` or `--max-seconds` have passed
(`bench.speed.latency.measure`), then per layer shape the same (`measure_layers`: cold sweeps over every
layer of the shape), and the share of the
dense decode spent in each layer shape (`decode_shares`) for Amdahl's prediction. Decode at batch 1 after
a 16-token prompt; the prefill figure comes along.

The bound from bytes (what a kernel limited only by memory traffic would give end to end) is the dense
model's weight bytes over the pruned model's: the LM head (49152 x 576, fp32, tied to the embedding) and
the embeddings stay dense.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import _native
from bench.grid import parse_grid
from bench.model.load import load_model
from bench.model.walk import target_layers
from bench.patterns import parse_pattern
from bench.provenance import git_state, hardware_fingerprint, package_versions
from bench.prune.harness import prune_model
from bench.registry import kernel_registry, method_registry
from bench.speed.latency import amdahl, decode_shares, ideal_speedup, measure, measure_layers, read_bandwidth
from bench.spec.protocols import LatencySpec

from _results import save  # benchmarks/_results.py (these scripts run from benchmarks/)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--patterns", default="2:4,50%,70%,90%")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-repeats", type=int, default=60)
    ap.add_argument("--precision", type=float, default=0.03)
    ap.add_argument("--max-seconds", type=float, default=90.0)
    ap.add_argument("--spin-us", default=None,
                    help="comma-separated spins of the native thread pool (e.g. 0,50): each is measured against "
                         "dense in its own rounds (default: as the extension starts)")
    ap.add_argument("--choice-seconds", type=float, default=20.0,
                    help="what the native backend may spend choosing the formats, all shapes together")
    ap.add_argument("--save", type=Path)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_spec = parse_grid('methods = ["dense"]\nmodels = [{ builtin = "smollm2-135m" }]').models[0]
    dense, _ = load_model(model_spec)
    spec = LatencySpec(prefill_length=64, prompt_length=16, decode_tokens=args.decode_tokens, decode_batch=(1,),
                       warmup=1, repeats=args.repeats, max_repeats=args.max_repeats, precision=args.precision,
                       max_seconds=args.max_seconds)
    bandwidth = read_bandwidth(args.threads)
    all_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())  # tied head counted once
    rows = []
    for label in args.patterns.split(","):
        t0 = time.perf_counter()
        pattern = parse_pattern(label)
        candidate = copy.deepcopy(dense)
        prune_model(candidate, method_registry().get("magnitude")(seed=0), pattern)
        layers = {name: m for name, _, m in target_layers(candidate)}
        kernel = kernel_registry().get("native")().prepare(candidate, layers, pattern, batches=spec.decode_batch,
                                                           seconds=args.choice_seconds)
        # a decode step reads every weight once (the tied embedding as the output head; the lookup of one
        # embedding row is negligible), the pruned layers as their packed bytes
        dense_step = all_bytes
        pruned_step = dense_step - kernel["dense_weight_bytes"] + kernel["weight_bytes"]
        spins = [int(s) for s in args.spin_us.split(",")] if args.spin_us else [_native.spin_us()]
        by_spin = {}
        for spin in spins:
            _native.set_spin_us(spin)
            by_spin[spin] = {r["name"]: r for r in measure(candidate, dense, spec, dense.config.vocab_size, seed=0)}
        e2e = by_spin[spins[-1]]
        per_shape = measure_layers(candidate, dense, kernel, spec, bandwidth.median, seed=0)
        shares = decode_shares(dense, spec, dense.config.vocab_size, seed=0)[1]
        speeds = {r["details"]["shape"]: r["value"] for r in per_shape if r["name"].startswith("layer_speedup_b1:")}
        why = amdahl(shares, speeds, {k: ideal_speedup(s) for k, s in kernel["shapes"].items()})
        d = e2e["decode_speedup_b1"]["details"]
        choice = {k: {"rule": c["rule"], "format": c["format"], "chosen_by": c["chosen_by"],
                      "speedup_over_rule": c.get("speedup_over_rule")} for k, c in kernel["format_choice"].items()}
        print(f"{label}: formats " + ", ".join(f"{k} {c['format']} (rule {c['rule']}; " + ", ".join(
            f"{f} {by['1']['median']:.2f}x [{by['1']['lo']:.2f}-{by['1']['hi']:.2f}]"
            for f, by in (c["speedup_over_rule"] or {}).items()) + ")" for k, c in choice.items()), flush=True)
        row = {"pattern": label, "formats": kernel["format"], "status": kernel["status"], "format_choice": choice,
               "decode_speedup": d["speedup_paired"], "verdict": d["verdict"], "aa": d["aa"],
               "rounds": d["rounds"], "stopped_by": d["stopped_by"],
               "prefill_speedup": e2e["prefill_speedup"]["details"]["speedup_paired"],
               "predicted": why["predicted_speedup"], "amdahl_bound": why["bound_from_bytes"],
               "outside_share": why["outside_share"],
               "layer_shares": why["layer_shares"], "per_shape": {r["details"]["shape"]: {
                   "speedup": r["details"]["speedup_paired"], "verdict": r["details"]["verdict"],
                   "format": r["details"]["format"], "ideal": r["details"]["ideal_speedup"],
                   "bandwidth_fraction": r["details"]["bandwidth_fraction"]}
                   for r in per_shape if r["name"].startswith("layer_speedup_b1:")},
               "bytes_bound": dense_step / pruned_step, "spin_us": spins[-1],
               "by_spin": {s: {"decode_speedup": r["decode_speedup_b1"]["details"]["speedup_paired"],
                               "verdict": r["decode_speedup_b1"]["details"]["verdict"],
                               "aa": r["decode_speedup_b1"]["details"]["aa"]} for s, r in by_spin.items()},
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        for spin, r in row["by_spin"].items():
            s = r["decode_speedup"]
            print(f"{label} spin {spin} us: decode {s['median']:.3f}x [{s['lo']:.3f}-{s['hi']:.3f}] {r['verdict']} "
                  f"(A/A {r['aa']['median']:.3f} [{r['aa']['lo']:.3f}-{r['aa']['hi']:.3f}])", flush=True)
        s = row["decode_speedup"]
        print(f"{label}: decode {s['median']:.3f}x [{s['lo']:.3f}-{s['hi']:.3f}] {row['verdict']} "
              f"(A/A {row['aa']['median']:.3f} [{row['aa']['lo']:.3f}-{row['aa']['hi']:.3f}], {row['rounds']} rounds, "
              f"{row['stopped_by']}); predicted {row['predicted']:.3f}x; bytes bound {row['bytes_bound']:.3f}x; "
              f"outside the pruned layers {row['outside_share']:.1%}; per shape "
              + ", ".join(f"{k} {v['speedup']['median']:.2f}x/{v['ideal']:.2f}" for k, v in row["per_shape"].items()),
              flush=True)
        del candidate
    record = {"benchmark": "decode_speedup", "model": "builtin:smollm2-135m", "threads": args.threads,
              "isa": _native.isa(), **git_state(), "versions": package_versions(), "hardware": hardware_fingerprint(),
              "read_bandwidth_Bps": bandwidth.to_dict(), "spec": spec.to_dict(),
              "finished_at": datetime.now(timezone.utc).isoformat(), "rows": rows}
    if args.save:
        print(save(args.save, f"decode-speedup-{_native.isa()}-t{args.threads}", record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
