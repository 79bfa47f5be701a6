"""The leaderboard's tables, as pure functions of the leaderboard frame (`queries.leaderboard`): no I/O, no
Streamlit.

    wide = by_pruned_model(board, "decode_speedup_b1")   # one row per pruned model, a column group per kernel
    paper = paper_table(board, "perplexity")              # method x pattern per model, as papers print it

A pruned model's accuracy does not depend on the kernel that times it (the evaluation stage is shared), so
the leaderboard's rows, one per (model, method, pattern, hardware, kernel, seed), repeat every accuracy
once per kernel. Here a row is one pruned model on one hardware target, and each kernel backend adds its
speed, interval, verdict and status as a group of columns named `<kernel> · <what>`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard import labels
from dashboard.charts import SPEED, Axis, is_dense_baseline
from dashboard.encoding import pattern_order

ROW = ["model", "method", "pattern", "activations", "target_sparsity", "hardware", "seed", "protocol"]
ACCURACY = ["measured_sparsity", "activation_sparsity", "perplexity", "perplexity_change_vs_dense", "kl_vs_dense", "task_acc_mean",
            "task_acc_change_vs_dense", "task_flips_mean"]
VERDICTS = ["faster", "slower", "no measurable difference", "dense"]
VERDICT_COLOURS = ["green", "red", "gray", "blue"]
STATUSES = ["accelerated", "partly accelerated", "dense fallback", "mask only", "dense"]
STATUS_COLOURS = ["green", "orange", "red", "orange", "blue"]
# The status of the phase a speed column measures (the kernels that really ran it), where the store has it.
PHASE_STATUS = {"decode_speedup_b1": "decode_kernel_status_b1", "prefill_speedup": "prefill_kernel_status"}

def ranked(board: pd.DataFrame, column: str, higher_is_better: bool,
           within=("model", "protocol", "target_sparsity", "activations")) -> pd.DataFrame:
    """`board` sorted best first on `column` within each (model, perplexity protocol, sparsity level,
    activation rule): ranks compare methods at one sparsity, not 90% against 50%, nor weights alone against
    weights with half their inputs zeroed, nor perplexities over different texts or contexts. Ties share
    the best rank; rows without a value come last, unranked."""
    out = board.copy()
    keys = [k for k in within if k in out.columns]
    out["rank"] = out.groupby(keys, dropna=False)[column].rank(method="min", ascending=not higher_is_better).astype("Int64")
    order = [k for k in ("model", "protocol", "target_sparsity", "activations") if k in out.columns]
    return out.sort_values([*order, "rank", "method", "pattern", *(["kernel"] if "kernel" in out else [])],
                           na_position="last", kind="stable").reset_index(drop=True)


def _interval(lo, hi) -> str:
    if labels.missing(lo) or labels.missing(hi):
        return ""
    return f"{labels.sig(float(lo))}-{labels.sig(float(hi))}"


def by_pruned_model(board: pd.DataFrame, speed: str = "decode_speedup_b1") -> tuple[pd.DataFrame, list[str]]:
    """One row per pruned model and hardware target, with its accuracy once, and per kernel backend the
    columns `<kernel> · speed` (x dense), `<kernel> · 95% interval` (for a dense row: its A/A interval),
    `<kernel> · verdict` and `<kernel> · status` (one-element lists, shown as coloured badges) and
    `<kernel> · job` (a link to the job's page). Also the kernels in column order."""
    if board.empty:
        return board.copy(), []
    axis = SPEED.get(speed, Axis(speed, True))  # the columns of its interval, verdict and A/A figure
    lo, hi, verdict, aa, aa_lo, aa_hi = axis.lo, axis.hi, axis.verdict, axis.aa, axis.aa_lo, axis.aa_hi
    kernels = sorted(board["kernel"].dropna().unique(), key=lambda k: (k != "native", k))
    # the same pruned model under the same evaluation (prune and eval keys), on one hardware target
    row_keys = [k for k in ROW + ["prune_key", "eval_key"] if k in board.columns]
    tasks = sorted(c for c in board.columns if c.endswith("/acc"))
    accuracy = [c for c in ACCURACY + tasks if c in board.columns]
    first = board.sort_values("kernel").groupby(row_keys, dropna=False, sort=False)[accuracy].first()
    out = first.reset_index()
    for kernel in kernels:
        part = board[board["kernel"] == kernel].set_index(row_keys, drop=False)
        dense = is_dense_baseline(part)
        cols = pd.DataFrame(index=part.index)
        cols[f"{kernel} · speed"] = part[speed] if speed in part.columns else np.nan
        intervals = []
        for is_dense, (_, r) in zip(dense, part.iterrows()):
            if is_dense and aa in part.columns and not labels.missing(r.get(aa)):
                band = _interval(r.get(aa_lo), r.get(aa_hi)) if aa_lo else ""
                intervals.append(f"A/A {labels.sig(float(r[aa]))}" + (f" ({band})" if band else ""))
            else:
                intervals.append(_interval(r.get(lo), r.get(hi)) if lo else "")
        cols[f"{kernel} · 95% interval"] = intervals
        verdicts = part[verdict] if verdict in part.columns else pd.Series(None, index=part.index)
        cols[f"{kernel} · verdict"] = [["dense"] if d else ([v] if isinstance(v, str) else [])
                                       for d, v in zip(dense, verdicts)]
        status = part["kernel_status"] if "kernel_status" in part.columns else pd.Series(None, index=part.index)
        if PHASE_STATUS.get(speed) in part.columns:
            status = part[PHASE_STATUS[speed]].fillna(status)
        cols[f"{kernel} · status"] = [[s] if isinstance(s, str) else [] for s in status]
        cols[f"{kernel} · job"] = [f"job?job={k}" for k in part["job_key"]] if "job_key" in part.columns else None
        cols = cols[~cols.index.duplicated(keep="last")]
        out = out.merge(cols, left_on=row_keys, right_index=True, how="left")
    for kernel in kernels:  # a kernel that did not time this model: empty badges, not NaN
        for what in ("verdict", "status"):
            out[f"{kernel} · {what}"] = [v if isinstance(v, list) else [] for v in out[f"{kernel} · {what}"]]
    return out, kernels


def paper_table(board: pd.DataFrame, metric: str = "perplexity") -> pd.DataFrame:
    """The table papers print: one row per (model, method), one column per sparsity pattern (dense first,
    then unstructured by sparsity, then N:M), holding `metric` for seed-averaged pruned models. Accuracy does
    not depend on the kernel or the hardware, so each pruned model counts once."""
    if board.empty or metric not in board.columns:
        return pd.DataFrame()
    once = board.drop_duplicates(subset=[c for c in ("model", "method", "pattern", "activations", "seed")
                                         if c in board.columns])
    index = ["model", "method"]
    if "activations" in once.columns and once["activations"].fillna("none").ne("none").any():
        once = once.assign(activations=once["activations"].fillna("none"))
        index.append("activations")  # activation rules are rows of their own, beside the weight-only ones
    table = once.pivot_table(index=index, columns="pattern", values=metric, aggfunc="mean")
    dense = table.pop("dense") if "dense" in table.columns else None
    order = sorted(table.columns, key=pattern_order)
    table = table[order]
    if dense is not None:  # the dense model's figure is the same for every method: one column, its own row
        table.insert(0, "dense", dense)
    methods = [m for m in table.index.get_level_values("method").unique()]
    rank = {m: i for i, m in enumerate(sorted(methods, key=lambda m: (m != "dense", m)))}
    table = table.reset_index()
    table = table.sort_values(index, key=lambda s: s.map(rank) if s.name == "method" else s)
    return table.reset_index(drop=True)
