"""Kernels: measured speedup of each layer shape over the dense layer against the ideal bound of a
memory-bound kernel (dense bytes / bytes read), by batch, storage format and sparsity."""

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
                        key="backend", bind="query-params")
view = shapes[shapes["kernel"] == kernel]
models = sorted(view["model"].unique())
model = right.selectbox("Model", models, key="kernels_model", bind="query-params")
view = view[view["model"] == model]
hardware = sorted(view["hardware"].unique())
if len(hardware) > 1:
    view = view[view["hardware"] == st.radio("Hardware", hardware, horizontal=True, key="kernels_hardware")]

st.plotly_chart(charts.kernel_figure(view), key="kernels_chart")
st.caption("Each point is one job's layer shape, timed against the dense layer in the same process (median of "
           "paired per-round ratios; bars: its 95% interval), placed at the speedup its bytes allow (dense bytes / "
           "bytes read). On the dashed line a kernel reaches its bound; a format at 1x reads the full dense weight "
           f"(mask only). Points beyond {charts.KERNEL_AXIS_MAX:g}x are drawn at the axis' edge as triangles.")

bandwidth = view["read_bandwidth_GBps"].dropna()
if not bandwidth.empty:
    st.caption(f"Read bandwidth probed by the jobs: {bandwidth.min():.3g}-{bandwidth.max():.3g} GB/s.")
columns = ["shape", "batch", "format", "method", "pattern", "target_sparsity", "activations", "inputs_skipped",
           "speedup", "speedup_lo", "speedup_hi", "verdict", "ideal_speedup", "GBps", "bandwidth_fraction", "rounds",
           "threads", "kernel_status", "job_key"]
if view["inputs_skipped"].isna().all():  # no activation rule in the selection
    columns = [c for c in columns if c not in ("activations", "inputs_skipped")]
app.table(view[columns], key="kernels_table")
