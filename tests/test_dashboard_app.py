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
    assert "12 results · 1 failed job(s)" in at.caption[0].value
    table = at.dataframe[0].value
    # one row per pruned model (dense + 2 methods x 2 patterns, and teal:0.5 on dense and magnitude 50%), each
    # kernel a group of columns
    assert len(table) == 7 and {"native · speed", "native · verdict", "torch-dense · speed", "torch-dense · status"} <= set(table.columns)
    reference = (table["method"] == "dense") & (table["activations"] == "none")
    assert table.loc[reference, "native · verdict"].iloc[0] == ["dense"]
    assert table.loc[reference, "native · 95% interval"].iloc[0].startswith("A/A ")
    assert (table["rank"] == 1).sum() >= 2  # one best per sparsity level: dense at 0, one at 50%
    assert at.get("download_button")
    names = {t["name"] for fig in plotly_figures(at) for t in fig["data"]}
    assert {"dense", "magnitude", "wanda", "Pareto front"} <= names

    at.selectbox(key="rank_by").set_value("task_acc_mean").run()
    table = at.dataframe[0].value
    for _, level in table.groupby(["target_sparsity", "activations"]):
        level = level.dropna(subset=["rank"]).sort_values("rank")
        assert level["task_acc_mean"].is_monotonic_decreasing  # percent, ranked best first within the level

    at.slider(key="sparsity").set_value((0.0, 0.0)).run()
    assert set(at.dataframe[0].value["method"]) == {"dense"}
    at.slider(key="sparsity").set_value((0.0, 1.0)).run()

    at.multiselect(key="method").set_value(["wanda"]).run()
    at.multiselect(key="kernel").set_value(["native"]).run()
    table = at.dataframe[0].value
    assert set(table["method"]) == {"wanda"} and len(table) == 2 and "torch-dense · speed" not in table.columns


def test_a_url_with_filters_opens_them_applied(dashboard_store, monkeypatch):
    """The filters live in the URL's query parameters: a shared or reloaded URL opens the same view."""
    monkeypatch.setenv("SPARSEBENCH_DB", str(dashboard_store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["method"] = ["wanda", "magnitude"]
    at.query_params["pattern"] = "2:4"
    at.run()
    assert not at.exception
    assert sorted(at.multiselect(key="method").value) == ["magnitude", "wanda"]
    assert at.multiselect(key="pattern").value == ["2:4"]
    table = at.dataframe[0].value
    assert set(table["method"]) == {"magnitude", "wanda"} and set(table["pattern"]) == {"2:4"}
    # (the browser writes a changed filter back into the URL: tests/test_dashboard_browser.py)


def test_a_method_has_one_colour_with_and_without_a_filter(dashboard_store, monkeypatch):
    def colours(at):
        fig = plotly_figures(at)[0]
        return {t["name"]: t["marker"]["color"] for t in fig["data"]
                if str(t.get("legendgroup", "")).startswith("method ") and t.get("showlegend") is not False}

    at = page(app_on(dashboard_store, monkeypatch), "views/tradeoffs.py")
    every = colours(at)
    assert {"dense", "magnitude", "wanda"} <= set(every) and len(set(every.values())) == len(every)
    at.multiselect(key="method").set_value(["wanda"]).run()
    only = colours(at)
    assert set(only) == {"wanda"} and only["wanda"] == every["wanda"]


def test_activation_sparsity_is_a_filter_and_its_own_panels(dashboard_store, monkeypatch):
    """The activation rule is a sidebar filter (kept in the URL) and a column; the trade-off chart puts
    weight-only, activation-only and combined rows in panels side by side, the dense model in each."""
    monkeypatch.setenv("SPARSEBENCH_DB", str(dashboard_store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["activations"] = "teal:0.5"
    at.run()
    assert not at.exception
    assert at.multiselect(key="activations").value == ["teal:0.5"]
    table = at.dataframe[0].value
    assert sorted(table["method"]) == ["dense", "magnitude"] and set(table["activations"]) == {"teal:0.5"}
    assert table["activation_sparsity"].between(40, 60).all()  # reached on the test text, in percent
    at.multiselect(key="activations").set_value(["none"]).run()
    table = at.dataframe[0].value  # weight sparsity alone: the activations column is not shown
    assert len(table) == 5 and "activations" not in table.columns
    at.multiselect(key="activations").set_value([]).run()
    at = page(at, "views/tradeoffs.py")
    pareto = plotly_figures(at)[0]
    titles = [a["text"] for a in pareto["layout"]["annotations"] if a["text"].startswith("tiny · ")]
    assert [t.rsplit(" · ", 1)[1] for t in titles] == ["weights", "activations", "weights + activations"]


def test_a_job_page_from_a_leaderboard_link(dashboard_store, monkeypatch):
    at = app_on(dashboard_store, monkeypatch)
    link = at.dataframe[0].value.loc[lambda t: t["method"] == "wanda", "native · job"].iloc[0]
    key = link.split("job=")[1]
    at.query_params["job"] = key
    page(at, "views/job.py")
    assert [t.value for t in at.title] == ["Job"]
    headers = [h.value for h in at.subheader]
    assert "Measured" in headers and "Provenance" in headers and "Stages" in headers
    assert any(h.startswith("Sparsity of the 28 pruned layers") for h in headers)
    assert any(h.startswith("Per layer shape") for h in headers)
    shown = " ".join(str(m.value) for m in at.markdown)
    assert key in shown and "None" not in shown


def test_tradeoffs_page(dashboard_store, monkeypatch):
    at = page(app_on(dashboard_store, monkeypatch), "views/tradeoffs.py")
    assert [t.value for t in at.title] == ["Trade-offs"]
    pareto, curves = plotly_figures(at)
    assert {"dense", "magnitude", "wanda"} <= {t["name"] for t in pareto["data"]}
    assert pareto["layout"]["yaxis"]["type"] == "log"
    drawn = [t for t in curves["data"] if values(t["x"])[0] is not None]
    assert sum(len(values(t["x"])) for t in drawn) == 7  # once per pruned model (an activation rule makes another)
    at.selectbox(key="speed").set_value("prefill_speedup").run()
    assert "prefill" in plotly_figures(at)[0]["layout"]["xaxis"]["title"]["text"]
    assert len(at.dataframe[0].value) >= 1  # the configurations on the fronts


def test_kernels_page(dashboard_store, monkeypatch):
    at = page(app_on(dashboard_store, monkeypatch), "views/kernels.py")
    assert at.selectbox(key="backend").value == "native"
    table = at.dataframe[0].value
    # each shape in the format its measurement chose (nm and bitmask by rule; csr16 where it measured faster)
    assert set(table["format"]) <= {"nm", "bitmask", "csr16", "dense_in"} and len(table) > 0 and (table["speedup"] > 0).all()
    skipping = table[table["format"] == "dense_in"]  # the teal:0.5 jobs, timed on the inputs of a decode
    assert set(skipping["activations"]) == {"teal:0.5"} and skipping["inputs_skipped"].between(1, 99).all()  # %
    fig = plotly_figures(at)[0]
    assert any(t["name"] == "measured = ideal" for t in fig["data"])
    assert fig["layout"]["yaxis"]["type"] == "log"
    at.selectbox(key="backend").set_value("torch-dense").run()
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
    assert len(at.dataframe[-1].value) == 12
    at.multiselect(key="runs_status_filter").set_value(["failed"]).run()
    assert at.dataframe[-1].value.empty
    at.multiselect(key="runs_status_filter").set_value([]).run()
    at.multiselect(key="method").set_value(["wanda"]).run()  # the sidebar's filters apply here too
    assert len(at.dataframe[0].value) == 1 and "Failed jobs (0)" in [h.value for h in at.subheader]
    shown = " ".join(str(m.value) for m in at.markdown)
    assert "None" not in shown and not at.json


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
    assert len(at.dataframe[0].value) == 7
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
    # 3 new pruned models: the two patterns and the grid's own dense job (no lm-eval tasks: another evaluation)
    assert len(table) == 10 and {"70%", "4:8"} <= set(table["pattern"]), (out, table[["method", "pattern"]])
    assert reruns >= len(PAGES)
