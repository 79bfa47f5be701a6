"""Leaderboard: finished jobs under the sidebar filters, ranked within each model, with the trade-off
between accuracy and measured speed at a glance."""

import streamlit as st

from dashboard import app, charts, queries

st.title("Leaderboard")
counts = app.open_store()
if counts is None:
    st.stop()

board = app.load("leaderboard", filters=app.filters())
cols = st.columns(4)
cols[0].metric("results", len(board))
cols[1].metric("failed jobs", app.count(counts, "failed"), help="their errors are on the Runs page")
cols[2].metric("runs", app.count(counts, "runs"))
cols[3].metric("runs in progress", app.running(counts), help="reload to see their new rows")
if board.empty:
    st.warning("No finished job matches the filters in the sidebar.")
    st.stop()

tasks = sorted(c for c in board.columns if c.endswith("/acc"))
metrics = [m for m in charts.ACCURACY if board[m].notna().any()] + tasks
rank_by = st.selectbox("Rank by", metrics, format_func=lambda m: charts.accuracy_axis(m).label, key="rank_by")
axis = charts.accuracy_axis(rank_by)
board = queries.ranked(board, rank_by, bool(axis.higher_is_better))

mask_only = int((board["kernel_status"] == "mask only").sum())
if mask_only:
    st.caption(f"{mask_only} row(s) are **mask only**: their kernel runs the pruned weights as dense, so the "
               "zeros buy no speed; their speedup is measurement noise around 1, and their verdict says so.")

shown = ["rank", "model", "method", "pattern", "target_sparsity", "measured_sparsity", "hardware", "kernel",
         "kernel_status", "perplexity", "perplexity_change_vs_dense", "kl_vs_dense", "task_acc_mean",
         "task_acc_change_vs_dense", "task_flips_mean",
         "decode_speedup_b1", "decode_speedup_b1_lo", "decode_speedup_b1_hi", "decode_speedup_b1_verdict",
         "decode_aa_b1", "decode_predicted_speedup_b1", "decode_outside_share_b1", "prefill_speedup",
         "prefill_speedup_lo", "prefill_speedup_hi", "prefill_speedup_verdict", "decode_tok_s_b1", "prefill_ms",
         *tasks, "seed", "run_id",
         "job_key"]
number = st.column_config.NumberColumn
st.dataframe(
    board[[c for c in shown if c in board.columns]], hide_index=True, height=420, key="leaderboard_table",
    column_config={
        "target_sparsity": number("target", format="%.2f"),
        "measured_sparsity": number("measured sparsity", format="%.4f"),
        "kernel_status": st.column_config.TextColumn("kernel status", help="accelerated, mask only or dense"),
        "perplexity": number("perplexity", format="%.4f"),
        "perplexity_change_vs_dense": number("ppl vs dense", format="percent",
                                             help="perplexity / dense perplexity - 1 (same model, hardware, kernel, seed)"),
        "kl_vs_dense": number("KL vs dense", format="%.4f",
                              help="mean KL(dense || pruned) of next-token distributions on the perplexity text, nats/token"),
        "task_acc_mean": number("task acc", format="%.4f"),
        "task_flips_mean": number("flips", format="%.4f",
                                  help="fraction of multiple-choice answers that differ from the dense model's (mean over tasks)"),
        "task_acc_change_vs_dense": number("acc vs dense", format="%+.4f"),
        "decode_speedup_b1": number("decode speedup", format="%.3fx",
                                    help="median of paired per-round ratios against the dense model, same process; "
                                         "1x by definition for a dense row"),
        "decode_speedup_b1_lo": number("decode 95% low", format="%.3f"),
        "decode_speedup_b1_hi": number("decode 95% high", format="%.3f"),
        "decode_speedup_b1_verdict": st.column_config.TextColumn(
            "decode verdict", help="faster or slower: the interval excludes 1 and the median lies beyond the A/A "
                                   "band; otherwise no measurable difference"),
        "decode_aa_b1": number("A/A (noise)", format="%.3fx",
                               help="the dense model timed against itself in the same rounds: the noise floor"),
        "decode_predicted_speedup_b1": number("predicted (Amdahl)", format="%.3fx",
                                              help="from the per-shape speedups and the dense decode's time in the pruned layers"),
        "decode_outside_share_b1": number("decode outside pruned layers", format="percent"),
        "prefill_speedup": number("prefill speedup", format="%.3fx"),
        "prefill_speedup_lo": number("prefill 95% low", format="%.3f"),
        "prefill_speedup_hi": number("prefill 95% high", format="%.3f"),
        "prefill_speedup_verdict": st.column_config.TextColumn("prefill verdict"),
        "decode_tok_s_b1": number("decode tok/s", format="%.1f"), "prefill_ms": number("prefill ms", format="%.2f"),
        **{t: number(t.removesuffix("/acc"), format="%.3f") for t in tasks},
    })
st.download_button("Download CSV", lambda: board.to_csv(index=False), file_name="leaderboard.csv",
                   mime="text/csv", icon=":material/download:", help="every column at full precision")
st.caption("The table rounds for display only; the CSV and the store keep every digit.")

st.subheader("Accuracy against measured speed")
st.plotly_chart(charts.tradeoff_figure(board, rank_by, "decode_speedup_b1"), key="leaderboard_pareto")
if len(board) > charts.MARKED_UP_TO:
    st.caption(f"{len(board)} configurations: those on a Pareto front are marked by method and pattern, the others "
               "are the grey cloud (narrow the filters to mark every point).")
