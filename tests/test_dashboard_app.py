"""Every dashboard page through Streamlit's AppTest, on a real store written by `bench submit`; an empty or
missing store; and the dashboard read while `bench submit` writes the same file."""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from bench.store import Store
from conftest import FAST_LATENCY, FAST_PPL, write_grid

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ["views/leaderboard.py", "views/tradeoffs.py", "views/kernels.py", "views/runs.py", "views/compare.py"]


def app_on(db, monkeypatch) -> AppTest:
    monkeypatch.setenv("SPARSEBENCH_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    return at


def page(at: AppTest, path: str) -> AppTest:
    at.switch_page(path)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def plotly_figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(array) -> list:
    """A trace's data array from a figure's JSON: a list, or Plotly's typed array {dtype, bdata (base64)}."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def test_leaderboard_page(dashboard_store, monkeypatch):
    at = app_on(dashboard_store, monkeypatch)
    assert not at.exception
    assert [t.value for t in at.title] == ["Leaderboard"]
    assert {m.label: m.value for m in at.metric} == {"results": "10", "failed jobs": "1", "runs": "2",
                                                      "runs in progress": "0"}
    table = at.dataframe[0].value
    assert len(table) == 10 and table["rank"].min() == 1
    assert table.loc[table["rank"] == 1, "method"].tolist() == ["dense", "dense"]  # lowest perplexity, 2 kernels
    assert at.get("download_button")
    legend = {t["name"] for fig in plotly_figures(at) for t in fig["data"]}
    assert {"dense", "magnitude", "wanda", "Pareto front"} <= legend

    at.selectbox(key="rank_by").set_value("task_acc_mean").run()
    table = at.dataframe[0].value
    assert table.groupby("rank")["task_acc_mean"].nunique().max() == 1
    assert table["task_acc_mean"].is_monotonic_decreasing

    at.slider(key="filter_sparsity").set_value((0.0, 0.0)).run()
    assert set(at.dataframe[0].value["method"]) == {"dense"}
    at.slider(key="filter_sparsity").set_value((0.0, 1.0)).run()

    at.multiselect(key="filter_methods").set_value(["wanda"]).run()
    at.multiselect(key="filter_kernels").set_value(["native"]).run()
    table = at.dataframe[0].value
    assert set(table["method"]) == {"wanda"} and set(table["kernel"]) == {"native"} and len(table) == 2


def test_filters_follow_the_user_to_other_pages(dashboard_store, monkeypatch):
    at = app_on(dashboard_store, monkeypatch)
    at.multiselect(key="filter_patterns").set_value(["2:4"]).run()
    page(at, "views/kernels.py")
    assert set(at.dataframe[0].value["pattern"]) == {"2:4"}


def test_tradeoffs_page(dashboard_store, monkeypatch):
    at = page(app_on(dashboard_store, monkeypatch), "views/tradeoffs.py")
    assert [t.value for t in at.title] == ["Trade-offs"]
    pareto, curves = plotly_figures(at)
    assert {"dense", "magnitude", "wanda"} <= {t["name"] for t in pareto["data"]}
    assert pareto["layout"]["yaxis"]["type"] == "log"
    assert sum(len(values(t["x"])) for t in curves["data"]) == 5  # dense + 2 methods x 2 patterns, once per pruned model
    at.selectbox(key="tradeoff_speed").set_value("prefill_speedup").run()
    assert "prefill" in plotly_figures(at)[0]["layout"]["xaxis"]["title"]["text"]
    assert len(at.dataframe[0].value) >= 1  # the configurations on the fronts


def test_kernels_page(dashboard_store, monkeypatch):
    at = page(app_on(dashboard_store, monkeypatch), "views/kernels.py")
    assert at.selectbox(key="kernels_backend").value == "native"
    table = at.dataframe[0].value
    # each shape in the format its measurement chose (nm and bitmask by rule; csr16 where it measured faster)
    assert set(table["format"]) <= {"nm", "bitmask", "csr16"} and len(table) > 0 and (table["speedup"] > 0).all()
    fig = plotly_figures(at)[0]
    assert any(t["name"] == "ideal (bytes)" for t in fig["data"])
    at.selectbox(key="kernels_backend").set_value("torch-dense").run()
    assert set(at.dataframe[0].value["format"]) == {"dense"}


def test_runs_page(dashboard_store, monkeypatch):
    at = page(app_on(dashboard_store, monkeypatch), "views/runs.py")
    assert "Failed jobs (1)" in [h.value for h in at.subheader]
    assert any("cannot load model 'broken'" in e.value for e in at.error)
    run = at.selectbox(key="runs_run")
    assert run.value == at.dataframe[0].value["run_id"][0]  # newest run first
    run.set_value(at.dataframe[0].value["run_id"][1]).run()
    grid = (dashboard_store.parent / "grid.toml").read_text()
    assert grid.strip() in [c.value.strip() for c in at.code]
    assert len(at.dataframe[-1].value) == 10
    at.multiselect(key="runs_status_filter").set_value(["failed"]).run()
    assert at.dataframe[-1].value.empty


def test_compare_page(dashboard_store, monkeypatch):
    at = page(app_on(dashboard_store, monkeypatch), "views/compare.py")
    assert (at.selectbox(key="compare_a_method").value, at.selectbox(key="compare_b_method").value) == \
        ("magnitude", "wanda")
    table = at.dataframe[0].value
    assert len(table) == 4 and set(table["metric"]) == {"perplexity"}
    fig = plotly_figures(at)[0]
    assert [t["name"] for t in fig["data"]] == ["A: magnitude", "B: wanda"]
    at.radio(key="compare_by").set_value("run_id").run()
    assert not at.exception  # two runs, but the failed one finished nothing: said, not raised
    assert any("share no experiment" in i.value or "fewer than two" in i.value for i in at.info)


@pytest.mark.parametrize("state", ["missing", "empty file", "schema only"])
def test_no_results_shows_first_steps_on_every_page(state, tmp_path, monkeypatch):
    db = tmp_path / "bench.duckdb"
    if state == "empty file":
        import duckdb

        duckdb.connect(str(db)).close()
    elif state == "schema only":
        with Store(db).write():
            pass
    at = app_on(db, monkeypatch)
    for path in PAGES:
        page(at, path)
        assert any("bench submit examples/quickstart.toml" in m.value for m in at.markdown), path
    assert not db.exists() if state == "missing" else db.exists()  # the dashboard never creates a store


def test_a_store_from_a_newer_sparsebench_is_an_error_not_a_traceback(tmp_path, monkeypatch):
    import duckdb

    from bench.store import SCHEMA_VERSION

    db = tmp_path / "bench.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMPTZ)")
    con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    con.close()
    at = app_on(db, monkeypatch)
    assert not at.exception
    assert any("newer than this sparsebench" in e.value for e in at.error)


def test_browsing_while_bench_submit_writes(dashboard_store, tiny_model, tmp_path, monkeypatch):
    """A real `bench submit` writes the store while the pages are re-run in a loop: no lock error reaches
    the page, and its new row is there after a refresh."""
    db = tmp_path / "bench.duckdb"
    shutil.copy(dashboard_store, db)
    grid = write_grid(tmp_path, f'methods = ["magnitude"]\npatterns = ["70%", "4:8"]\n'
                                f'models = [{{ name = "tiny", path = "{tiny_model}" }}]\n' + FAST_PPL + FAST_LATENCY)
    at = app_on(db, monkeypatch)
    assert len(at.dataframe[0].value) == 10
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "submit", str(grid), "--db", str(db), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reruns = 0
    try:
        while proc.poll() is None or reruns < len(PAGES):
            page(at, PAGES[reruns % len(PAGES)])
            reruns += 1
    finally:
        out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    page(at, "views/leaderboard.py")
    table = at.dataframe[0].value
    # 3 new rows: the two patterns and the grid's own dense job (no lm-eval tasks: a different experiment)
    assert len(table) == 13 and {"70%", "4:8"} <= set(table["pattern"]), (out, table[["method", "pattern", "kernel"]])
    assert reruns >= len(PAGES)
