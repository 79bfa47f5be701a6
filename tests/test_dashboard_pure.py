"""The dashboard's pure parts on frames built by hand: the shared labels and number formats, the tables, the
fixed encodings, and what the charts draw (no store, no Streamlit)."""

import pandas as pd
import pytest

from dashboard import charts, labels, tables


def points(fig):
    """The data traces of a figure (legend-only entries hold a single None)."""
    return [t for t in fig.data if t.x is not None and len(t.x) and t.x[0] is not None and t.mode != "lines"]


def board_of(rows):
    base = {"model": "m", "hardware": "cpu", "seed": 0, "kernel": "native", "kernel_status": "accelerated",
            "job_key": None, "run_id": "r", "git_commit": "0e1b371c9d2f4a", "measured_sparsity": 0.5}
    out = pd.DataFrame([{**base, **r} for r in rows])
    out["job_key"] = [f"k{i}" for i in range(len(out))]
    return out


# ---- labels ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, want", [(5.714640975061068, "5.71"), (31.534577636639987, "31.5"), (660.084, "660"),
                                         (0.0123456, "0.0123"), (9.996, "10.0"), (26100.4, "26100"),
                                         (5.37864e7, "5.38e+07"), (1.0, "1.00"), (0, "0"), (-0.0456, "-0.0456")])
def test_three_significant_digits(value, want):
    assert labels.sig(value) == want


def test_every_page_writes_a_value_the_same_way():
    assert labels.text(5.714640975061068, "perplexity") == "5.71"
    assert labels.text(1.28812, "decode_speedup_b1") == "1.29x"
    assert labels.text(0.437, "decode_outside_share_b1") == "43.7%"
    assert labels.text(-0.018, "task_acc_change_vs_dense") == "-1.80" and labels.text(0.02, "task_acc_change_vs_dense") == "+2.00"
    assert labels.text("0e1b371c9d2f4a5b6c7d8e9f0a1b2c3d4e5f6a7b", "git_commit") == "0e1b371"
    for missing in (None, float("nan"), pd.NA, pd.NaT):
        assert labels.text(missing, "perplexity") == ""  # never "None" or "nan"
    assert labels.label("decode_speedup_b1").endswith("(x dense)") and "(%)" in labels.label("measured_sparsity")
    assert labels.label("synthetic_add/acc") == "synthetic_add accuracy (%)"
    assert labels.display("measured_sparsity", 0.5) == 50.0 and labels.display("perplexity", 5.7) == 5.7
    assert labels.printf("decode_speedup_b1") == "%.3gx" and labels.printf("model") is None


# ---- encodings -------------------------------------------------------------------------------------------

def test_a_method_keeps_its_colour_whatever_else_the_store_or_the_filter_holds():
    full = charts.encoding(["dense", "random", "magnitude", "wanda", "sparsegpt", "owl-wanda"], ["dense", "50%", "2:4"])
    some = charts.encoding(["wanda", "sparsegpt"], ["2:4"])
    for method in ("wanda", "sparsegpt"):  # built-ins: one colour in every store
        assert full.method_colour(method) == some.method_colour(method)
    assert len(set(full.colour.values())) == len(full.colour)  # no two methods share a colour
    assert list(full.symbol) == ["dense", "50%", "2:4"]  # dense, unstructured by sparsity, then N:M
    assert charts.encoding([], ["2:4", "90%", "50%", "4:8", "dense"]).symbol.keys() == {"dense", "50%", "90%", "4:8", "2:4"}
    assert list(charts.encoding([], ["2:4", "90%", "50%", "4:8", "dense"]).symbol) == ["dense", "50%", "90%", "2:4", "4:8"]


def test_the_figure_uses_the_given_encoding_not_the_filtered_rows():
    board = board_of([
        {"method": "dense", "pattern": "dense", "perplexity": 10.0, "decode_speedup_b1": 1.0,
         "decode_speedup_b1_verdict": "dense", "kernel_status": "dense"},
        {"method": "zeta", "pattern": "50%", "perplexity": 11.0, "decode_speedup_b1": 1.3,
         "decode_speedup_b1_verdict": "faster"},
        {"method": "alpha", "pattern": "2:4", "perplexity": 12.0, "decode_speedup_b1": 1.4,
         "decode_speedup_b1_verdict": "faster"}])
    enc = charts.encoding(board["method"], board["pattern"])
    colour = {t.name: t.marker.color[0] for t in points(charts.tradeoff_figure(board, enc=enc))}
    only_zeta = board[board["method"] != "alpha"]
    filtered = {t.name: t.marker.color[0] for t in points(charts.tradeoff_figure(only_zeta, enc=enc))}
    assert filtered["zeta"] == colour["zeta"]
    # without the store's encoding, the filtered frame would have given zeta another colour (alpha's)
    alone = {t.name: t.marker.color[0] for t in points(charts.tradeoff_figure(only_zeta))}
    assert alone["zeta"] != colour["zeta"] and alone["zeta"] == colour["alpha"]


# ---- the trade-off chart ---------------------------------------------------------------------------------

def test_mask_only_and_noise_are_hollow_and_off_the_front_and_the_legend_keeps_encodings_apart():
    board = board_of([
        {"method": "dense", "pattern": "dense", "perplexity": 10.0, "decode_speedup_b1": 1.0, "kernel_status": "dense",
         "decode_speedup_b1_verdict": "dense", "decode_aa_b1": 1.01, "decode_aa_b1_lo": 0.95, "decode_aa_b1_hi": 1.08},
        {"method": "wanda", "pattern": "50%", "perplexity": 11.0, "decode_speedup_b1": 1.5,
         "decode_speedup_b1_verdict": "faster", "decode_speedup_b1_lo": 1.4, "decode_speedup_b1_hi": 1.6},
        {"method": "wanda", "pattern": "2:4", "perplexity": 10.5, "decode_speedup_b1": 2.0, "kernel": "torch-dense",
         "kernel_status": "mask only", "decode_speedup_b1_verdict": "faster"},  # noise that read "faster"
        {"method": "magnitude", "pattern": "2:4", "perplexity": 10.2, "decode_speedup_b1": 1.7,
         "decode_speedup_b1_verdict": "no measurable difference"}])
    front = charts.pareto_rows(board, "perplexity", "decode_speedup_b1")
    assert sorted(front["method"]) == ["dense", "wanda"] and (front["kernel_status"] != "mask only").all()
    fig = charts.tradeoff_figure(board, "perplexity", "decode_speedup_b1")
    drawn = {}
    for t in points(fig):
        for sym, colour, speed in zip(t.marker.symbol, t.marker.color, t.x):
            drawn[(t.name, speed)] = (sym, colour)
    assert not drawn[("wanda", 1.5)][0].endswith("-open")                       # measured faster: solid
    assert drawn[("wanda", 2.0)][1] == charts.MASK_ONLY
    assert drawn[("wanda", 2.0)][0].endswith("-open")                           # mask only: grey and hollow
    assert drawn[("magnitude", 1.7)][0].endswith("-open")                       # no measurable difference: hollow
    assert drawn[("dense", 1.0)] == ("circle", charts.METHOD_COLOURS["dense"])
    band = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(band) == 1 and (band[0].x0, band[0].x1) == (0.95, 1.08)  # the A/A noise band around 1x
    groups = {}
    for t in fig.data:
        if t.x is not None and len(t.x) == 1 and t.x[0] is None:
            groups.setdefault(t.legend or "legend", []).append(t)
    # methods are colours drawn as circles, patterns are symbols drawn in grey, each in a legend of its own:
    # no entry mixes the two
    assert {t.name for t in groups["legend"]} == {"dense", "wanda", "magnitude"}
    assert {t.marker.symbol for t in groups["legend"]} == {"circle"}
    assert {t.name for t in groups["legend2"]} == {"dense", "50%", "2:4"} and {t.marker.color for t in groups["legend2"]} == {"#777777"}
    assert {"A/A band (dense vs dense)", "mask only"} <= {t.name for t in groups["legend3"]}
    assert {t.legend for t in fig.data if t.name == "Pareto front"} == {"legend3"}  # the key: what lines mean
    assert all(t.showlegend is False for t in points(fig))
    # the tooltip speaks like the table: 3 significant digits and a short commit
    hover = points(fig)[0]
    assert "0e1b371" in "".join(map(str, hover.customdata.ravel())) and "0e1b371c" not in "".join(map(str, hover.customdata.ravel()))


def test_legends_are_rows_above_the_panels_that_never_scroll():
    patterns = ["dense", "30%", "50%", "70%", "90%", "2:4", "4:8", "1:4"]
    board = board_of([{"method": m, "pattern": p, "perplexity": 10.0 + i, "decode_speedup_b1": 1.0 + i / 10,
                       "decode_speedup_b1_verdict": "faster"}
                      for i, (m, p) in enumerate(zip(["dense", *["wanda", "magnitude"] * 4], patterns))])
    for fig in (charts.tradeoff_figure(board, height=350), charts.sparsity_figure(board.assign(pattern_kind="unstructured"))):
        legends = [fig.layout[name] for name in ("legend", "legend2", "legend3")]
        assert all(lg.orientation == "h" and lg.yref == "container" for lg in legends)
        tops = [lg.y for lg in legends]
        assert tops == sorted(tops, reverse=True) and len(set(tops)) == 3  # one row each, methods first
        # every row lies within the top margin, above the panels
        assert all((1 - y) * fig.layout.height + charts.LEGEND_ROW <= fig.layout.margin.t for y in tops)
        assert {t.name for t in fig.data if t.legend == "legend2"} == set(patterns)


def test_log_axis_labels_are_readable():
    wide = charts.log_ticks([5.6, 663.8])
    assert wide["ticktext"] == ["10", "100", "1000"]  # powers of ten past two decades
    narrow = charts.log_ticks([5.6, 31.5])
    assert narrow["ticktext"] == ["5", "10", "20", "50"] and narrow["tickvals"] == sorted(narrow["tickvals"])
    assert charts.log_ticks([]) == {}


def test_the_kernel_chart_clips_an_outlier_and_says_so():
    shapes = pd.DataFrame({
        "shape": ["128x128", "128x384", "384x128"], "batch": [1, 1, 1], "format": ["bitmask", "csr16", "csr16"],
        "target_sparsity": [0.5, 0.9, 0.9], "speedup": [1.2, 3.1, 27.8], "speedup_lo": [1.1, 2.9, 20.0],
        "speedup_hi": [1.3, 3.3, 31.0], "verdict": ["faster"] * 3, "ideal_speedup": [1.87, 6.5, 6.5],
        "bandwidth_fraction": [0.4, 0.3, 2.1], "GBps": [7.0, 5.0, 30.0], "rounds": [9, 9, 9], "threads": [1, 1, 1],
        "method": "m", "pattern": ["50%", "90%", "90%"], "model": "x", "kernel": "native", "hardware": "cpu",
        "job_key": ["a", "b", "c"]})
    fig = charts.kernel_figure(shapes)
    drawn = [(y, sym, "".join(map(str, row))) for t in points(fig) for y, sym, row in zip(t.y, t.marker.symbol, t.customdata)]
    assert max(y for y, _, _ in drawn) == charts.KERNEL_AXIS_MAX
    clipped = [d for d in drawn if d[0] == charts.KERNEL_AXIS_MAX]
    assert len(clipped) == 1 and clipped[0][1] == "triangle-up" and "beyond the axis" in clipped[0][2]
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "log"
    assert any("30.0%" in row or "40.0%" in row for _, _, row in drawn)  # the bandwidth fraction per point
    legend = {t.legendgroup for t in fig.data if t.x is not None and len(t.x) == 1 and t.x[0] is None}
    assert {"format bitmask", "format csr16", "levels"} <= legend  # format as colour, sparsity as symbol


# ---- tables ----------------------------------------------------------------------------------------------

def two_kernel_board():
    rows = []
    for kernel, status in (("native", "accelerated"), ("torch-dense", "mask only")):
        rows += [
            {"method": "dense", "pattern": "dense", "target_sparsity": 0.0, "kernel": kernel, "kernel_status": "dense",
             "perplexity": 10.0, "decode_speedup_b1": 1.0, "decode_speedup_b1_verdict": "dense",
             "decode_aa_b1": 1.02, "decode_aa_b1_lo": 0.97, "decode_aa_b1_hi": 1.07, "measured_sparsity": 0.0},
            {"method": "wanda", "pattern": "50%", "target_sparsity": 0.5, "kernel": kernel, "kernel_status": status,
             "perplexity": 12.0, "decode_speedup_b1": 1.4 if kernel == "native" else 1.01,
             "decode_speedup_b1_lo": 1.3 if kernel == "native" else 0.9, "decode_speedup_b1_hi": 1.5 if kernel == "native" else 1.1,
             "decode_speedup_b1_verdict": "faster" if kernel == "native" else "no measurable difference"},
            {"method": "magnitude", "pattern": "50%", "target_sparsity": 0.5, "kernel": kernel, "kernel_status": status,
             "perplexity": 15.0, "decode_speedup_b1": 1.35, "decode_speedup_b1_verdict": "faster",
             "decode_speedup_b1_lo": 1.3, "decode_speedup_b1_hi": 1.4},
            {"method": "wanda", "pattern": "2:4", "target_sparsity": 0.5, "kernel": kernel, "kernel_status": status,
             "perplexity": 20.0, "decode_speedup_b1": 1.2, "decode_speedup_b1_verdict": "faster",
             "decode_speedup_b1_lo": 1.1, "decode_speedup_b1_hi": 1.3}]
    return board_of(rows)


def test_one_row_per_pruned_model_with_a_column_group_per_kernel():
    board = two_kernel_board()
    wide, kernels = tables.by_pruned_model(board, "decode_speedup_b1")
    assert kernels == ["native", "torch-dense"] and len(wide) == 4  # not 8: accuracy once per pruned model
    row = wide[(wide["method"] == "wanda") & (wide["pattern"] == "50%")].iloc[0]
    assert row["perplexity"] == 12.0 and row["native · speed"] == 1.4 and row["torch-dense · speed"] == 1.01
    assert row["native · 95% interval"] == "1.30-1.50" and row["native · verdict"] == ["faster"]
    assert row["torch-dense · status"] == ["mask only"] and row["native · job"].startswith("job?job=")
    dense = wide[wide["method"] == "dense"].iloc[0]
    assert dense["native · verdict"] == ["dense"] and dense["native · 95% interval"] == "A/A 1.02 (0.970-1.07)"


def test_a_speed_column_carries_the_status_of_the_phase_it_measured():
    """A prefill longer than the kernels' batch limit ran on PyTorch dense: under the prefill speed its
    badge says "dense fallback", under the decode speed "accelerated"; rows without phase statuses keep
    the backend's."""
    board = two_kernel_board()
    native = board["kernel"] == "native"
    board["prefill_speedup"] = 1.0
    board["prefill_kernel_status"] = board["kernel_status"].where(~native | (board["method"] == "dense"), "dense fallback")
    board["decode_kernel_status_b1"] = board["kernel_status"]
    row = lambda wide: wide[(wide["method"] == "wanda") & (wide["pattern"] == "50%")].iloc[0]  # noqa: E731
    assert row(tables.by_pruned_model(board, "prefill_speedup")[0])["native · status"] == ["dense fallback"]
    assert row(tables.by_pruned_model(board, "decode_speedup_b1")[0])["native · status"] == ["accelerated"]
    assert row(tables.by_pruned_model(board, "prefill_speedup")[0])["torch-dense · status"] == ["mask only"]
    assert "dense fallback" in tables.STATUSES  # a badge of its own colour
    plain = two_kernel_board().assign(prefill_speedup=1.0)
    assert row(tables.by_pruned_model(plain, "prefill_speedup")[0])["native · status"] == ["accelerated"]


def test_ranks_compare_methods_within_one_sparsity_level():
    wide, _ = tables.by_pruned_model(two_kernel_board())
    ranked = tables.ranked(wide, "perplexity", higher_is_better=False)
    got = {(r.method, r.pattern): r.rank for r in ranked.itertuples()}
    # dense is alone at 0; at 50% the three pruned models rank among themselves, 2:4 included (same level)
    assert got == {("dense", "dense"): 1, ("wanda", "50%"): 1, ("magnitude", "50%"): 2, ("wanda", "2:4"): 3}
    ties = pd.DataFrame({"model": ["a", "a", "a", "b", "b"], "target_sparsity": 0.5, "method": ["x", "y", "z", "x", "y"],
                         "pattern": ["p"] * 5, "ppl": [3.0, 2.0, float("nan"), 9.0, 9.0]})
    out = tables.ranked(ties, "ppl", higher_is_better=False)
    assert list(zip(out["model"], out["method"])) == [("a", "y"), ("a", "x"), ("a", "z"), ("b", "x"), ("b", "y")]
    assert out["rank"].fillna(0).tolist() == [1, 2, 0, 1, 1] and out["rank"].isna().tolist()[2]


def test_the_papers_table_is_method_by_pattern():
    paper = tables.paper_table(two_kernel_board(), "perplexity")
    assert list(paper.columns) == ["model", "method", "dense", "50%", "2:4"]
    assert paper["method"].tolist() == ["dense", "magnitude", "wanda"]
    wanda = paper[paper["method"] == "wanda"].iloc[0]
    assert (wanda["50%"], wanda["2:4"]) == (12.0, 20.0) and pd.isna(wanda["dense"])
