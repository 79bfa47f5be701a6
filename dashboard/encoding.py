"""How a figure encodes a row: one colour per method and one symbol per pattern for a whole store, the
patterns' order, readable log-axis ticks, tooltips written as every page writes a value, and the figure
that says why there is nothing to draw. Pure: no I/O, no Streamlit.

    enc = encoding(store_methods, store_patterns)   # the same colours on every page and under every filter
    enc.method_colour("wanda"), enc.pattern_symbol("2:4")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from dashboard import labels

SYMBOLS = ["circle", "diamond", "square", "triangle-up", "x", "star", "cross", "triangle-down", "pentagon",
           "hexagon", "triangle-left", "triangle-right", "hourglass", "bowtie"]

# Built-in methods keep these colours in every store; other methods take the palette in name order.
METHOD_COLOURS = {"dense": "#222222", "random": "#9e9e9e", "magnitude": "#1f77b4", "wanda": "#ff7f0e",
                  "sparsegpt": "#2ca02c"}
MASK_ONLY = "#b0b0b0"  # points whose zeros no kernel ran: grey, hollow, never on a front


@dataclass(frozen=True)
class Encoding:
    """One colour per method and one symbol per pattern, for a whole store: built from every method and
    pattern the store holds (not the filtered rows), so a method keeps its colour on every page and under
    every filter."""
    colour: dict
    symbol: dict

    def method_colour(self, method: str) -> str:
        return self.colour.get(method, "#666666")

    def pattern_symbol(self, pattern: str) -> str:
        return self.symbol.get(pattern, "circle")


def encoding(methods, patterns) -> Encoding:
    """The encoding of a store whose methods and patterns are these (in any order, repeats allowed)."""
    palette = [c for c in qualitative.Plotly + qualitative.D3 + qualitative.Dark24 if c not in METHOD_COLOURS.values()]
    colour = {m: c for m, c in METHOD_COLOURS.items()}
    others = sorted({str(m) for m in methods} - set(colour))
    colour.update({m: palette[i % len(palette)] for i, m in enumerate(others)})
    ordered = sorted({str(p) for p in patterns}, key=pattern_order)
    return Encoding(colour, {p: SYMBOLS[i % len(SYMBOLS)] for i, p in enumerate(ordered)})


def encoding_of(frame: pd.DataFrame, enc: Encoding | None) -> Encoding:
    if enc is not None:
        return enc
    return encoding(frame["method"].unique() if "method" in frame else (),
                    frame["pattern"].unique() if "pattern" in frame else ())


def colours(methods) -> dict[str, str]:
    """A fixed colour per method name (see `encoding`)."""
    return encoding(methods, ()).colour


def symbols(patterns) -> dict[str, str]:
    return encoding((), patterns).symbol


def pattern_order(label: str):
    """dense first, then unstructured by sparsity, then N:M by density, then anything else by name."""
    if label == "dense":
        return (0, 0.0, label)
    if label.endswith("%"):
        try:
            return (1, float(label[:-1]), label)
        except ValueError:
            pass
    if ":" in label:
        n, _, m = label.partition(":")
        if n.isdigit() and m.isdigit() and int(m):
            return (2, 1 - int(n) / int(m), label)
    return (3, 0.0, label)


def hover(df: pd.DataFrame, fields: list[str]) -> tuple[np.ndarray, str]:
    """customdata and a hovertemplate showing `fields` (columns of `df`), each written as every page writes it
    (`labels.text`: 3 significant digits, a short commit, nothing for a missing value)."""
    present = [c for c in fields if c in df.columns]
    data = np.empty((len(df), len(present)), dtype=object)
    for i, c in enumerate(present):
        data[:, i] = [labels.text(v, c) for v in df[c].tolist()]
    lines = [f"{labels.label(c)}: %{{customdata[{i}]}}" for i, c in enumerate(present)]
    return data, "<br>".join(lines) + "<extra></extra>"


def log_ticks(values) -> dict:
    """Tick values and labels for a log axis over `values`: 1, 2, 5 per decade across up to two decades,
    else the powers of ten (Plotly's own minor labels read "1000, 5, 2, 100")."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if v.size == 0:
        return {}
    lo, hi = np.floor(np.log10(v.min())), np.ceil(np.log10(v.max()))
    if hi == lo:
        hi = lo + 1
    steps = (1, 2, 5) if hi - lo <= 2 else (1,)
    ticks = [m * 10 ** e for e in range(int(lo), int(hi) + 1) for m in steps]
    ticks = [t for t in ticks if v.min() / 2 <= t <= v.max() * 2] or [10 ** lo, 10 ** hi]
    return dict(tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=200, margin=dict(t=10, l=10, r=10, b=10))
    return fig
