"""DataFrames to Plotly figures, as pure functions: no I/O, no Streamlit, the same frame gives the same figure.

    board = queries.leaderboard(con)
    fig = tradeoff_figure(board, accuracy="perplexity", speed="decode_speedup_b1")

The frames are those of `dashboard.queries`. Colours follow the method and symbols the pattern in every
chart, so a method looks the same on every page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

SYMBOLS = ["circle", "diamond", "square", "triangle-up", "x", "star", "cross", "triangle-down", "pentagon",
           "hexagon", "triangle-left", "triangle-right", "hourglass", "bowtie"]
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
                              "decode_speedup_b1_lo", "decode_speedup_b1_hi", verdict="decode_speedup_b1_verdict"),
    "prefill_speedup": Axis("prefill speedup vs dense (measured)", True, "prefill_speedup_lo", "prefill_speedup_hi",
                            verdict="prefill_speedup_verdict"),
}
# Verdicts that may stand on a Pareto front: a measured speedup, and the dense model at 1x by definition.
# A speedup within the noise (or slower) says nothing the dense model does not already say better.
ON_FRONT = ("faster", "dense")


def measured(board: pd.DataFrame, speed: str) -> pd.Series:
    """True for rows whose speed is a measured verdict that may stand on a front (or a dense row); rows
    without a verdict (stored before verdicts existed) never are, except dense ones."""
    column = SPEED.get(speed, Axis(speed, True)).verdict
    dense = board["method"] == "dense" if "method" in board.columns else pd.Series(False, index=board.index)
    if column is None or column not in board.columns:
        return dense
    return board[column].isin(ON_FRONT) | dense



def accuracy_axis(column: str) -> Axis:
    """A known accuracy column, or a per-task accuracy `<task>/acc` (higher is better)."""
    return ACCURACY.get(column) or Axis(f"{column} (higher is better)", True)


def colours(methods) -> dict[str, str]:
    """A fixed colour per method name, stable across pages: sorted names take the palette in turn; dense is black."""
    palette = qualitative.Plotly + qualitative.D3
    names = sorted({m for m in methods if m != "dense"})
    return {"dense": "#222222", **{m: palette[i % len(palette)] for i, m in enumerate(names)}}


def symbols(patterns) -> dict[str, str]:
    return {p: SYMBOLS[i % len(SYMBOLS)] for i, p in enumerate(sorted(set(patterns), key=_pattern_order))}


def _pattern_order(label: str):
    return (label != "dense", ":" in label, label)


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
    """The rows on the Pareto front of their (model, hardware) panel: accuracy against `speed`, among the
    rows whose speed is a measured verdict (`measured`)."""
    higher = bool(accuracy_axis(accuracy).higher_is_better)
    mask = pd.Series(False, index=board.index)
    eligible = board[measured(board, speed)]
    for _, g in eligible.groupby(["model", "hardware"]):
        mask |= pareto_mask(g, speed, accuracy, True, higher).reindex(board.index, fill_value=False)
    return board[mask]


def _grid(frame: pd.DataFrame, rows: str, cols: str, titles) -> tuple[go.Figure, list, list]:
    row_keys = sorted(frame[rows].dropna().unique()) or [None]
    col_keys = sorted(frame[cols].dropna().unique()) or [None]
    fig = make_subplots(rows=len(row_keys), cols=len(col_keys), shared_xaxes=False, shared_yaxes=False,
                        subplot_titles=[titles(r, c) for r in row_keys for c in col_keys],
                        vertical_spacing=0.16 if len(row_keys) > 1 else 0.08, horizontal_spacing=0.06)
    return fig, row_keys, col_keys


def _scatter(n_points: int):
    return go.Scattergl if n_points > WEBGL_ABOVE else go.Scatter


def _hover(df: pd.DataFrame, fields: list[tuple[str, str]]) -> tuple[list, str]:
    """customdata and a hovertemplate showing `fields` (column, label) that exist in `df`."""
    present = [(c, label) for c, label in fields if c in df.columns]
    data = df[[c for c, _ in present]].astype(object).where(df[[c for c, _ in present]].notna(), "").to_numpy()
    lines = [f"{label}: %{{customdata[{i}]}}" for i, (_, label) in enumerate(present)]
    return data, "<br>".join(lines) + "<extra></extra>"


PROVENANCE = [("method", "method"), ("pattern", "pattern"), ("measured_sparsity", "measured sparsity"),
              ("kernel", "kernel"), ("kernel_status", "kernel status"), ("hardware", "hardware"), ("seed", "seed"),
              ("job_key", "job"), ("run_id", "run"), ("git_commit", "commit"), ("finished_at", "finished")]


def tradeoff_figure(board: pd.DataFrame, accuracy: str = "perplexity", speed: str = "decode_speedup_b1",
                    title: str | None = None) -> go.Figure:
    """Accuracy against measured speedup: one panel per (model, hardware), colour by method, symbol by pattern
    (hollow where the speed is no measured verdict: noise, slower, or stored without one), the 95% interval
    of the speedup as horizontal bars, and the Pareto front of each panel, over measured verdicts only, as a
    dashed line."""
    acc, spd = accuracy_axis(accuracy), SPEED.get(speed, Axis(speed, True))
    frame = board.dropna(subset=[accuracy, speed]) if {accuracy, speed} <= set(board.columns) else board.iloc[0:0]
    if frame.empty:
        return empty_figure(f"no finished job has both {accuracy} and {speed}")
    fig, models, hardware = _grid(frame, "model", "hardware", lambda m, h: f"{m} · {h}")
    colour, symbol = colours(frame["method"].unique()), symbols(frame["pattern"].unique())
    cloud = len(frame) > MARKED_UP_TO
    per_method = not cloud and len(models) * len(hardware) * frame["method"].nunique() <= TRACES_UP_TO
    Scatter = go.Scatter if cloud else _scatter(len(frame))
    shown = set()
    panels = dict(iter(frame.groupby(["model", "hardware"], sort=False)))
    for r, model in enumerate(models, start=1):
        for c, hw in enumerate(hardware, start=1):
            panel = panels.get((model, hw))
            if panel is None:
                continue
            eligible = measured(panel, speed)
            on_front = pareto_mask(panel[eligible], speed, accuracy, True, bool(acc.higher_is_better)).reindex(
                panel.index, fill_value=False)
            marked = panel[on_front] if cloud else panel
            if cloud:
                rest = panel[~on_front]
                fig.add_trace(go.Scattergl(
                    x=rest[speed].to_numpy(), y=rest[accuracy].to_numpy(), mode="markers", hoverinfo="skip",
                    name="off the fronts (no hover)", legendgroup="cloud", showlegend="cloud" not in shown,
                    marker=dict(color="#c4c4c4", size=4)), row=r, col=c)
                shown.add("cloud")
            groups = marked.groupby("method", sort=True) if per_method else [(None, marked)]
            for method, g in groups:
                custom, hover = _hover(g, [(accuracy, acc.label), (speed, spd.label), (spd.verdict, "verdict"), *PROVENANCE])
                error = None
                if spd.lo in g.columns and spd.hi in g.columns:
                    error = dict(type="data", symmetric=False, array=(g[spd.hi] - g[speed]).clip(lower=0).fillna(0),
                                 arrayminus=(g[speed] - g[spd.lo]).clip(lower=0).fillna(0), thickness=1, width=0)
                solid = measured(g, speed)  # noise, slower and unverdicted points are drawn hollow
                fig.add_trace(Scatter(
                    x=g[speed], y=g[accuracy], mode="markers", name=method or "configurations",
                    legendgroup=method, showlegend=method is not None and method not in shown, error_x=error,
                    customdata=custom, hovertemplate=hover,
                    marker=dict(color=colour[method] if method else [colour[m] for m in g["method"]],
                                symbol=[symbol[p] + ("" if s else "-open") for p, s in zip(g["pattern"], solid)], size=11,
                                line=dict(width=1, color="white"))), row=r, col=c)
                shown.add(method)
            front = panel[on_front].sort_values(speed)
            fig.add_trace(Scatter(x=front[speed], y=front[accuracy], mode="lines", name="Pareto front",
                                  legendgroup="front", showlegend="front" not in shown, hoverinfo="skip",
                                  line=dict(color="#888888", dash="dash", width=1.5, shape="linear")), row=r, col=c)
            shown.add("front")
    fig.update_xaxes(title_text=spd.label)  # every panel, in one call (Plotly's cost is per call)
    fig.update_yaxes(title_text=acc.label, type="log" if acc.log else None)
    if not per_method:  # one legend entry per method colour (the points are in per-panel traces)
        present = set(frame["method"].unique())
        for method in sorted(colour):
            if method in present:
                fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=method, legendgroup="methods",
                                         marker=dict(color=colour[method], size=10)))
    for label, sym in symbol.items():  # a legend entry per pattern symbol
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"pattern {label}", legendgroup="patterns",
                                 marker=dict(symbol=sym, color="#999999", size=10)))
    n_panels = len(models) * len(hardware)  # a dotted line at the dense model's speed in every panel
    dense_speed = [dict(type="line", x0=1, x1=1, y0=0, y1=1, xref=f"x{i if i > 1 else ''}",
                        yref=f"y{i if i > 1 else ''} domain", line=dict(color="#bbbbbb", width=1, dash="dot"))
                   for i in range(1, n_panels + 1)]
    fig.update_layout(title=title, height=max(380, 340 * len(models)), legend=dict(groupclick="togglegroup"),
                      margin=dict(t=60, l=10, r=10, b=10), shapes=dense_speed)
    return fig


def sparsity_figure(board: pd.DataFrame, accuracy: str = "perplexity") -> go.Figure:
    """Accuracy against measured sparsity, one line per (method, pattern kind), one panel per model. Accuracy
    does not depend on the kernel, so rows that differ only in hardware or kernel are counted once; seeds are
    averaged (the hover gives how many)."""
    acc = accuracy_axis(accuracy)
    if accuracy not in board.columns or board.dropna(subset=[accuracy]).empty:
        return empty_figure(f"no finished job has {accuracy}")
    kind = board["pattern_kind"] if "pattern_kind" in board.columns else board["pattern"]
    frame = board.assign(pattern_kind=kind).dropna(subset=[accuracy])
    frame = frame.drop_duplicates(subset=["model", "method", "pattern", "seed"])
    frame = (frame.groupby(["model", "method", "pattern", "pattern_kind"], as_index=False)
             .agg(measured_sparsity=("measured_sparsity", "mean"), value=(accuracy, "mean"), seeds=("seed", "nunique")))
    models = sorted(frame["model"].unique())
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, horizontal_spacing=0.06)
    colour, symbol = colours(frame["method"].unique()), symbols(frame["pattern"].unique())
    shown = set()
    for c, model in enumerate(models, start=1):
        for (method, pkind), g in frame[frame["model"] == model].groupby(["method", "pattern_kind"], sort=True):
            g = g.sort_values("measured_sparsity")
            custom, hover = _hover(g, [("method", "method"), ("pattern", "pattern"), ("measured_sparsity",
                                   "measured sparsity"), ("value", acc.label), ("seeds", "seeds averaged")])
            fig.add_trace(go.Scatter(
                x=g["measured_sparsity"], y=g["value"], mode="lines+markers" if len(g) > 1 else "markers",
                name=method, legendgroup=method, showlegend=method not in shown, customdata=custom,
                hovertemplate=hover, line=dict(color=colour[method], dash="solid" if pkind != "nm" else "dot"),
                marker=dict(color=colour[method], symbol=[symbol[p] for p in g["pattern"]], size=9)), row=1, col=c)
            shown.add(method)
        fig.update_xaxes(title_text="measured sparsity", row=1, col=c)
        fig.update_yaxes(title_text=acc.label, type="log" if acc.log else None, row=1, col=c)
    fig.update_layout(height=380, margin=dict(t=50, l=10, r=10, b=10))
    return fig


def kernel_figure(shapes: pd.DataFrame) -> go.Figure:
    """Measured per-layer speedup over the dense layer by shape (x), one panel per batch, colour by format,
    with the 95% interval as error bars and the ideal bound (dense bytes / bytes read) as a black bar per format."""
    if shapes.empty:
        return empty_figure("no per-shape kernel measurement in the selection (the latency stage writes them on CPU)")
    frame = shapes.copy()
    frame["shape_order"] = frame["shape"].map(lambda s: tuple(int(v) for v in s.split("x")))
    order = [s for s, _ in sorted(set(zip(frame["shape"], frame["shape_order"])), key=lambda t: t[1])]
    batches = sorted(frame["batch"].unique())
    fig = make_subplots(rows=1, cols=len(batches), subplot_titles=[f"batch {b}" for b in batches], shared_yaxes=True,
                        horizontal_spacing=0.04)
    formats = sorted(frame["format"].dropna().unique())
    palette = qualitative.Safe + qualitative.Plotly
    fcolour = {f: palette[i % len(palette)] for i, f in enumerate(formats)}
    shown = set()
    for c, batch in enumerate(batches, start=1):
        panel = frame[frame["batch"] == batch]
        for fmt in formats:
            g = panel[panel["format"] == fmt]
            if g.empty:
                continue
            custom, hover = _hover(g, [("shape", "shape"), ("format", "format"), ("speedup", "speedup"),
                                       ("speedup_lo", "95% low"), ("speedup_hi", "95% high"), ("verdict", "verdict"), ("ideal_speedup", "ideal"),
                                       ("GBps", "GB/s"), ("bandwidth_fraction", "of read bandwidth"),
                                       ("method", "method"), ("pattern", "pattern"), ("model", "model"),
                                       ("kernel", "kernel"), ("hardware", "hardware"), ("job_key", "job")])
            fig.add_trace(go.Scatter(
                x=g["shape"], y=g["speedup"], mode="markers", name=fmt, legendgroup=fmt, offsetgroup=fmt,
                showlegend=fmt not in shown, customdata=custom, hovertemplate=hover,
                error_y=dict(type="data", symmetric=False, array=(g["speedup_hi"] - g["speedup"]).clip(lower=0),
                             arrayminus=(g["speedup"] - g["speedup_lo"]).clip(lower=0), thickness=1, width=3),
                marker=dict(color=fcolour[fmt], size=9, line=dict(width=1, color="white"))), row=1, col=c)
            ideal = g.drop_duplicates(subset=["shape", "ideal_speedup"])
            fig.add_trace(go.Scatter(
                x=ideal["shape"], y=ideal["ideal_speedup"], mode="markers", name="ideal (bytes)", offsetgroup=fmt,
                legendgroup="ideal", showlegend="ideal" not in shown, hovertemplate="ideal %{y:.3g}x<extra></extra>",
                marker=dict(symbol="line-ew-open", size=26, color="#111111", line=dict(width=2))), row=1, col=c)
            shown.update({fmt, "ideal"})
        fig.update_xaxes(categoryorder="array", categoryarray=order, title_text="layer shape (out x in)", row=1, col=c)
    fig.update_yaxes(title_text="speedup vs dense layer (measured)", row=1, col=1)
    fig.add_hline(y=1.0, line=dict(color="#bbbbbb", width=1, dash="dot"))
    fig.update_layout(scattermode="group", height=420, margin=dict(t=50, l=10, r=10, b=10))
    return fig


def status_figure(runs: pd.DataFrame) -> go.Figure:
    """Jobs per run by status, as stacked horizontal bars (newest run on top)."""
    if runs.empty:
        return empty_figure("no runs yet")
    fig = go.Figure()
    label = runs["run_id"] + " · " + runs["grid_name"].fillna("")
    for status, colour in (("done", "#2ca02c"), ("failed", "#d62728"), ("cancelled", "#ff7f0e"),
                           ("pending", "#7f7f7f")):
        if status in runs.columns:
            fig.add_trace(go.Bar(y=label, x=runs[status], name=status, orientation="h", marker_color=colour))
    fig.update_layout(barmode="stack", height=max(200, 40 * len(runs) + 80), yaxis=dict(autorange="reversed"),
                      xaxis_title="jobs", margin=dict(t=30, l=10, r=10, b=10))
    return fig


def compare_figure(long: pd.DataFrame, metric: str, label_a: str, label_b: str) -> go.Figure:
    """One metric of `queries.compare` for side A and side B, grouped per experiment."""
    g = long[long["metric"] == metric]
    if g.empty:
        return empty_figure(f"no experiment has {metric} on both sides")
    keys = [c for c in ("model", "method", "pattern", "hardware", "kernel", "seed", "run_id") if c in g.columns
            and g[c].nunique() > 1] or ["pattern"]
    x = g[keys].astype(str).agg(" · ".join, axis=1)
    fig = go.Figure([go.Bar(x=x, y=g["A"], name=f"A: {label_a}", marker_color="#1f77b4"),
                     go.Bar(x=x, y=g["B"], name=f"B: {label_b}", marker_color="#ff7f0e")])
    axis = ACCURACY.get(metric)
    fig.update_layout(barmode="group", yaxis_title=axis.label if axis else metric, height=380,
                      yaxis_type="log" if axis and axis.log else None, margin=dict(t=30, l=10, r=10, b=10))
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=200, margin=dict(t=10, l=10, r=10, b=10))
    return fig
