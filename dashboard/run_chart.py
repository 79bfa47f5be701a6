"""The Runs page's figure: jobs per run by status. Pure, like dashboard.charts."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.encoding import empty_figure


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
