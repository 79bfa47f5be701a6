"""The SparseBench dashboard: widgets only (SQL is in queries.py, figures in charts.py).

    bench dashboard [--db results/bench.duckdb] [--port 8501]
    SPARSEBENCH_DB=results/bench.duckdb streamlit run dashboard/app.py      # the same, by hand

Run as Streamlit's main script this file builds the navigation and the sidebar filters shared by every
page (one file per page under views/); imported, it provides those shared widgets to the pages. The store
is only ever opened read-only, one short connection per query, so `bench submit` can write while people
browse. Query results are cached on the store's size and modification time: a refresh shows new rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from bench.errors import BenchError
from bench.store import DEFAULT_DB, Store
from dashboard import charts, labels, queries

HERE = Path(__file__).parent
PAGES = [("views/leaderboard.py", "Leaderboard", ":material/leaderboard:"),
         ("views/tradeoffs.py", "Trade-offs", ":material/scatter_plot:"),
         ("views/kernels.py", "Kernels", ":material/memory:"),
         ("views/runs.py", "Runs", ":material/history:"),
         ("views/compare.py", "Compare", ":material/compare_arrows:"),
         ("views/job.py", "Job", ":material/description:")]
HIDDEN = {"views/job.py"}  # reached from a table's link (job?job=KEY), not from the navigation
FILTER_LABELS = {"models": "Model", "methods": "Method", "patterns": "Pattern", "activations": "Activations",
                 "hardware": "Hardware", "kernels": "Kernel"}
# The URL's query parameter of each filter (the widget's key): `?method=wanda&method=sparsegpt&pattern=2:4`
# opens that selection, and every change of a filter rewrites the URL, so a view can be shared and survives
# a reload. They are bound in the entrypoint, so they stay in the URL from page to page.
FILTER_PARAMS = {"models": "model", "methods": "method", "patterns": "pattern", "activations": "activations",
                 "hardware": "hardware", "kernels": "kernel"}
SPARSITY_PARAM = "sparsity"


def store_path() -> Path:
    return Path(os.environ.get("SPARSEBENCH_DB") or DEFAULT_DB)


@st.cache_data(show_spinner=False, max_entries=128)
def _cached(name: str, path: str, token: tuple, kwargs: tuple) -> Any:
    with Store(path).read() as con:
        return getattr(queries, name)(con, **dict(kwargs))


@st.cache_resource(show_spinner=False, max_entries=64)
def _figure(chart: str, name: str, path: str, token: tuple, kwargs: tuple, args: tuple, options: tuple) -> Any:
    return getattr(charts, chart)(_cached(name, path, token, kwargs), *args, **dict(options))


def figure(chart: str, query: str, query_kwargs: dict, *args, **options) -> Any:
    """`charts.<chart>(load(query, **query_kwargs), *args, **options)`, kept until the store changes: a rerun
    with the same selection reuses the figure instead of building it again (building one costs a few hundred
    milliseconds of Plotly's validation). One object shared by every session, so it is only ever read."""
    path = store_path()
    return _figure(chart, query, str(path), queries.store_token(path), tuple(sorted(query_kwargs.items())), args,
                   tuple(sorted(options.items())))


def encoding() -> charts.Encoding:
    """The store's colours and symbols: from every method and pattern of its finished jobs, whatever the
    filters, so that a method keeps its colour on every page and under every filter."""
    options = load("filter_options")
    return charts.encoding(options.loc[options["field"] == "methods", "value"].dropna(),
                           options.loc[options["field"] == "patterns", "value"].dropna())


def load(name: str, **kwargs) -> Any:
    """`queries.<name>(con, **kwargs)` on the store, cached until the store file changes."""
    path = store_path()
    return _cached(name, str(path), queries.store_token(path), tuple(sorted(kwargs.items())))


def column_config(frame: pd.DataFrame) -> dict:
    """Streamlit column settings for every column of `frame` from the shared table of labels and formats."""
    config = {}
    for name in frame.columns:
        entry = labels.column(name)
        numeric = pd.api.types.is_numeric_dtype(frame[name]) and not pd.api.types.is_bool_dtype(frame[name])
        if numeric and labels.printf(name):
            config[name] = st.column_config.NumberColumn(entry.label, format=labels.printf(name), help=entry.help)
        else:
            config[name] = st.column_config.Column(entry.label, help=entry.help)
    return config


def table(frame: pd.DataFrame, key: str, config: dict | None = None, **kwargs) -> None:
    """`frame` as a table with the shared labels and formats: percent columns in percent (their header says
    so), 3 significant digits, nothing written for a missing value."""
    shown = frame.copy()
    for name in shown.columns:
        if labels.column(name).kind in ("share", "points") and pd.api.types.is_numeric_dtype(shown[name]):
            shown[name] = shown[name] * 100  # as labels.display, kept numeric for the column's format
        elif labels.column(name).kind == "commit":
            shown[name] = shown[name].map(lambda v: labels.text(v, name))
    st.dataframe(shown, hide_index=True, key=key, column_config={**column_config(shown), **(config or {})},
                 placeholder="", **kwargs)


def first_steps(reason: str) -> None:
    st.info(reason)
    st.markdown(
        "**First steps**\n\n"
        "1. Run the quickstart grid (two tiny models shipped with SparseBench, every built-in method, five "
        "sparsity patterns, two kernel backends; nothing to download):\n\n"
        "   ```bash\n   bench submit examples/quickstart.toml\n   ```\n"
        "2. Reload this page: rows appear as jobs finish, while the grid is still running.\n"
        "3. Point the dashboard at another store with `bench dashboard --db PATH`.\n\n"
        "Grid files are described in `docs/grid-format.md`.")


def open_store(need_results: bool = True) -> pd.DataFrame | None:
    """The store's job counts, or None after explaining on the page why there is nothing to show yet."""
    path = store_path()
    if not path.exists():
        first_steps(f"No results store at `{path}` yet.")
        return None
    try:
        if load("schema_version") == 0:
            first_steps(f"`{path}` holds no SparseBench results yet.")
            return None
        counts = load("status_counts")
    except BenchError as err:
        st.error(str(err))
        return None
    done = int(counts.loc[counts["status"] == "done", "jobs"].sum())
    if need_results and done == 0:
        first_steps(f"`{path}` has no finished job yet" + (" (a run is in progress)." if running(counts) else "."))
        return None
    return counts


def running(counts: pd.DataFrame) -> int:
    return int(counts.loc[counts["status"] == "runs running", "jobs"].sum())


def count(counts: pd.DataFrame, status: str) -> int:
    return int(counts.loc[counts["status"] == status, "jobs"].sum())


def filters() -> queries.Filters:
    """The sidebar's current selection (set by `sidebar_filters` on every page)."""
    return st.session_state.get("filters", queries.Filters())


def sidebar_filters() -> None:
    """Multiselects for model, method, pattern, activation rule, hardware and kernel, and a target-sparsity range; an empty
    multiselect means all. Kept in session state, so a selection follows the user from page to page."""
    st.sidebar.caption(f"store: `{store_path()}`")
    if st.sidebar.button("Reload", icon=":material/refresh:", help="read the store again (new rows appear)"):
        st.rerun()
    try:
        if not store_path().exists() or load("schema_version") == 0:
            return
        options = load("filter_options")
    except BenchError:
        return
    chosen: dict[str, Any] = {}
    for field, label in FILTER_LABELS.items():
        values = options.loc[options["field"] == field]
        values = values.sort_values(["number", "value"]) if field == "patterns" else values
        choices = values["value"].dropna().tolist()
        picked = st.sidebar.multiselect(label, choices, key=FILTER_PARAMS[field], placeholder="all",
                                        bind="query-params")
        chosen[field] = tuple(v for v in picked if v in choices)
    # A fixed 0-1 range rather than the levels in the store: a selection then keeps its meaning when a
    # running grid adds a new sparsity (the full range, the default, filters nothing).
    lo, hi = st.sidebar.slider("Target sparsity", 0.0, 1.0, (0.0, 1.0), step=0.05, key=SPARSITY_PARAM,
                               bind="query-params")
    if (lo, hi) != (0.0, 1.0):
        chosen["sparsity"] = (lo, hi)
    st.session_state["filters"] = queries.Filters(**chosen)


def main() -> None:
    st.set_page_config(page_title="SparseBench", page_icon=":material/speed:", layout="wide")
    # less blank space above the title: at 1280x800 the leaderboard's chart and first rows must fit
    st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 2rem;}</style>")
    nav = st.navigation([st.Page(str(HERE / f), title=t, icon=i, default=(k == 0),
                                 visibility="hidden" if f in HIDDEN else "visible")
                         for k, (f, t, i) in enumerate(PAGES)])
    sidebar_filters()
    nav.run()


if __name__ == "__main__":
    # Streamlit runs this file as __main__; run the imported module instead, so that the pages and the
    # sidebar share one module (and one query cache).
    from dashboard import app

    app.main()
