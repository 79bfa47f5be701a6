"""Leaderboard: the trade-off between accuracy and measured speed at a glance (the Pareto chart first), then one
row per pruned model with a column group per kernel backend, ranked within each sparsity level, and the
method x pattern table papers print."""

import streamlit as st

from dashboard import app, charts, labels, tables

st.title("Leaderboard")
counts = app.open_store()
if counts is None:
    st.stop()

board = app.load("leaderboard", filters=app.filters())
failed, runs, running = app.count(counts, "failed"), app.count(counts, "runs"), app.running(counts)
st.caption(f"{len(board)} results · {failed} failed job(s) (errors on the Runs page) · {runs} run(s)"
           + (f", {running} in progress (reload for new rows)" if running else ""))
if board.empty:
    st.warning("No finished job matches the filters in the sidebar.")
    st.stop()

tasks = sorted(c for c in board.columns if c.endswith("/acc"))
metrics = [m for m in charts.ACCURACY if board[m].notna().any()] + tasks
speeds = [s for s in charts.SPEED if s in board.columns and board[s].notna().any()] or ["decode_speedup_b1"]
left, right = st.columns(2)
rank_by = left.selectbox("Rank by", metrics, format_func=labels.label, key="rank_by", bind="query-params")
speed = right.selectbox("Speed", speeds, format_func=labels.label, key="speed", bind="query-params")
axis = charts.accuracy_axis(rank_by)

st.plotly_chart(app.figure("tradeoff_figure", "leaderboard", {"filters": app.filters()}, rank_by, speed,
                           enc=app.encoding(), height=350, status_legend=False, per_row=3),
                key="leaderboard_pareto")  # weights, activations and both side by side: the table stays in view
st.caption("Solid: measured faster or slower than dense; hollow: no measurable difference; grey: mask only (no "
           "kernel ran the zeros). Bars: 95% intervals; grey band: dense timed against itself (A/A). Only dense and "
           "measured-faster points stand on a front (dashed).")
if len(board) > charts.MARKED_UP_TO:
    st.caption(f"{len(board)} configurations: those on a Pareto front are marked by method and pattern, the others "
               "are the grey cloud (narrow the filters to mark every point).")

wide, kernels = tables.by_pruned_model(board, speed)
wide = tables.ranked(wide, rank_by, bool(axis.higher_is_better))
number, badge = st.column_config.NumberColumn, st.column_config.MultiselectColumn
config = {
    "rank": number(labels.label("rank"), help=labels.column("rank").help, pinned=True, format="%d"),
    **{c: st.column_config.TextColumn(labels.label(c), pinned=True) for c in ("model", "method", "pattern")},
    "target_sparsity": number(labels.label("target_sparsity"), format="%.3g", pinned=True),
    "hardware": st.column_config.TextColumn(labels.label("hardware")),
    "seed": number(labels.label("seed"), format="%d"),
}
for c in [*tables.ACCURACY, *tasks]:
    if c in wide.columns:
        config[c] = number(labels.label(c), format=labels.printf(c), help=labels.column(c).help)
for kernel in kernels:
    config[f"{kernel} · speed"] = number(f"{kernel} · {labels.label(speed)}", format="%.3gx",
                                         help=labels.column(speed).help)
    config[f"{kernel} · 95% interval"] = st.column_config.TextColumn(
        f"{kernel} · 95% interval (x)", help="the interval of the median paired ratio; for a dense row, its A/A "
                                             "(dense against dense) figure: the noise floor")
    config[f"{kernel} · verdict"] = badge(f"{kernel} · verdict", options=tables.VERDICTS, color=tables.VERDICT_COLOURS,
                                          help=labels.column(charts.SPEED[speed].verdict).help)
    config[f"{kernel} · status"] = badge(f"{kernel} · kernel", options=tables.STATUSES, color=tables.STATUS_COLOURS,
                                         help=labels.column("kernel_status").help)
    config[f"{kernel} · job"] = st.column_config.LinkColumn(f"{kernel} · job", display_text="open",
                                                            help="the job's page: provenance, per-layer sparsity and "
                                                                 "kernel formats, bytes against the bound, errors")
shown = wide.copy()
for c in [*tables.ACCURACY, *tasks, "target_sparsity"]:
    if c in shown.columns:  # percent columns hold percent (the header says so); the CSV keeps the store's units
        shown[c] = shown[c].map(lambda v, c=c: labels.display(c, v))
rules = "activations" in shown.columns and shown["activations"].fillna("none").ne("none").any()
protocols = "protocol" in shown.columns and shown["protocol"].nunique() > 1  # then ranked apart: say which
order = ["rank", "model", *(["protocol"] if protocols else []), "method", "pattern", *(["activations"] if rules else []),
         "target_sparsity", "hardware",
         *[c for c in [*tables.ACCURACY, *tasks] if c in shown.columns],
         *[f"{k} · {what}" for k in kernels for what in ("speed", "95% interval", "verdict", "status", "job")], "seed"]
st.dataframe(shown[order], hide_index=True, height=420, key="leaderboard_table", column_config=config,
             placeholder="")
st.download_button("Download CSV", lambda: board.to_csv(index=False), file_name="leaderboard.csv",
                   mime="text/csv", icon=":material/download:", help="every column of every row at full precision")
st.caption("The table shows 3 significant digits; the CSV and the store keep every digit. Ranks compare methods "
           "within one model, perplexity protocol, sparsity level and activation rule. A dense row's speed is 1x "
           "by definition; its interval column gives the dense model timed against itself (A/A).")

with st.expander("Method x pattern, as papers print it"):
    paper_metrics = [m for m in ("perplexity", "kl_vs_dense", "task_acc_mean") if m in board.columns
                     and board[m].notna().any()]
    paper_metric = st.selectbox("Metric", paper_metrics, format_func=labels.label, key="paper_metric")
    paper = tables.paper_table(board, paper_metric)
    patterns = [c for c in paper.columns if c not in ("model", "method")]
    st.dataframe(paper.assign(**{p: paper[p].map(lambda v: labels.display(paper_metric, v)) for p in patterns}),
                 hide_index=True, key="paper_table",
                 column_config={p: number(p, format=labels.printf(paper_metric)) for p in patterns})
    st.caption(f"{labels.label(paper_metric)}, per model; each pruned model once (accuracy does not depend on the "
               "kernel); seeds averaged.")
