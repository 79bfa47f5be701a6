"""Kernels: measured speedup of each layer shape over the dense layer, by batch and storage format, against
the ideal bound of a memory-bound kernel (dense bytes / bytes read)."""

import streamlit as st

from dashboard import app, charts

st.title("Kernels")
if app.open_store() is None:
    st.stop()

shapes = app.load("kernel_shapes", filters=app.filters())
if shapes.empty:
    st.info("No per-shape kernel measurement in the selection. The latency stage writes one per unique layer "
            "shape and decode batch when it runs on CPU; add a `[latency]` table and a kernel such as "
            "`native` to the grid (see `examples/kernels.toml`).")
    st.stop()

left, right = st.columns(2)
kernels = sorted(shapes["kernel"].unique())
kernel = left.selectbox("Kernel backend", kernels, index=kernels.index("native") if "native" in kernels else 0,
                        key="kernels_backend")
view = shapes[shapes["kernel"] == kernel]
models = sorted(view["model"].unique())
model = right.selectbox("Model", models, key="kernels_model")
view = view[view["model"] == model]
hardware = sorted(view["hardware"].unique())
if len(hardware) > 1:
    view = view[view["hardware"] == st.radio("Hardware", hardware, horizontal=True, key="kernels_hardware")]

st.plotly_chart(charts.kernel_figure(view), key="kernels_chart")
st.caption("Each point is one job's layer of that shape, timed against the dense layer in the same process "
           "(median of paired per-round ratios; bars: its 95% interval). The black bar is the ideal: the speedup a kernel "
           "limited only by memory traffic would reach with these bytes. A format at 1x reads the full dense "
           "weight (mask only).")

bandwidth = view["read_bandwidth_GBps"].dropna()
if not bandwidth.empty:
    st.caption(f"Read bandwidth measured by the jobs: {bandwidth.min():.1f}-{bandwidth.max():.1f} GB/s.")
st.dataframe(view[["shape", "batch", "format", "method", "pattern", "speedup", "speedup_lo", "speedup_hi", "verdict",
                   "ideal_speedup", "GBps", "bandwidth_fraction", "weight_bytes", "dense_weight_bytes", "rounds",
                   "layers_per_sweep", "threads", "kernel_status", "job_key"]],
             hide_index=True, key="kernels_table",
             column_config={"bandwidth_fraction": st.column_config.NumberColumn("of bandwidth", format="percent"),
                            "GBps": st.column_config.NumberColumn("GB/s", format="%.2f")})
