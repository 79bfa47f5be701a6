"""The Kernels page's figure: per-layer-shape speedup against the ideal from bytes. Pure, like dashboard.charts."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pandas as pd
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dashboard import labels
from dashboard.encoding import SYMBOLS, empty_figure, hover as _hover, log_ticks

# The Kernels page clips its speedup axis here (and marks what it clipped): one outlier (a p90 of 27.8x)
# otherwise squashes every other point near zero.
KERNEL_AXIS_MAX = 8.0


def kernel_figure(shapes: pd.DataFrame) -> go.Figure:
    """Measured per-layer speedup against the ideal from bytes (dense bytes / bytes read), one panel per batch,
    colour by format, symbol by target sparsity, the 95% interval as bars, on a log axis with the line where
    measured equals ideal; the fraction of the read bandwidth reached in every tooltip. Points beyond
    KERNEL_AXIS_MAX are drawn at the edge as triangles and say so in their tooltip."""
    if shapes.empty:
        return empty_figure("no per-shape kernel measurement in the selection (the latency stage writes them on CPU)")
    frame = shapes.dropna(subset=["speedup", "ideal_speedup"]).copy()
    if frame.empty:
        return empty_figure("no per-shape measurement in the selection has both a speedup and its ideal")
    batches = sorted(frame["batch"].unique())
    fig = make_subplots(rows=1, cols=len(batches), subplot_titles=[f"batch {b}" for b in batches], shared_yaxes=True,
                        horizontal_spacing=0.04)
    formats = sorted(frame["format"].dropna().unique())
    palette = qualitative.Safe + qualitative.Plotly
    fcolour = {f: palette[i % len(palette)] for i, f in enumerate(formats)}
    levels = sorted(frame["target_sparsity"].dropna().unique()) if "target_sparsity" in frame else []
    lsymbol = {lvl: SYMBOLS[i % len(SYMBOLS)] for i, lvl in enumerate(levels)}
    top = KERNEL_AXIS_MAX
    lo_edge = max(0.1, min(float(frame["speedup_lo"].min(skipna=True) if frame["speedup_lo"].notna().any() else 1),
                           float(frame["speedup"].min())) / 1.3)
    span = [np.log10(lo_edge), np.log10(top * 1.05)]
    fields = ["shape", "format", "target_sparsity", "speedup", "speedup_lo", "speedup_hi", "verdict", "ideal_speedup",
              "bandwidth_fraction", "GBps", "rounds", "threads", "method", "pattern", "activations", "inputs_skipped",
              "model", "kernel", "hardware", "job_key"]
    fields = [f for f in fields if f in frame.columns]  # (activations: stores from before the rules lack them)
    for c, batch in enumerate(batches, start=1):
        panel = frame[frame["batch"] == batch]
        for fmt in formats:
            g = panel[panel["format"] == fmt]
            if g.empty:
                continue
            clipped = g["speedup"] > top
            y = g["speedup"].clip(upper=top)
            hi = g["speedup_hi"].clip(upper=top)
            custom, hover = _hover(g.assign(clipped=np.where(clipped, f"beyond the axis ({top:g}x): drawn at its edge", "")),
                                   fields + ["clipped"])
            symbol = [("triangle-up" if cl else lsymbol.get(t, "circle")) for t, cl in
                      zip(g["target_sparsity"] if "target_sparsity" in g else [None] * len(g), clipped)]
            fig.add_trace(go.Scatter(
                x=g["ideal_speedup"].clip(upper=top), y=y, mode="markers", name=fmt, legendgroup=f"format {fmt}",
                legendgrouptitle_text=None, showlegend=False, customdata=custom, hovertemplate=hover,
                error_y=dict(type="data", symmetric=False, array=(hi - y).clip(lower=0).fillna(0),
                             arrayminus=(y - g["speedup_lo"]).clip(lower=0).fillna(0), thickness=1, width=3),
                marker=dict(color=fcolour[fmt], size=10, symbol=symbol, line=dict(width=1, color="white"))), row=1, col=c)
        fig.add_trace(go.Scatter(x=[lo_edge, top], y=[lo_edge, top], mode="lines", name="measured = ideal",
                                 legendgroup="ideal", showlegend=c == 1, hoverinfo="skip", legendrank=400,
                                 line=dict(color="#111111", width=1, dash="dash")), row=1, col=c)
        fig.update_xaxes(type="log", range=span, title_text=labels.label("ideal_speedup"),
                         **log_ticks([lo_edge, top]), row=1, col=c)
    for i, fmt in enumerate(formats):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=fmt, legendgroup=f"format {fmt}",
                                 legendgrouptitle_text="format" if i == 0 else None, legendrank=100,
                                 marker=dict(color=fcolour[fmt], symbol="circle", size=10)))
    for i, lvl in enumerate(levels):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=labels.text(lvl, "target_sparsity"),
                                 legendgroup="levels", legendgrouptitle_text="target sparsity" if i == 0 else None,
                                 legendrank=200, marker=dict(color="#777777", symbol=lsymbol[lvl], size=10)))
    fig.update_yaxes(type="log", range=span, **log_ticks([lo_edge, top]))
    fig.update_yaxes(title_text=labels.label("speedup") + " (measured)", row=1, col=1)
    fig.add_hline(y=1.0, line=dict(color="#bbbbbb", width=1, dash="dot"))
    fig.update_layout(height=440, margin=dict(t=50, l=10, r=10, b=10), legend=dict(groupclick="togglegroup"))
    return fig
