"""Compare: two methods, or two runs, side by side on every experiment they share."""

import streamlit as st

from dashboard import app, charts

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
metric = st.selectbox("Metric", metrics, key="compare_metric")
st.plotly_chart(charts.compare_figure(long, metric, a, b), key="compare_chart")
st.dataframe(long[long["metric"] == metric], hide_index=True, key="compare_table",
             column_config={"higher_is_better": st.column_config.CheckboxColumn("higher is better")})
with st.expander("Every metric"):
    st.dataframe(long, hide_index=True)
