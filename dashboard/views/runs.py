"""Runs: every `bench submit` with its status, the failed jobs and their errors, the provenance of the run
and the grid text it ran."""

import json

import streamlit as st

from dashboard import app, charts

st.title("Runs")
counts = app.open_store(need_results=False)
if counts is None:
    st.stop()

runs = app.load("runs")
if runs.empty:
    app.first_steps("The store has no runs yet.")
    st.stop()
st.plotly_chart(charts.status_figure(runs), key="runs_status")
st.dataframe(runs.drop(columns=["command"]), hide_index=True, key="runs_table")

failed = app.load("jobs", statuses=("failed",))
st.subheader(f"Failed jobs ({len(failed)})")
if failed.empty:
    st.caption("None.")
for row in failed.head(50).itertuples():
    with st.expander(f"{row.model} · {row.method} · {row.pattern} · {row.hardware} · {row.kernel} · seed {row.seed}"):
        st.error(row.error or "no error recorded")
        st.caption(f"job {row.job_key} · run {row.run_id} · attempts {row.attempts}")
        if row.traceback:
            st.code(row.traceback, language="text")
if len(failed) > 50:
    st.caption(f"... and {len(failed) - 50} more: `bench ls --status failed`.")

st.subheader("Run details")
run_id = st.selectbox("Run", runs["run_id"].tolist(), key="runs_run",
                      format_func=lambda r: f"{r} · {runs.set_index('run_id').at[r, 'grid_name']}")
detail = app.load("run_detail", run_id=run_id)
left, right = st.columns(2)
left.markdown(f"**command** `{detail['command']}`  \n**grid file** `{detail['grid_file']}`  \n"
              f"**commit** `{detail['git_commit']}`" + (" (uncommitted changes)" if detail["git_dirty"] else "") +
              f"  \n**Ray** `{detail['ray_address']}`  \n**started** {detail['started_at']}  \n"
              f"**finished** {detail['finished_at'] or '-'}  \n**status** {detail['status']}")
right.markdown("**hardware**")
right.code(json.dumps(detail["hardware"], indent=2, sort_keys=True), language="json")
with st.expander("Package versions"):
    st.code(json.dumps(detail["packages"], indent=2, sort_keys=True), language="json")
st.markdown("**grid**")
st.code(detail["grid_text"], language="toml")

status = st.multiselect("Jobs of this run with status", ["done", "failed", "cancelled", "queued", "running"],
                        key="runs_status_filter", placeholder="any")
st.dataframe(app.load("jobs", run_id=run_id, statuses=tuple(status)).drop(columns=["traceback"]),
             hide_index=True, key="runs_jobs")
