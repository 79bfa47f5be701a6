"""Compare: two methods, or two runs, side by side on every experiment they share."""

import streamlit as st

from dashboard import app, charts, labels

st.title("Compare")
if app.open_store() is None:
    st.stop()

by = st.radio("Compare", ["method", "run_id"], horizontal=True, key="compare_by",
              format_func=lambda b: {"method": "two methods", "run_id": "two runs"}[b])
board = app.load("leaderboard", filters=app.filters())
# dense last: a method is compared with another method on the patterns both ran (dense has only its own)
choices = sorted(board[by].dropna().unique().tolist(), key=lambda v: (v == "dense", v))
if len(choices) < 2:
    st.info(f"The selection has fewer than two {'methods' if by == 'method' else 'runs'} with finished jobs.")
    st.stop()
left, right = st.columns(2)
a = left.selectbox("A", choices, index=0, key=f"compare_a_{by}")
b = right.selectbox("B", choices, index=1, key=f"compare_b_{by}")
if a == b:
    st.info("Pick two different sides.")
    st.stop()

long = app.load("compare", by=by, a=a, b=b, filters=app.filters())
if long.empty:
    st.info("A and B share no experiment (same model, pattern, hardware, kernel and seed) in the selection.")
    st.stop()
metrics = [m for m in long["metric"].cat.categories if long.loc[long["metric"] == m, "A"].notna().any()]
metric = st.selectbox("Metric", metrics, format_func=labels.label, key="compare_metric")
st.plotly_chart(charts.compare_figure(long, metric, a, b), key="compare_chart")
def readable(frame):
    """The long table with each value written as its metric is written everywhere (3 significant digits)."""
    out = frame.copy()
    for side in ("A", "B"):
        out[side] = [labels.text(v, m) for v, m in zip(frame[side], frame["metric"].astype(str))]
    out["B - A"] = ["" if labels.missing(v) else labels.sig(float(v)) if labels.column(m).kind == "ratio"
                    else labels.text(v, m) for v, m in zip(frame["B - A"], frame["metric"].astype(str))]
    out["B / A"] = ["" if labels.missing(v) else f"{labels.sig(float(v))}x" for v in frame["B / A"]]
    out["metric"] = frame["metric"].astype(str).map(labels.label)
    return out


config = {"higher_is_better": st.column_config.CheckboxColumn("higher is better")}
st.dataframe(readable(long[long["metric"] == metric]), hide_index=True, key="compare_table", column_config=config,
             placeholder="")
with st.expander("Every metric"):
    st.dataframe(readable(long), hide_index=True, column_config=config, placeholder="")
