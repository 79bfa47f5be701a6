"""dashboard.queries on a real store written by `bench submit`, and dashboard.charts as pure functions."""

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from bench.store import Store
from dashboard import charts, queries
from dashboard.queries import Filters

pytestmark = pytest.mark.slow  # the store comes from a real grid on Ray


@pytest.fixture(scope="module")
def con(dashboard_store):
    with Store(dashboard_store).read() as c:
        yield c


@pytest.fixture(scope="module")
def board(con):
    return queries.leaderboard(con)


def test_leaderboard_has_every_finished_job_with_tasks_and_provenance(con, board):
    done = con.execute("SELECT count(*) FROM jobs WHERE status = 'done'").fetchone()[0]
    # dense x 2 kernels + 2 methods x 2 patterns x 2 kernels, and teal:0.5 on dense and magnitude 50% (native)
    assert len(board) == done == 12
    assert {"synthetic_add/acc", "synthetic_recall/acc"} <= set(board.columns)
    assert board["task_acc_mean"].sub(board[["synthetic_add/acc", "synthetic_recall/acc"]].mean(axis=1)).abs().max() < 1e-12
    assert set(board["pattern_kind"]) == {"dense", "unstructured", "nm"}
    # the grid cuts the 26895-token test split at max_tokens = 1024, and every row says so
    assert set(board["protocol"]) == {"builtin:synthetic test · context 64 stride 64 · first 1024 of 26895 "
                                      "tokens (cut by max_tokens)"}
    assert board["git_commit"].notna().all() and (board["grid_name"] == "dashboard").all()
    dense = board[(board["method"] == "dense") & (board["activations"] == "none")]  # the reference
    assert len(dense) == 2 and (dense["perplexity_change_vs_dense"] == 0).all()
    # the speedup columns are the latency stage's figures, unrounded
    metric = con.execute("SELECT value FROM metrics WHERE job_key = ? AND name = 'decode_speedup_b1'",
                         [board["job_key"][0]]).fetchone()[0]
    assert board["decode_speedup_b1"][0] == metric
    timed = board[board["decode_speedup_b1_verdict"] != "dense"]
    assert (timed["decode_speedup_b1_lo"] <= timed["decode_speedup_b1"]).all()
    assert (timed["decode_speedup_b1"] <= timed["decode_speedup_b1_hi"]).all()
    assert set(timed["decode_speedup_b1_verdict"]) <= {"faster", "slower", "no measurable difference"}
    # dense on the reference's own kernels is 1x by definition, with its measured noise floor beside it
    assert (dense["decode_speedup_b1"] == 1.0).all() and (dense["decode_speedup_b1_verdict"] == "dense").all()
    assert dense["decode_speedup_b1_lo"].isna().all() and dense["decode_aa_b1"].notna().all()
    assert (board["decode_aa_b1_lo"] <= board["decode_aa_b1"]).all() and (board["decode_aa_b1"] <= board["decode_aa_b1_hi"]).all()
    assert (board["decode_speedup_b1_rounds"] >= 1).all()
    native = board[(board["kernel"] == "native") & (board["method"] != "dense")]
    assert native["decode_predicted_speedup_b1"].gt(0).all() and native["decode_outside_share_b1"].between(0, 1).all()
    assert set(board.loc[board["kernel"] == "torch-dense", "kernel_status"]) == {"dense", "mask only"}
    assert set(board.loc[(board["kernel"] == "native") & (board["method"] != "dense"), "kernel_status"]) == {"accelerated"}


def test_filters_are_bound_parameters(con, board):
    picked = queries.leaderboard(con, Filters(methods=("wanda",), kernels=("native",)))
    assert set(picked["method"]) == {"wanda"} and set(picked["kernel"]) == {"native"} and len(picked) == 2
    assert len(queries.leaderboard(con, Filters(patterns=("2:4", "dense")))) == 7
    assert len(queries.leaderboard(con, Filters(sparsity=(0.5, 0.5)))) == 9
    assert len(queries.leaderboard(con, Filters(sparsity=(0.0, 0.0)))) == 3  # dense, and dense + teal:0.5
    acts = queries.leaderboard(con, Filters(activations=("teal:0.5",)))
    assert sorted(acts["method"]) == ["dense", "magnitude"] and set(acts["kernel"]) == {"native"}
    # a value is data, never SQL
    assert queries.leaderboard(con, Filters(methods=("x' OR '1'='1",))).empty
    assert len(queries.leaderboard(con)) == len(board)


def test_filter_options_and_counts(con):
    opts = queries.filter_options(con)
    by = {f: sorted(g["value"].dropna()) for f, g in opts.groupby("field")}
    assert by["methods"] == ["dense", "magnitude", "wanda"]
    assert by["patterns"] == ["2:4", "50%", "dense"]
    assert by["kernels"] == ["native", "torch-dense"]
    assert by["activations"] == ["none", "teal:0.5"]
    assert opts.loc[opts["field"] == "patterns"].sort_values("number")["value"].iloc[0] == "dense"
    counts = dict(zip(*queries.status_counts(con).T.values))
    assert counts == {"done": 12, "failed": 1, "runs": 2, "runs running": 0}


def test_kernel_shapes_rows_match_the_stored_metrics(con):
    shapes = queries.kernel_shapes(con)
    n = con.execute("SELECT count(*) FROM metrics WHERE name LIKE 'layer_speedup_b%'").fetchone()[0]
    assert len(shapes) == n > 0
    assert set(shapes["kernel"]) == {"torch-dense", "native"} and set(shapes["batch"]) == {1}
    native = shapes[(shapes["kernel"] == "native") & (shapes["method"] != "dense")]
    assert set(native["format"]) <= {"nm", "bitmask", "csr16", "dense_in"} and not native.empty
    assert (native["ideal_speedup"] > 1).all()
    # under an activation rule, each shape is timed on the inputs captured from a decode, in an input-major format
    acts = shapes[shapes["activations"] == "teal:0.5"]
    assert set(acts["method"]) == {"dense", "magnitude"} and set(acts["format"]) == {"dense_in"}
    assert (acts["ideal_speedup"] > 1).all()
    assert (shapes.loc[shapes["kernel"] == "torch-dense", "ideal_speedup"] == 1).all()
    row = shapes.iloc[0]
    n_out, k_in = map(int, row["shape"].split("x"))
    assert row["dense_weight_bytes"] == n_out * k_in * 4  # fp32
    assert row["speedup_lo"] <= row["speedup"] <= row["speedup_hi"] and row["verdict"] in ("faster", "slower", "no measurable difference")
    assert math.isclose(row["GBps"] * row["bandwidth_fraction"] ** -1, row["read_bandwidth_GBps"], rel_tol=1e-9)
    only_wanda = queries.kernel_shapes(con, Filters(methods=("wanda",)))
    assert set(only_wanda["method"]) == {"wanda"}


def test_runs_jobs_and_run_detail(con, dashboard_store):
    runs = queries.runs(con)
    assert list(runs["grid_name"]) == ["dashboard-broken", "dashboard"]  # newest first
    assert runs.set_index("grid_name").loc["dashboard", ["done", "failed", "pending"]].tolist() == [12, 0, 0]
    assert runs.set_index("grid_name").loc["dashboard-broken", ["done", "failed"]].tolist() == [0, 1]
    failed = queries.jobs(con, statuses=("failed",))
    assert len(failed) == 1 and "cannot load model 'broken'" in failed["error"][0]
    assert "Traceback" in failed["traceback"][0]
    run_id = runs["run_id"][1]
    assert len(queries.jobs(con, run_id=run_id)) == 12
    detail = queries.run_detail(con, run_id)
    assert detail["grid_text"] == (dashboard_store.parent / "grid.toml").read_text()
    assert detail["packages"]["torch"] and detail["hardware"]
    assert queries.run_detail(con, "no-such-run") == {}


def test_compare_methods_and_runs(con, board):
    long = queries.compare(con, "method", "magnitude", "wanda")
    # 2 patterns x 2 kernels experiments, each with every compared metric
    assert long.groupby("metric", observed=True).size().unique().tolist() == [4]
    ppl = long[long["metric"] == "perplexity"].iloc[0]
    pick = board[(board["pattern"] == ppl["pattern"]) & (board["kernel"] == ppl["kernel"])].set_index("method")
    assert ppl["A"] == pick.at["magnitude", "perplexity"] and ppl["B"] == pick.at["wanda", "perplexity"]
    assert ppl["B - A"] == ppl["B"] - ppl["A"] and ppl["higher_is_better"] is False
    run_ids = queries.runs(con)["run_id"].tolist()
    assert queries.compare(con, "run_id", run_ids[0], run_ids[1]).empty  # the failed run finished nothing
    with pytest.raises(ValueError, match="compare by"):
        queries.compare(con, "model", "a", "b")


def test_runs_and_jobs_honour_the_filters(con):
    every = queries.runs(con)
    wanda = queries.runs(con, Filters(methods=("wanda",)))
    assert len(every) == 2 and len(wanda) == 1  # the broken run has no wanda job
    assert wanda["done"].iloc[0] == 4  # wanda x 2 patterns x 2 kernels, not the run's 12
    assert set(queries.jobs(con, filters=Filters(methods=("wanda",)))["method"]) == {"wanda"}


def test_a_jobs_page_has_its_provenance_layers_and_stages(con, board):
    key = board.loc[(board["method"] == "wanda") & (board["kernel"] == "native"), "job_key"].iloc[0]
    detail = queries.job_detail(con, key)
    assert detail["job"]["method"] == "wanda" and isinstance(detail["job"]["kernel_provenance"], dict)
    assert detail["run"]["git_commit"] and detail["run"]["packages"]["torch"]
    assert len(detail["layers"]) == 28 and detail["layers"]["measured_sparsity"].between(0.49, 0.51).all()
    assert set(detail["stages"]["kind"]) == {"prune", "evaluate", "latency"}
    assert detail["metrics"]["name"].str.startswith("layer_speedup_b1:").any()
    assert queries.job_detail(con, "no-such-job") == {}


def test_a_latency_stage_ran_alone_on_its_node(con):
    """The grid's targets are `cpu` (1 thread) on a 2-CPU node: two stages could share the node, and did
    before, so a timing ran beside a prune or an evaluation. A latency stage reserves every CPU of its node:
    no other stage of the run overlaps it in time."""
    st = con.execute("SELECT s.kind, s.started_at, s.finished_at FROM stages s JOIN runs r USING (run_id) "
                     "WHERE r.grid_name = 'dashboard' AND s.status = 'done'").df()
    timed = st[st["kind"] == "latency"]
    assert len(timed) == 12 and (st["kind"] != "latency").sum() == 14  # 7 pruned models, each pruned and evaluated
    for _, t in timed.iterrows():
        others = st[(st["started_at"] < t["finished_at"]) & (st["finished_at"] > t["started_at"])]
        assert len(others) == 1, others  # itself only


def test_store_token_changes_with_the_store(tmp_path):
    path = tmp_path / "s.duckdb"
    assert queries.store_token(path) == (None, None)
    with Store(path).write() as c:
        c.execute("CREATE TABLE t (x INT)")
    first = queries.store_token(path)
    with Store(path).write() as c:
        c.execute("INSERT INTO t SELECT range FROM range(100000)")
    assert queries.store_token(path) != first


# ---- charts: pure functions of DataFrames -------------------------------------------------------------

def test_pareto_mask_by_hand():
    df = pd.DataFrame({"speed": [1.0, 2.0, 1.5, 0.9, 2.0, float("nan")],
                       "ppl": [5.0, 9.0, 6.0, 5.0, 8.0, 1.0]})
    # lower ppl and higher speed are better: (1.0,5.0), (1.5,6.0) and (2.0,8.0) are not beaten
    assert charts.pareto_mask(df, "speed", "ppl", True, False).tolist() == [True, False, True, False, True, False]
    # higher accuracy is better; (2.0, 0.4) twice: neither beats the other, both are on the front
    acc = df.assign(acc=[0.5, 0.4, 0.6, 0.7, 0.4, 0.9])
    assert charts.pareto_mask(acc, "speed", "acc", True, True).tolist() == [False, True, True, True, True, False]


@pytest.mark.parametrize("x_higher,y_higher", [(True, True), (True, False), (False, False)])
def test_pareto_mask_matches_the_definition(x_higher, y_higher):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.integers(0, 12, 300).astype(float), "y": rng.integers(0, 12, 300).astype(float)})
    df.loc[::37, "y"] = np.nan  # (coarse values: many ties and duplicates)
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)

    def beaten(i):
        xi, yi = df.at[i, "x"] * sx, df.at[i, "y"] * sy
        xs, ys = df["x"] * sx, df["y"] * sy
        return bool(((xs >= xi) & (ys >= yi) & ((xs > xi) | (ys > yi))).any())

    want = [not (np.isnan(df.at[i, "y"]) or beaten(i)) for i in df.index]
    assert charts.pareto_mask(df, "x", "y", x_higher, y_higher).tolist() == want
    assert sum(want) >= 1


def test_fronts_stand_only_on_measured_verdicts():
    """A row whose speed is noise (or slower, or stored without a verdict) never stands on a front, however
    fast its median reads; dense, at 1x by definition, does."""
    board = pd.DataFrame({
        "model": "m", "hardware": "cpu", "method": ["dense", "a", "b", "c", "d"],
        "pattern": ["dense", "50%", "50%", "2:4", "2:4"], "perplexity": [10.0, 11.0, 12.0, 10.5, 13.0],
        "decode_speedup_b1": [1.0, 1.8, 1.3, 2.5, 3.0],
        "decode_speedup_b1_verdict": ["dense", "faster", "faster", "no measurable difference", None]})
    front = charts.pareto_rows(board, "perplexity", "decode_speedup_b1")
    assert sorted(front["method"]) == ["a", "dense"]  # b is beaten by a; c and d are not measured verdicts
    fig = charts.tradeoff_figure(board, "perplexity", "decode_speedup_b1")
    line = next(t for t in fig.data if t.name == "Pareto front")
    assert sorted(line.x) == [1.0, 1.8]
    hollow = {t.name: list(t.marker.symbol) for t in fig.data if t.mode == "markers" and t.name in ("c", "d", "a")
              and t.x[0] is not None}
    assert hollow["c"][0].endswith("-open") and hollow["d"][0].endswith("-open") and not hollow["a"][0].endswith("-open")


def test_large_boards_mark_the_fronts_and_draw_the_rest_as_a_cloud(board):
    big = pd.concat([board.assign(seed=s) for s in range(charts.MARKED_UP_TO // len(board) + 1)], ignore_index=True)
    fig = charts.tradeoff_figure(big, "perplexity", "decode_speedup_b1")
    cloud = [t for t in fig.data if t.name == "off the fronts (no hover)"]
    marked = [t for t in fig.data if t.name == "configurations"]
    front = charts.pareto_rows(big, "perplexity", "decode_speedup_b1")
    drawn = len(charts.by_sparsity_kind(big)[0])  # the dense rows once in each kind's panel
    assert sum(len(t.x) for t in cloud) + sum(len(t.x) for t in marked) == drawn
    assert sum(len(t.x) for t in marked) == len(front)
    assert {"dense", "magnitude", "wanda"} <= {t.name for t in fig.data}  # legend entries per method


def test_tradeoff_figure_draws_every_method_and_the_front(board):
    fig = charts.tradeoff_figure(board, "perplexity", "decode_speedup_b1")
    assert isinstance(fig, go.Figure)
    legend = {(t.legend or "legend", t.name) for t in fig.data if t.showlegend is not False}
    assert {("legend", "dense"), ("legend", "magnitude"), ("legend", "wanda"), ("legend3", "Pareto front"),
            ("legend2", "50%"), ("legend2", "2:4")} <= legend
    points = [t for t in fig.data if t.mode == "markers" and t.x is not None and t.x[0] is not None]
    frame, by = charts.by_sparsity_kind(board)
    kinds = {"weights", "activations", "weights + activations"}
    assert by[-1] == "sparsity_kind" and set(frame["sparsity_kind"]) == kinds
    assert sum(len(t.x) for t in points) == len(frame) == len(board) + 2 * 2  # the 2 dense rows in 3 panels
    titles = {a.text.rsplit(" · ", 1)[-1] for a in fig.layout.annotations}
    assert kinds <= titles
    front = [t for t in fig.data if t.name == "Pareto front"]
    on_fronts = charts.pareto_rows(board, "perplexity", "decode_speedup_b1")
    assert len(front) == 3 and sum(len(t.x) for t in front) == len(on_fronts)  # one front per panel
    assert set(on_fronts["sparsity_kind"]) <= kinds
    assert (on_fronts[on_fronts["sparsity_kind"] == "activations"]["activations"].isin(["none", "teal:0.5"])).all()
    assert fig.layout.yaxis.type == "log"
    wanda = next(t for t in points if t.name == "wanda")
    assert "commit" in wanda.hovertemplate and wanda.error_x.array is not None
    assert charts.tradeoff_figure(board, "perplexity", "decode_speedup_b1").to_json() == fig.to_json()  # pure
    assert charts.tradeoff_figure(board.iloc[0:0]).layout.annotations[0].text.startswith("no finished job")


def test_sparsity_kernel_status_and_compare_figures(con, board):
    fig = charts.sparsity_figure(board, "task_acc_mean")
    drawn = [t for t in fig.data if t.x[0] is not None]
    # accuracy is counted once per pruned model (an activation rule makes another), not once per kernel
    pruned = board.drop_duplicates(["model", "method", "pattern", "activations", "seed"])
    assert sum(len(t.x) for t in drawn) == len(pruned) == 7
    rule = next(t for t in drawn if t.name == "magnitude (unstructured, teal:0.5)")
    want = board.loc[(board["method"] == "magnitude") & (board["activations"] == "teal:0.5"), "task_acc_mean"].iloc[0]
    assert list(rule.y) == [want] and rule.line.dash == "dash"
    # each method's legend entry is a plain colour; the line style is its own legend group
    kinds = {t.name: t.line.dash for t in fig.data if str(t.legendgroup).startswith("kinds ")}
    assert kinds == {"unstructured": "solid", "N:M": "dot", "unstructured + activation rule": "dash"}
    shapes = queries.kernel_shapes(con)
    kf = charts.kernel_figure(shapes)
    measured = [t for t in kf.data if t.name != "measured = ideal" and t.x[0] is not None]
    assert sum(len(t.x) for t in measured) == len(shapes)
    assert any(t.name == "measured = ideal" for t in kf.data)
    sf = charts.status_figure(queries.runs(con))
    assert [t.name for t in sf.data] == ["done", "failed", "cancelled", "pending"]
    long = queries.compare(con, "method", "magnitude", "wanda")
    cf = charts.compare_figure(long, "perplexity", "magnitude", "wanda")
    assert [t.name for t in cf.data] == ["A: magnitude", "B: wanda"] and len(cf.data[0].x) == 4
    assert charts.kernel_figure(shapes.iloc[0:0]).layout.annotations
