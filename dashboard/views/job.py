"""Job: one job's page, opened from a row of the leaderboard (`job?job=KEY`): what it is, where and with what
it ran, what it measured, per layer shape the kernel format and speed against the bytes bound, the sparsity
of every pruned layer, its stages, and its error if it failed."""

import json

import pandas as pd
import streamlit as st

from dashboard import app, labels

st.title("Job")
if app.open_store(need_results=False) is None:
    st.stop()

key = st.query_params.get("job", "")
if not key:
    st.info("No job given: open one from the Leaderboard's `job` column, or add `?job=KEY` to this page's URL "
            "(`bench ls` lists the keys).")
    st.stop()
detail = app.load("job_detail", job_key=key)
if not detail:
    st.error(f"No job {key} in this store.")
    st.stop()
job, run = detail["job"], detail["run"]


def say(value, default="-") -> str:
    """A stored value as text; `default` for a missing one (never "None" or "nan")."""
    return default if labels.missing(value) else str(value)


st.markdown(f"**{job['model']} · {job['method']} · {job['pattern']} · {job['hardware']} · {job['kernel']} · seed "
            f"{job['seed']}**  \njob `{key}` · status **{job['status']}** · kernel status **{say(job['kernel_status'])}**"
            f" · attempts {say(job['attempts'])} · duration {labels.text(job['duration_s'], 'duration_s') or '-'} s")
if job.get("error"):
    st.error(job["error"])
    if job.get("traceback"):
        with st.expander("Traceback"):
            st.code(job["traceback"], language="text")

metrics = detail["metrics"]
per_shape = metrics[metrics["name"].str.startswith("layer_speedup_b")]
summary = metrics[~metrics["name"].str.startswith(("layer_speedup_b", "layer_GBps_b"))]
left, right = st.columns(2)
with left:
    st.subheader("Measured")
    rows = []
    for m in summary.itertuples():
        details = json.loads(m.details) if isinstance(m.details, str) else {}
        # a speedup's interval is that of its paired ratios; an A/A figure's, its own
        spread = (details.get("aa") if m.name.startswith("aa_") else
                  details.get("speedup_paired") if "speedup" in m.name and "predicted" not in m.name else None) or {}
        interval = (f"{labels.sig(spread['lo'])}-{labels.sig(spread['hi'])}" if spread.get("lo") is not None
                    and spread.get("hi") is not None else "")
        verdict = details.get("verdict") if m.name in ("decode_speedup_b1", "decode_speedup_b8", "prefill_speedup") else ""
        rows.append({"metric": labels.label(m.name), "value": labels.text(m.value, m.name), "95% interval": interval,
                     "verdict": verdict or "", "stage": m.stage})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="job_metrics", placeholder="")
with right:
    st.subheader("Provenance")
    commit = labels.text(run.get("git_commit"), "git_commit")
    st.markdown(f"run `{job['run_id']}` · grid **{say(run.get('grid_name'))}**  \ncommit `{commit or '-'}`"
                + (" (uncommitted changes)" if run.get("git_dirty") is True else "")
                + f"  \nmodel `{say(job.get('model_source'), '')}` · fingerprint `{say(job.get('model_fingerprint'))}`"
                + f"  \nmethod version {say(job.get('method_version'))} · kernel version {say(job.get('kernel_version'))}")
    hardware = run.get("hardware") or {}
    facts = {"CPU": hardware.get("cpu_model"), "cores": hardware.get("cpu_count"),
             "instruction sets": ", ".join(hardware.get("isa") or []), "memory (GiB)":
             labels.sig(hardware["memory_bytes"] / 2 ** 30) if hardware.get("memory_bytes") else None,
             "GPUs": ", ".join(map(str, hardware.get("gpus") or [])) or "none",
             **{k: v for k, v in sorted((run.get("packages") or {}).items())}}
    st.dataframe(pd.DataFrame({"": list(facts), "value": [str(v) if v is not None else "" for v in facts.values()]}),
                 hide_index=True, key="job_provenance")

if not per_shape.empty:
    st.subheader("Per layer shape: kernel format and speed against the bytes bound")
    shape_rows = []
    for m in per_shape.itertuples():
        d = json.loads(m.details)
        paired = d.get("speedup_paired") or {}
        shape_rows.append({"shape": d.get("shape"), "batch": d.get("batch"), "format": d.get("format"),
                           "speedup": m.value, "speedup_lo": paired.get("lo"), "speedup_hi": paired.get("hi"),
                           "verdict": d.get("verdict"), "ideal_speedup": d.get("ideal_speedup"),
                           "bandwidth_fraction": d.get("bandwidth_fraction"), "rounds": paired.get("count")})
    app.table(pd.DataFrame(shape_rows), key="job_shapes")
choice = (job.get("kernel_provenance") or {}).get("format_choice") if isinstance(job.get("kernel_provenance"), dict) else None
if choice:
    rows = []
    for group, c in sorted(choice.items()):
        over = c.get("speedup_over_rule") or {}
        measured = "; ".join(f"{fmt} b{b}: {labels.sig(s['median'])}x ({labels.sig(s['lo'])}-{labels.sig(s['hi'])})"
                             for fmt, by_batch in sorted(over.items()) for b, s in sorted(by_batch.items()))
        rows.append({"layer group": group, "rule's format": c.get("rule"), "format used": c.get("format"),
                     "chosen by": c.get("chosen_by"), "alternatives against the rule's": measured})
    st.caption("How each layer shape's format was chosen")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="job_format_choice", placeholder="")

layers = detail["layers"]
if not layers.empty:
    st.subheader(f"Sparsity of the {len(layers)} pruned layers")
    columns = [c for c in ("layer", "out_features", "in_features", "target_sparsity", "measured_sparsity", "zeros",
                           "numel") if c in layers.columns]
    app.table(layers[columns], key="job_layers", config={
        "out_features": st.column_config.NumberColumn("out", format="%d"),
        "in_features": st.column_config.NumberColumn("in", format="%d"),
        "zeros": st.column_config.NumberColumn("zeros", format="%d"),
        "numel": st.column_config.NumberColumn("weights", format="%d")})

st.subheader("Stages")
stages = detail["stages"].copy()
stages["peak_rss_bytes"] = stages["peak_rss_bytes"] / 2 ** 20
app.table(stages[["kind", "status", "attempts", "duration_s", "peak_rss_bytes", "started_at", "finished_at", "error",
                  "stage_key"]],
          key="job_stages", config={"peak_rss_bytes": st.column_config.NumberColumn("peak memory (MiB)", format="%.3g"),
                                    "kind": st.column_config.TextColumn("stage")})
