"""DataFrames to Plotly figures, as pure functions: no I/O, no Streamlit, the same frame gives the same figure.

    board = queries.leaderboard(con)
    fig = tradeoff_figure(board, accuracy="perplexity", speed="decode_speedup_b1")

The frames are those of `dashboard.queries`. Colours follow the method and symbols the pattern in every
chart, from one `Encoding` of the whole store (the app builds it from every method and pattern the store
holds), so a method looks the same on every page and under every filter. Labels and number formats come
from `dashboard.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard import labels
# charts is the pages' one entry point: the shared encoding and the Kernels page's figure are re-exported
from dashboard.encoding import (MASK_ONLY, METHOD_COLOURS, Encoding, colours, empty_figure, encoding,  # noqa: F401
                                log_ticks, symbols)
from dashboard.encoding import encoding_of as _encoding_of
from dashboard.encoding import hover as _hover
from dashboard.kernel_chart import KERNEL_AXIS_MAX, kernel_figure  # noqa: F401
from dashboard.run_chart import status_figure  # noqa: F401

WEBGL_ABOVE = 2000  # points per chart above which scatter traces are drawn with WebGL
# Above this many points a trade-off chart marks (colour, symbol, hover) only the configurations on a Pareto
# front and draws the others as one grey WebGL cloud per panel: a figure with per-point hover for 100k
# configurations takes tens of seconds to build and is unreadable anyway.
MARKED_UP_TO = 5000
# Up to this many (panel, method) pairs a trade-off chart draws one trace per method in each panel, so the
# legend toggles a method; beyond, one trace per panel with a colour per point (Plotly's cost is per trace).
TRACES_UP_TO = 120


@dataclass(frozen=True)
class Axis:
    label: str
    higher_is_better: bool | None
    lo: str | None = None  # columns holding the 95% interval of a paired ratio, drawn as error bars
    hi: str | None = None
    verdict: str | None = None  # the column holding a speedup's verdict (faster, slower, no measurable difference)
    log: bool = False  # perplexity spans orders of magnitude once a method breaks a model
    aa: str | None = None  # the dense model timed against itself (A/A) in the same rounds, and its interval
    aa_lo: str | None = None
    aa_hi: str | None = None


ACCURACY = {
    "perplexity": Axis("perplexity (lower is better, log scale)", False, log=True),
    "perplexity_change_vs_dense": Axis("perplexity change vs dense (lower is better)", False),
    "kl_vs_dense": Axis("KL divergence from dense, nats/token (lower is better)", False),
    "task_acc_mean": Axis("mean task accuracy", True),
    "task_acc_change_vs_dense": Axis("task accuracy change vs dense", True),
    "task_flips_mean": Axis("answers flipped vs dense (lower is better)", False),
}
SPEED = {
    "decode_speedup_b1": Axis("decode speedup vs dense, batch 1 (measured)", True,
                              "decode_speedup_b1_lo", "decode_speedup_b1_hi", verdict="decode_speedup_b1_verdict",
                              aa="decode_aa_b1", aa_lo="decode_aa_b1_lo", aa_hi="decode_aa_b1_hi"),
    "prefill_speedup": Axis("prefill speedup vs dense (measured)", True, "prefill_speedup_lo", "prefill_speedup_hi",
                            verdict="prefill_speedup_verdict", aa="prefill_aa"),
}
# Verdicts that may stand on a Pareto front: a measured speedup, and the dense model at 1x by definition.
# A speedup within the noise (or slower) says nothing the dense model does not already say better.
ON_FRONT = ("faster", "dense")


def is_dense_baseline(board: pd.DataFrame) -> pd.Series:
    """The rows of the dense model itself: the dense method with dense activations (the dense method with an
    activation rule is a sparse configuration like any other)."""
    if "method" not in board.columns:
        return pd.Series(False, index=board.index)
    dense = board["method"] == "dense"
    if "activations" in board.columns:
        dense &= board["activations"].fillna("none").eq("none")
    return dense


_dense = is_dense_baseline


def _mask_only(board: pd.DataFrame) -> pd.Series:
    if "kernel_status" not in board.columns:
        return pd.Series(False, index=board.index)
    return board["kernel_status"] == "mask only"


def measured(board: pd.DataFrame, speed: str) -> pd.Series:
    """True for the rows that may stand on a front: a dense row (1x by definition), or an accelerated row
    whose speed was measured `faster`. A mask-only row never does, whatever its noise says: its zeros were
    run as dense weights. Rows without a verdict (stored before verdicts existed) never do either."""
    column = SPEED.get(speed, Axis(speed, True)).verdict
    dense = _dense(board)
    if column is None or column not in board.columns:
        return dense
    return (board[column].isin(ON_FRONT) & ~_mask_only(board)) | dense


def solid(board: pd.DataFrame, speed: str) -> pd.Series:
    """True for points drawn solid: dense, and accelerated rows with a measured verdict (faster or slower).
    Hollow: no measurable difference, mask only, or no verdict."""
    column = SPEED.get(speed, Axis(speed, True)).verdict
    dense = _dense(board)
    if column is None or column not in board.columns:
        return dense
    return (board[column].isin(("faster", "slower")) & ~_mask_only(board)) | dense


def accuracy_axis(column: str) -> Axis:
    """A known accuracy column, or a per-task accuracy `<task>/acc` (higher is better)."""
    return ACCURACY.get(column) or Axis(f"{column} (higher is better)", True)


def pareto_mask(df: pd.DataFrame, x: str, y: str, x_higher: bool = True, y_higher: bool = True) -> pd.Series:
    """True for the rows no other row beats on both columns (at least as good on both, better on one);
    equal rows are both on the front. Rows with a missing value are never on it."""
    xs = df[x].to_numpy(dtype=float) * (1 if x_higher else -1)
    ys = df[y].to_numpy(dtype=float) * (1 if y_higher else -1)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    on_front = np.zeros(len(df), dtype=bool)
    if ok.any():
        pairs, inverse = np.unique(np.column_stack([xs[ok], ys[ok]]), axis=0, return_inverse=True)
        order = np.lexsort((-pairs[:, 1], -pairs[:, 0]))  # best x first, then best y
        best_before = np.concatenate([[-np.inf], np.maximum.accumulate(pairs[order, 1])[:-1]])
        front = np.zeros(len(pairs), dtype=bool)
        front[order] = pairs[order, 1] > best_before  # beats on y every (distinct) point with a better x
        on_front[ok] = front[inverse.ravel()]
    return pd.Series(on_front, index=df.index)


def pareto_rows(board: pd.DataFrame, accuracy: str, speed: str) -> pd.DataFrame:
    """The rows on the Pareto front of their panel of `tradeoff_figure` (model, hardware, and the kind of
    sparsity where the board holds activation rules: `by_sparsity_kind`, so the dense model can stand on
    several fronts, once per kind): accuracy against `speed`, among the rows whose speed is a measured
    verdict (`measured`)."""
    higher = bool(accuracy_axis(accuracy).higher_is_better)
    frame, by = by_sparsity_kind(board)
    frame = frame.reset_index(drop=True)
    mask = pd.Series(False, index=frame.index)
    eligible = frame[measured(frame, speed)]
    for _, g in eligible.groupby(by):
        mask |= pareto_mask(g, speed, accuracy, True, higher).reindex(frame.index, fill_value=False)
    return frame[mask]


def _scatter(n_points: int):
    return go.Scattergl if n_points > WEBGL_ABOVE else go.Scatter


PROVENANCE = ["method", "pattern", "activations", "measured_sparsity", "activation_sparsity", "kernel", "kernel_status", "hardware", "seed", "job_key",
              "run_id", "git_commit", "finished_at"]


# Legends sit above the panels, one horizontal row each (Plotly's `legend`, `legend2`, `legend3`): the methods'
# colours, the patterns' symbols, then the key (what solid, hollow, grey, dashed and the band mean). Every entry
# is a legend group of its own: a horizontal legend stacks the entries of one group vertically. In rows they never
# scroll, however many patterns a store holds (a vertical legend beside a 350-pixel chart scrolled at six),
# and the panels keep the figure's whole width. A row that holds more than fits wraps; LEGEND_ROW is the height
# one line of a row takes.
LEGEND_ROW = 22
LEGENDS = {"method": "legend", "pattern": "legend2", "key": "legend3"}


def _legend_entries(fig: go.Figure, enc: Encoding, methods, patterns, with_status: bool = True) -> None:
    """Methods as colours and patterns as symbols, each in a legend of its own (and what solid, hollow and grey
    mean in a third), so no entry mixes the two encodings."""
    for method in (m for m in enc.colour if m in set(methods)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=method, legendgroup=f"method {method}",
                                 legend=LEGENDS["method"], marker=dict(color=enc.method_colour(method), symbol="circle",
                                                                       size=10)))
    for pattern in (p for p in enc.symbol if p in set(patterns)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=pattern, legendgroup=f"pattern {pattern}",
                                 legend=LEGENDS["pattern"],
                                 marker=dict(color="#777777", symbol=enc.pattern_symbol(pattern), size=10)))
    if with_status:
        for name, symbol, colour in (("measured faster or slower", "circle", "#777777"),
                                     ("no measurable difference", "circle-open", "#777777"),
                                     ("mask only", "circle-open", MASK_ONLY)):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup=f"status {name}",
                                     legend=LEGENDS["key"],
                                     marker=dict(color=colour, symbol=symbol, size=10, line=dict(width=2, color=colour))))


def _legend_rows(fig: go.Figure, height: int, top: int) -> int:
    """Place the figure's legends as rows above the panels, the first at the top; return the top margin that
    holds them (`top`: the margin above them, for a title)."""
    shown = {t.legend or "legend" for t in fig.data if t.showlegend is not False}
    used = [(role, name) for role, name in LEGENDS.items() if name in shown]
    for row, (role, name) in enumerate(used):
        fig.update_layout({name: dict(orientation="h", xref="container", yref="container", x=0, xanchor="left",
                                      y=1 - (top + row * LEGEND_ROW) / height, yanchor="top", groupclick="togglegroup",
                                      font=dict(size=10), itemsizing="constant", entrywidthmode="pixels",
                                      title=dict(text="" if role == "key" else role, side="left", font=dict(size=10)))})
    return top + len(used) * LEGEND_ROW


PANELS_PER_ROW = 2


# What a configuration makes sparse, when a store holds activation rules: the panels of a trade-off chart, side
# by side, each with the dense model as its 1x reference.
KINDS = ("weights", "activations", "weights + activations")


def by_sparsity_kind(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows and the panel keys of a trade-off chart: (model, hardware), and where any row has an
    activation rule also its kind (KINDS), with the dense model's rows repeated in every kind's panel."""
    if "activations" not in frame.columns or frame["activations"].fillna("none").eq("none").all():
        return frame, ["model", "hardware"]
    acts = frame["activations"].fillna("none").ne("none")
    weights = ~frame["method"].eq("dense")
    kind = pd.Series(np.where(acts & weights, KINDS[2], np.where(acts, KINDS[1], KINDS[0])), index=frame.index)
    dense = is_dense_baseline(frame)
    parts = [frame[~dense].assign(sparsity_kind=kind[~dense])]
    parts += [frame[dense].assign(sparsity_kind=k) for k in KINDS if (kind[~dense] == k).any()]
    return pd.concat(parts), ["model", "hardware", "sparsity_kind"]


def tradeoff_figure(board: pd.DataFrame, accuracy: str = "perplexity", speed: str = "decode_speedup_b1",
                    title: str | None = None, enc: Encoding | None = None, height: int = 340,
                    status_legend: bool = True, per_row: int = PANELS_PER_ROW) -> go.Figure:
    """Accuracy against measured speedup: one panel per (model, hardware) (and per kind of sparsity, weights,
    activations or both, where the store holds activation rules), colour by method and symbol by
    pattern (`enc`, the store's), solid where the speed is a measured verdict, hollow where it is no
    measurable difference, grey and hollow for mask-only rows; the 95% interval of each speedup as a bar;
    the A/A noise band of the panel's dense rows around 1x; and the Pareto front of each panel, over dense
    and measured-faster rows only, as a dashed line."""
    acc, spd = accuracy_axis(accuracy), SPEED.get(speed, Axis(speed, True))
    frame = board.dropna(subset=[accuracy, speed]) if {accuracy, speed} <= set(board.columns) else board.iloc[0:0]
    if frame.empty:
        return empty_figure(f"no finished job has both {labels.label(accuracy)} and {labels.label(speed)}")
    enc = _encoding_of(frame, enc)
    frame, by = by_sparsity_kind(frame)
    panels = dict(sorted(frame.groupby(by, sort=False), key=lambda kv: (kv[0][:2], KINDS.index(kv[0][2]))
                         if len(kv[0]) > 2 else kv[0]))
    ncols = min(len(panels), per_row)
    nrows = -(-len(panels) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[" · ".join(key) for key in panels],
                        vertical_spacing=min(0.16, 0.5 / nrows) if nrows > 1 else 0.08, horizontal_spacing=0.07)
    cloud = len(frame) > MARKED_UP_TO
    per_method = not cloud and len(panels) * frame["method"].nunique() <= TRACES_UP_TO
    Scatter = go.Scatter if cloud else _scatter(len(frame))
    shown = set()
    shapes = []
    for index, panel in enumerate(panels.values(), start=1):
        r, c = (index - 1) // ncols + 1, (index - 1) % ncols + 1
        axis = "" if index == 1 else str(index)
        band = _aa_band(panel, speed)
        if band is not None:
            shapes.append(dict(type="rect", x0=band[0], x1=band[1], y0=0, y1=1, xref=f"x{axis}",
                               yref=f"y{axis} domain", fillcolor="#dddddd", opacity=0.5, line=dict(width=0),
                               layer="below"))
        shapes.append(dict(type="line", x0=1, x1=1, y0=0, y1=1, xref=f"x{axis}", yref=f"y{axis} domain",
                           line=dict(color="#999999", width=1, dash="dot")))
        eligible = measured(panel, speed)
        on_front = pareto_mask(panel[eligible], speed, accuracy, True, bool(acc.higher_is_better)).reindex(
            panel.index, fill_value=False)
        marked = panel[on_front] if cloud else panel
        if cloud:
            rest = panel[~on_front]
            fig.add_trace(go.Scattergl(
                x=rest[speed].to_numpy(), y=rest[accuracy].to_numpy(), mode="markers", hoverinfo="skip",
                name="off the fronts (no hover)", legendgroup="cloud", showlegend="cloud" not in shown, legend=LEGENDS["key"],
                marker=dict(color="#c4c4c4", size=4)), row=r, col=c)
            shown.add("cloud")
        groups = marked.groupby("method", sort=True) if per_method else [(None, marked)]
        for method, g in groups:
            custom, hover = _hover(g, [accuracy, speed, spd.lo, spd.hi, spd.verdict, "decode_speedup_b1_rounds",
                                       *PROVENANCE])
            error = None
            if spd.lo in g.columns and spd.hi in g.columns:
                error = dict(type="data", symmetric=False, array=(g[spd.hi] - g[speed]).clip(lower=0).fillna(0),
                             arrayminus=(g[speed] - g[spd.lo]).clip(lower=0).fillna(0), thickness=1, width=0,
                             color="#888888")
            full, grey = solid(g, speed), _mask_only(g)
            colour = [MASK_ONLY if m_o else enc.method_colour(m) for m, m_o in zip(g["method"], grey)]
            fig.add_trace(Scatter(
                x=g[speed], y=g[accuracy], mode="markers", name=method or "configurations",
                legendgroup=f"method {method}" if method else None, showlegend=False, error_x=error,
                customdata=custom, hovertemplate=hover,
                marker=dict(color=colour, size=11, line=dict(width=2, color=colour),
                            symbol=[enc.pattern_symbol(p) + ("" if s else "-open") for p, s in zip(g["pattern"], full)])),
                row=r, col=c)
        front = panel[on_front].sort_values(speed)
        fig.add_trace(Scatter(x=front[speed], y=front[accuracy], mode="lines", name="Pareto front",
                              legendgroup="front", showlegend="front" not in shown, hoverinfo="skip", legend=LEGENDS["key"],
                              line=dict(color="#555555", dash="dash", width=1.5, shape="linear")), row=r, col=c)
        shown.add("front")
    if any(s["type"] == "rect" for s in shapes):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="A/A band (dense vs dense)",
                                 legendgroup="band", legend=LEGENDS["key"],
                                 marker=dict(symbol="square", color="#dddddd", size=14)))
    fig.update_xaxes(title_text=labels.label(speed))  # every panel, in one call
    if acc.log:
        fig.update_yaxes(title_text=labels.label(accuracy) + " (log scale)", type="log", **log_ticks(frame[accuracy]))
    else:
        fig.update_yaxes(title_text=labels.label(accuracy))
    _legend_entries(fig, enc, frame["method"].unique(), frame["pattern"].unique(), with_status=status_legend)
    total = height * nrows
    top = _legend_rows(fig, total, 34 if title else 4)
    fig.update_layout(title=dict(text=title, y=1 - 6 / total, yanchor="top"), height=total, shapes=shapes,
                      margin=dict(t=top + 24, l=10, r=10, b=10))
    return fig


def _aa_band(panel: pd.DataFrame, speed: str) -> tuple[float, float] | None:
    """The A/A interval of the panel's dense rows (the widest over their kernels), or None without one."""
    axis = SPEED.get(speed, Axis(speed, True))
    lo, hi = axis.aa_lo, axis.aa_hi
    if lo not in panel.columns or hi not in panel.columns:
        return None
    dense = panel[_dense(panel)]
    los, his = dense[lo].dropna(), dense[hi].dropna()
    if los.empty or his.empty:
        return None
    return float(los.min()), float(his.max())



# The line styles of `sparsity_figure`: by pattern kind, and whether an activation rule runs on top.
LINE_DASH = {("other", False): "solid", ("nm", False): "dot", ("other", True): "dash", ("nm", True): "dashdot"}
LINE_KINDS = ((("other", False), "unstructured"), (("nm", False), "N:M"),
              (("other", True), "unstructured + activation rule"), (("nm", True), "N:M + activation rule"))


def sparsity_figure(board: pd.DataFrame, accuracy: str = "perplexity", enc: Encoding | None = None) -> go.Figure:
    """Accuracy against measured (weight) sparsity, one line per (method, pattern kind, activation rule), one
    panel per model: solid lines join a method's unstructured sparsities, dotted ones its N:M patterns, and
    the same with an activation rule on top are dashed and dash-dotted. Accuracy does not depend on
    the kernel, so rows that differ only in hardware or kernel are counted once; seeds are averaged (the
    hover gives how many)."""
    acc = accuracy_axis(accuracy)
    if accuracy not in board.columns or board.dropna(subset=[accuracy]).empty:
        return empty_figure(f"no finished job has {labels.label(accuracy)}")
    enc = _encoding_of(board, enc)
    kind = board["pattern_kind"] if "pattern_kind" in board.columns else board["pattern"]
    acts = board["activations"].fillna("none") if "activations" in board.columns else "none"
    frame = board.assign(pattern_kind=kind, activations=acts).dropna(subset=[accuracy])
    pruned_model = ["model", "method", "pattern", "activations", "seed"]  # what accuracy depends on
    frame = frame.drop_duplicates(subset=pruned_model)
    frame = (frame.groupby(["model", "method", "pattern", "pattern_kind", "activations"], as_index=False)
             .agg(measured_sparsity=("measured_sparsity", "mean"), value=(accuracy, "mean"), seeds=("seed", "nunique")))
    models = sorted(frame["model"].unique())
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, horizontal_spacing=0.06)
    kinds = set()
    for c, model in enumerate(models, start=1):
        for (method, pkind, rule), g in frame[frame["model"] == model].groupby(
                ["method", "pattern_kind", "activations"], sort=True):
            g = g.sort_values("measured_sparsity").rename(columns={"value": accuracy})
            custom, hover = _hover(g.assign(seeds_averaged=g["seeds"]), ["method", "pattern", "activations",
                                                                          "measured_sparsity", accuracy, "seeds_averaged"])
            nm, with_rule = pkind == "nm", rule != "none"
            kinds.add(("nm" if nm else "other", with_rule))
            fig.add_trace(go.Scatter(
                x=g["measured_sparsity"], y=g[accuracy], mode="lines+markers" if len(g) > 1 else "markers",
                name=f"{method} ({'N:M' if nm else pkind}{', ' + rule if with_rule else ''})",
                legendgroup=f"method {method}", showlegend=False, customdata=custom, hovertemplate=hover,
                line=dict(color=enc.method_colour(method), dash=LINE_DASH[("nm" if nm else "other", with_rule)]),
                marker=dict(color=enc.method_colour(method), symbol=[enc.pattern_symbol(p) for p in g["pattern"]],
                            size=9)), row=1, col=c)
        fig.update_xaxes(title_text=labels.label("measured_sparsity").replace(" (%)", ""), tickformat=".0%", row=1, col=c)
        if acc.log:
            fig.update_yaxes(title_text=labels.label(accuracy) + " (log scale)", type="log",
                             **log_ticks(frame.loc[frame["model"] == model, "value"]), row=1, col=c)
        else:
            fig.update_yaxes(title_text=labels.label(accuracy), row=1, col=c)
    _legend_entries(fig, enc, frame["method"].unique(), frame["pattern"].unique(), with_status=False)
    present = [(name, LINE_DASH[kind]) for kind, name in LINE_KINDS if kind in kinds]
    for name, dash in present:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, legendgroup=f"kinds {name}",
                                 legend=LEGENDS["key"], line=dict(color="#777777", dash=dash)))
    height = 380
    fig.update_layout(height=height, margin=dict(t=_legend_rows(fig, height, 4) + 24, l=10, r=10, b=10))
    return fig


def compare_figure(long: pd.DataFrame, metric: str, label_a: str, label_b: str) -> go.Figure:
    """One metric of `queries.compare` for side A and side B, grouped per experiment."""
    g = long[long["metric"] == metric]
    if g.empty:
        return empty_figure(f"no experiment has {metric} on both sides")
    keys = [c for c in ("model", "method", "pattern", "activations", "hardware", "kernel", "seed", "run_id") if c in g.columns
            and g[c].nunique() > 1] or ["pattern"]
    x = g[keys].astype(str).agg(" · ".join, axis=1)
    fig = go.Figure([go.Bar(x=x, y=g["A"], name=f"A: {label_a}", marker_color="#1f77b4"),
                     go.Bar(x=x, y=g["B"], name=f"B: {label_b}", marker_color="#ff7f0e")])
    axis = ACCURACY.get(metric)
    fig.update_layout(barmode="group", yaxis_title=axis.label if axis else metric, height=380,
                      yaxis_type="log" if axis and axis.log else None, margin=dict(t=30, l=10, r=10, b=10))
    return fig
