"""Runs: every `bench submit` with its status, the failed jobs and their errors, the provenance of the run
and the grid text it ran."""

import pandas as pd
import streamlit as st

from dashboard import app, charts, labels, queries

st.title("Runs")
counts = app.open_store(need_results=False)
if counts is None:
    st.stop()

runs = app.load("runs", filters=app.filters())
if runs.empty:
    if app.filters() == queries.Filters():
        app.first_steps("The store has no runs yet.")
    else:
        st.warning("No run has a job that matches the filters in the sidebar.")
    st.stop()
if app.filters() != queries.Filters():
    st.caption("Runs with a job that matches the sidebar's filters; their job counts are of the matching jobs only.")
st.plotly_chart(charts.status_figure(runs), key="runs_status")
app.table(runs.drop(columns=["command"]), key="runs_table")

failed = app.load("jobs", statuses=("failed",), filters=app.filters())
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
              f"**commit** `{labels.text(detail['git_commit'], 'git_commit') or '-'}`"
              + (" (uncommitted changes)" if detail["git_dirty"] else "") +
              f"  \n**Ray** `{detail['ray_address']}`  \n**started** {labels.text(detail['started_at'], 'started_at')}"
              f"  \n**finished** {labels.text(detail['finished_at'], 'finished_at') or '-'}  \n**status** {detail['status']}")
right.markdown("**hardware**")
hardware = detail["hardware"] or {}
right.dataframe(pd.DataFrame({"": list(hardware), "value": [", ".join(map(str, v)) if isinstance(v, list) else
                                                            ("" if v is None else str(v)) for v in hardware.values()]}),
                hide_index=True, key="runs_hardware")
with st.expander("Package versions"):
    packages = detail["packages"] or {}
    st.dataframe(pd.DataFrame({"package": list(packages), "version": list(packages.values())}), hide_index=True,
                 key="runs_packages")
st.markdown("**grid**")
st.code(detail["grid_text"], language="toml")

status = st.multiselect("Jobs of this run with status", ["done", "failed", "cancelled", "queued", "running"],
                        key="runs_status_filter", placeholder="any")
app.table(app.load("jobs", run_id=run_id, statuses=tuple(status), filters=app.filters()).drop(
    columns=["traceback", "worker", "warnings"]), key="runs_jobs")
