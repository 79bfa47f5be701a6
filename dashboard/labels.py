"""One table of what every column is called, in which unit, and how its numbers are written: the table's
headers, the charts' axes and tooltips, the Compare and Kernels pages all read it, so one figure reads the
same everywhere. Pure Python: no Streamlit here.

    label("decode_speedup_b1")              # 'decode speedup, batch 1 (x dense)'
    text(5.714640975061068, "perplexity")   # '5.71'
    text("0e1b371c9d...", "git_commit")     # '0e1b371'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    label: str
    kind: str = "sig"  # sig: 3 significant digits; ratio: 3 significant digits and "x"; share: percent; signed:
    #                    3 significant digits with a sign; int; text; commit (the first 7 characters); when: a time
    help: str | None = None


SIG = 3  # significant digits shown everywhere (the store and the CSV keep every digit)

COLUMNS: dict[str, Column] = {
    "rank": Column("rank", "int", "1 = best on the ranked metric, within one model, perplexity protocol, "
                                  "sparsity level and activation rule"),
    "model": Column("model", "text"),
    "method": Column("method", "text"),
    "pattern": Column("pattern", "text"),
    "pattern_kind": Column("pattern kind", "text"),
    "activations": Column("activations", "text", "the activation-sparsity rule (none: dense activations; teal:F zeroes "
                          "the fraction F of each pruned layer's input entries on calibration data)"),
    "activation_sparsity": Column("activation sparsity (%)", "share",
                                  "input entries of the pruned layers at or under their thresholds, on the test text"),
    "inputs_skipped": Column("inputs skipped (%)", "share",
                             "inputs of the layer the kernel skipped (zero in every row of the batch) on the inputs "
                             "captured from a decode"),
    "protocol": Column("perplexity protocol", "text", "the text, context, stride and tokens the perplexity was "
                       "measured on, and whether that was the whole split or its first tokens (cut by "
                       "max_tokens): rows under different protocols are ranked apart"),
    "sparsity_kind": Column("sparse", "text", "what the configuration makes sparse: weights, activations or both"),
    "hardware": Column("hardware", "text"),
    "kernel": Column("kernel", "text"),
    "kernel_status": Column("kernel status", "text",
                            "accelerated: a sparse kernel ran the pruned layers; mask only: the zeros were run as dense "
                            "weights and buy no speed; dense: the unpruned model; for the speed shown, what ran its "
                            "phase: dense fallback (every call fell back to PyTorch dense, e.g. a prefill longer "
                            "than the kernels' batch limit) or partly accelerated"),
    "decode_kernel_status_b1": Column("decode kernels (b1)", "text", "what ran the decode at batch 1: accelerated, "
                                      "partly accelerated, dense fallback, mask only or dense"),
    "prefill_kernel_status": Column("prefill kernels", "text", "what ran the prefill: accelerated, partly "
                                    "accelerated, dense fallback, mask only or dense"),
    "seed": Column("seed", "int"),
    "target_sparsity": Column("target sparsity (%)", "share"),
    "measured_sparsity": Column("measured sparsity (%)", "share", "zeros in the pruned layers, counted on the artifact"),
    "perplexity": Column("perplexity", "sig", "exp of the mean next-token loss on the held-out text (lower is better)"),
    "perplexity_change_vs_dense": Column("perplexity vs dense (%)", "share",
                                         "perplexity / dense perplexity - 1, same model, hardware, kernel, seed and protocol"),
    "kl_vs_dense": Column("KL vs dense (nats/token)", "sig",
                          "mean KL(dense || pruned) of the next-token distributions on the perplexity text"),
    "task_acc_mean": Column("task accuracy (%)", "share", "mean accuracy over the lm-eval tasks"),
    "task_acc_change_vs_dense": Column("task accuracy vs dense (points)", "points",
                                       "mean task accuracy minus the dense model's, in percentage points"),
    "task_flips_mean": Column("answers flipped vs dense (%)", "share",
                              "multiple-choice answers that differ from the dense model's, mean over tasks"),
    "decode_speedup_b1": Column("decode speedup, batch 1 (x dense)", "ratio",
                                "median of the paired per-round ratios against the dense model timed in the same "
                                "process; 1 by definition for a dense row"),
    "decode_speedup_b1_lo": Column("decode 95% low (x)", "ratio"),
    "decode_speedup_b1_hi": Column("decode 95% high (x)", "ratio"),
    "decode_speedup_b1_verdict": Column("decode verdict", "text",
                                        "faster or slower: the interval excludes 1 and the median lies beyond the A/A "
                                        "band; otherwise no measurable difference"),
    "decode_speedup_b1_rounds": Column("decode rounds", "int"),
    "aa_decode_speedup_b1": Column("decode A/A, batch 1 (x)", "ratio", "the dense model timed against itself"),
    "aa_decode_speedup_b8": Column("decode A/A, batch 8 (x)", "ratio", "the dense model timed against itself"),
    "aa_prefill_speedup": Column("prefill A/A (x)", "ratio", "the dense model timed against itself"),
    "decode_speedup_b8": Column("decode speedup, batch 8 (x dense)", "ratio"),
    "decode_tok_s_b8": Column("decode, batch 8 (tokens/s)", "sig"),
    "read_bandwidth_GBps": Column("read bandwidth probed (GB/s)", "sig"),
    "prune_s": Column("prune time (s)", "sig"),
    "prune_peak_rss_bytes": Column("prune peak memory (bytes)", "sig"),
    "decode_aa_b1": Column("decode A/A (x)", "ratio", "the dense model timed against itself in the same rounds: the noise floor"),
    "decode_predicted_speedup_b1": Column("decode predicted (x, Amdahl)", "ratio",
                                          "from the per-shape speedups and the dense decode's time in the pruned layers"),
    "decode_outside_share_b1": Column("decode time outside pruned layers (%)", "share"),
    "decode_tok_s_b1": Column("decode (tokens/s)", "sig"),
    "prefill_speedup": Column("prefill speedup (x dense)", "ratio"),
    "prefill_speedup_lo": Column("prefill 95% low (x)", "ratio"),
    "prefill_speedup_hi": Column("prefill 95% high (x)", "ratio"),
    "prefill_speedup_verdict": Column("prefill verdict", "text"),
    "prefill_speedup_rounds": Column("prefill rounds", "int"),
    "prefill_aa": Column("prefill A/A (x)", "ratio"),
    "prefill_ms": Column("prefill (ms)", "sig"),
    "job_key": Column("job", "text"),
    "run_id": Column("run", "text"),
    "grid_name": Column("grid", "text"),
    "git_commit": Column("commit", "commit"),
    "finished_at": Column("finished", "when"),
    "started_at": Column("started", "when"),
    "duration_s": Column("duration (s)", "sig"),
    "status": Column("status", "text"),
    "error": Column("error", "text"),
    # the Kernels page
    "shape": Column("layer shape (out x in)", "text"),
    "batch": Column("batch", "int"),
    "format": Column("format", "text"),
    "speedup": Column("layer speedup (x dense layer)", "ratio"),
    "speedup_lo": Column("95% low (x)", "ratio"),
    "speedup_hi": Column("95% high (x)", "ratio"),
    "verdict": Column("verdict", "text"),
    "ideal_speedup": Column("ideal from bytes (x)", "ratio", "dense bytes / bytes read: the bound for a memory-bound kernel"),
    "bandwidth_fraction": Column("of the read bandwidth (%)", "share", "bytes per second reached over the probed read bandwidth"),
    "GBps": Column("read (GB/s)", "sig"),
    "threads": Column("threads", "int"),
    "rounds": Column("rounds", "int"),
}


def column(name: str) -> Column:
    """The entry for `name`; a per-task accuracy `<task>/acc` and anything unknown get a plain one."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name.endswith("/acc"):
        return Column(f"{name.removesuffix('/acc')} accuracy (%)", "share")
    if name.endswith("/flips"):
        return Column(f"{name.removesuffix('/flips')} flipped vs dense (%)", "share")
    return Column(name.replace("_", " "), "sig")


def label(name: str) -> str:
    return column(name).label


def missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value)) or str(value) in ("NaT", "<NA>", "nan", "None")
    except (TypeError, ValueError):
        return False


def sig(value: float, digits: int = SIG) -> str:
    """`value` to `digits` significant digits, without an exponent below a million (5.71, 0.0123, 26100)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}" if not math.isfinite(value) else "0"
    if abs(value) >= 1e6 or abs(value) < 1e-4:
        return f"{value:.{digits - 1}e}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    rounded = round(value, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > math.floor(math.log10(abs(value))):
        decimals = max(decimals - 1, 0)  # 9.996 -> 10.0, not 10.00
        rounded = round(value, decimals)
    return f"{rounded:.{decimals}f}"


def text(value: Any, name: str) -> str:
    """How `value` of column `name` is written on every page; '' for a missing value (never "None")."""
    if missing(value):
        return ""
    kind = column(name).kind
    if kind == "text" or (isinstance(value, str) and kind not in ("commit", "when")):
        return str(value)
    if kind == "commit":
        return str(value)[:7]
    if kind == "when":
        return str(value)[:19].replace("T", " ")
    if kind == "int":
        return str(int(value))
    value = float(value)
    if kind == "ratio":
        return f"{sig(value)}x"
    if kind == "share":
        return f"{sig(100 * value)}%"
    if kind == "points":
        return f"{'+' if value > 0 else ''}{sig(100 * value)}"
    return sig(value)


def display(name: str, value: Any) -> Any:
    """The number a table holds for `name`: shares and points in percent (the header says so), others as they are."""
    if missing(value):
        return None
    if column(name).kind in ("share", "points"):
        return 100 * float(value)
    return value


def printf(name: str) -> str | None:
    """A printf format for a table cell of `name` (Streamlit's NumberColumn), in the unit of its header."""
    kind = column(name).kind
    return {"ratio": "%.3gx", "share": "%.3g", "points": "%+.3g", "sig": "%.3g", "int": "%d"}.get(kind)
