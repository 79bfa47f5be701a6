"""Trade-offs: the Pareto front of accuracy against measured speedup per model and hardware, and accuracy
against sparsity per method."""

import streamlit as st

from dashboard import app, charts, labels

st.title("Trade-offs")
if app.open_store() is None:
    st.stop()

board = app.load("leaderboard", filters=app.filters())
if board.empty:
    st.warning("No finished job matches the filters in the sidebar.")
    st.stop()

tasks = sorted(c for c in board.columns if c.endswith("/acc"))
accuracies = [m for m in charts.ACCURACY if board[m].notna().any()] + tasks
left, right = st.columns(2)
accuracy = left.selectbox("Accuracy", accuracies, format_func=labels.label, key="accuracy", bind="query-params")
speeds = [s for s in charts.SPEED if board[s].notna().any()]
if not speeds:
    st.warning("No finished job in the selection has a latency measurement (the grid has no [latency] table).")
    st.stop()
speed = right.selectbox("Speed", speeds, format_func=labels.label, key="speed", bind="query-params")
enc = app.encoding()

selection = {"filters": app.filters()}
st.plotly_chart(app.figure("tradeoff_figure", "leaderboard", selection, accuracy, speed, enc=enc), key="tradeoff_pareto")
if len(board) > charts.MARKED_UP_TO:
    st.caption(f"{len(board)} configurations: those on a Pareto front are marked by method and pattern, the others "
               "are the grey cloud (narrow the filters to mark every point).")
st.caption("One panel per model and hardware: every kernel measured there competes. Bars are the 95% interval of "
           "the median paired per-round speedup; the grey band is the dense model timed against itself (A/A), the "
           "noise floor. Solid points were measured faster or slower; hollow ones measured no difference; grey "
           "hollow ones are mask only (no kernel ran their zeros). Only dense and measured-faster points stand on "
           "a front; dense is 1x by definition.")

st.subheader("Accuracy against sparsity")
st.plotly_chart(app.figure("sparsity_figure", "leaderboard", selection, accuracy, enc=enc), key="tradeoff_sparsity")
st.caption("Solid lines join unstructured sparsities of a method; N:M patterns are dotted; the same with an "
           "activation rule on top are dashed and dash-dotted. Accuracy does not depend on the kernel, so each "
           "pruned model counts once.")

front = charts.pareto_rows(board, accuracy, speed)
with st.expander(f"The {len(front)} configurations on the Pareto fronts"):
    columns = ["model", "hardware", "sparsity_kind", "method", "pattern", "activations", "kernel", "kernel_status",
               accuracy, speed,
               charts.SPEED[speed].verdict, "measured_sparsity", "job_key"]
    app.table(front[[c for c in columns if c in front.columns]], key="tradeoff_front")
