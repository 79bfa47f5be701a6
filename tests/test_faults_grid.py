"""Grids that passed validation and then failed every job: extreme sparsities, numbers a field cannot take,
grids of no jobs. Each test names the defect it covers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.errors import GridError
from bench.grid import expand, parse_grid
from bench.patterns import Unstructured, parse_pattern, pattern_from_dict
from conftest import bench, grid_text, one_line_exit_2, small_grid, write_grid


# ---- 2: extreme sparsities ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.08, 0.5, 0.92, 0.95, 0.99])
def test_every_unstructured_target_parses_and_round_trips(target):
    """Defect 2: OWL's owl_lambda (default 0.08) was checked on uniform patterns too, so a target at or
    below 8% or at or above 92% failed in every form, and in the worker when the job was rebuilt."""
    for form in (f"{target * 100:g}%", f"unstructured:{target}", {"kind": "unstructured", "target": target},
                 {"kind": "unstructured", "target": target, "scope": "row"}):
        p = parse_pattern(form)
        assert p.target == target and p.allocation == "uniform"
        assert pattern_from_dict(p.to_dict()) == p
        assert pattern_from_dict(json.loads(json.dumps(p.to_dict()))) == p  # as it crosses to a worker


def test_owl_settings_are_checked_only_where_they_apply():
    with pytest.raises(ValueError) as info:  # the user never set owl_lambda: the message says it is the default
        parse_pattern({"kind": "unstructured", "target": 0.95, "allocation": "owl"})
    assert info.value.args[0] == "owl_lambda" and "(the default)" in info.value.args[1] and "0.05" in info.value.args[1]
    assert parse_pattern({"kind": "unstructured", "target": 0.95, "allocation": "owl", "owl_lambda": 0.04}).owl_lambda == 0.04
    with pytest.raises(ValueError) as info:  # set on a uniform pattern, it would do nothing: refused
        parse_pattern({"kind": "unstructured", "target": 0.5, "owl_lambda": 0.1})
    assert info.value.args[0] == "owl_lambda" and "only with allocation" in info.value.args[1]
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            parse_pattern({"kind": "unstructured", "target": 0.5, "allocation": "owl", "owl_m": bad})
    # the keys of uniform patterns do not change: the stored OWL defaults stay in the dict
    assert parse_pattern("95%").to_dict() == {"kind": "unstructured", "target": 0.95, "scope": "layer",
                                              "allocation": "uniform", "owl_m": 5.0, "owl_lambda": 0.08}


def test_extreme_targets_dry_run_and_prune(tmp_path, tiny_model):
    """`--dry-run` crashed on 95% and 5%; and a 95% or 99% target prunes and verifies for real."""
    from transformers import AutoModelForCausalLM

    from bench.prune.harness import prune_model
    from bench.registry import method_registry

    grid = write_grid(tmp_path, small_grid(tiny_model, patterns='["5%", "95%", {kind = "unstructured", target = 0.99}]'))
    dry = bench("submit", grid, "--db", tmp_path / "b.duckdb", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "· 5% ·" in dry.stdout and "· 95% ·" in dry.stdout and "· 99% ·" in dry.stdout
    assert not (tmp_path / "b.duckdb").exists()
    for target in (0.95, 0.99):
        model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        report = prune_model(model, method_registry().get("magnitude")(seed=0), Unstructured(target))
        assert all(layer["measured_sparsity"] >= target - 1e-9 for layer in report.layers)


# ---- 10 and 11: values that pass validation and fail later; grids of no jobs ------------------------

NUMERIC = [
    ("[runner]\nstage_timeout_s = inf", "runner.stage_timeout_s", "not a finite number"),
    ("[runner]\nstage_timeout_s = nan", "runner.stage_timeout_s", "not a finite number"),
    ("[runner]\nstage_timeout_s = 1e12", "runner.stage_timeout_s", "(7 days)"),
    ("[runner]\nmax_retries = 100000", "runner.max_retries", "must be in [0, 100]"),
    ("seeds = [4294967296]", "seeds[0]", "at most 2147483647"),
    ("seeds = [1, 1]", "seeds[1]", "listed twice"),
    ("[calibration]\nseed = 9999999999", "calibration.seed", "out of range"),
    ("[calibration]\nseq_len = 4096", "calibration.seq_len", "longer than model"),
    ("[evaluation.perplexity]\ncontext_length = 1024\nstride = 512", "evaluation.perplexity.context_length",
     "512 positions in its config.json"),
    ("[latency]\nprefill_length = 513", "latency.prefill_length", "give at most 512"),
    ("[latency]\nprompt_length = 500\ndecode_tokens = 13", "latency.decode_tokens", "prompt_length + decode_tokens = 513"),
    ("[latency]\ndecode_batch = [1, 8, 1]", "latency.decode_batch[2]", "listed twice"),
    ('patterns = [{kind = "unstructured", target = 0.5, allocation = "owl", owl_m = inf}]', "patterns[0].owl_m", "finite"),
    ('patterns = ["unstructured:nan"]', "patterns[0]", "not a finite number"),
]


@pytest.mark.parametrize("extra,field,fragment", NUMERIC, ids=[n[1] for n in NUMERIC])
def test_numbers_are_checked_for_what_they_can_take(untrained_model, extra, field, fragment):
    """Defect 10: `stage_timeout_s = inf` passed validation and failed every job. Every numeric field is
    checked before anything runs (siblings: seeds past 32 bits, lengths past the model's positions,
    duplicates in lists)."""
    text = grid_text(untrained_model, extra)
    if extra.startswith("patterns"):
        text = f'models = [{{ path = "{untrained_model}" }}]\nmethods = ["magnitude"]\n{extra}\n'
    if "calibration" in extra:
        text = text.replace('["magnitude"]', '["wanda"]')
    with pytest.raises(GridError) as info:
        parse_grid(text, source="g.toml")
    assert info.value.field == field and fragment in str(info.value), str(info.value)


def test_model_fields_and_method_params_refuse_non_finite_numbers(untrained_model):
    for model_extra, field in (("expect_perplexity = inf", "models[0].expect_perplexity"),
                               ("expect_tolerance = nan", "models[0].expect_tolerance")):
        with pytest.raises(GridError) as info:
            parse_grid(f'models = [{{ path = "{untrained_model}", {model_extra} }}]\nmethods = ["dense"]\n')
        assert info.value.field == field and "not a finite number" in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(grid_text(untrained_model, methods='[{name = "sparsegpt", params = {percdamp = nan}}]'))
    assert info.value.field == "methods[0].params.percdamp" and "finite" in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(grid_text(untrained_model, methods='["magnitude", "wanda", "magnitude"]'))
    assert info.value.field == "methods[2]" and "listed twice" in str(info.value)
    with pytest.raises(GridError) as info:
        parse_grid(grid_text(untrained_model, '[evaluation.tasks]\nnames = ["synthetic_add", "synthetic_add"]'))
    assert info.value.field == "evaluation.tasks.names[1]" and "listed twice" in str(info.value)


@pytest.mark.parametrize("extra,methods,why", [
    ('dense_baseline = false\n[[exclude]]\nmethod = "magnitude"', '["magnitude"]', "[[exclude]]"),
    ('kernels = ["torch-semi-structured"]', '["magnitude"]', "runs on a target in `hardware`"),
])
def test_a_grid_of_no_jobs_is_refused_with_the_reason(tmp_path, untrained_model, extra, methods, why):
    """Defect 11: a grid that expands to nothing exited 0 saying "0 jobs"."""
    grid = write_grid(tmp_path, grid_text(untrained_model, extra, methods=methods, patterns='["50%"]'))
    for flags in ((), ("--dry-run",)):
        line = one_line_exit_2(bench("submit", grid, "--db", tmp_path / "b.duckdb", *flags))
        assert "the grid expands to no jobs" in line and why in line, line
    assert not (tmp_path / "b.duckdb").exists()


@pytest.mark.parametrize("methods,patterns,why", [
    ('["magnitude"]', None, 'the grid has no `patterns` (the default, ["dense"], prunes nothing)'),
    ('["magnitude", "sparsegpt"]', '["50%", {kind = "channels", target = 0.5}]', None),
    ('["sparsegpt"]', '[{kind = "channels", target = 0.5}]',
     "it prunes to unstructured, nm patterns, and `patterns` holds channels only"),
])
def test_a_method_with_no_pattern_to_run_is_refused_in_one_line(tmp_path, untrained_model, methods, patterns, why):
    """A pruning method none of whose patterns the grid lists ran only the dense job, without a word. Now the
    grid is refused, naming the method; a method that runs some of the patterns still runs (the others are
    reported as not run)."""
    text = f'models = [{{ path = "{untrained_model}" }}]\nmethods = {methods}\n' + (
        f"patterns = {patterns}\n" if patterns else "")
    if why is None:
        assert len(expand(parse_grid(text))) == 4  # dense, magnitude 50% and channels, sparsegpt 50%
        return
    with pytest.raises(GridError) as info:
        parse_grid(text)
    assert info.value.field == f"methods[{methods.count(',')}]" and why in str(info.value)
    line = one_line_exit_2(bench("submit", write_grid(tmp_path, text), "--db", tmp_path / "b.duckdb", "--dry-run"))
    assert "has no pattern to run" in line and "remove the method" in line and why in line
    assert not (tmp_path / "b.duckdb").exists()


# ---- the docs say what a grid can run ----------------------------------------------------------------

def test_grid_docs_say_a_grid_is_code_to_trust():
    text = " ".join((Path(__file__).parent.parent / "docs" / "grid-format.md").read_text().split())
    assert "runs that folder's code" in text and "trusted like a script" in text


def test_a_refined_method_with_no_pattern_it_refines_is_the_reason_not_an_exclude(tmp_path, untrained_model):
    """DSnoT refines unstructured and N:M masks only: a grid of a refined method and block patterns expands to
    nothing, and the reason says so (it blamed [[exclude]] rules there were none of)."""
    from bench.grid import incompatible

    text = grid_text(untrained_model, "dense_baseline = false", methods='[{name = "magnitude", refine = "dsnot"}]',
                     patterns='[{kind = "block", target = 0.5}]')
    with pytest.raises(GridError) as info:
        parse_grid(text)
    assert info.value.field == "methods[0]" and "'magnitude+dsnot' has no pattern to run" in str(info.value)
    assert "when refined" in str(info.value) and "holds block only" in str(info.value)
    line = one_line_exit_2(bench("submit", write_grid(tmp_path, text), "--db", tmp_path / "b.duckdb", "--dry-run"))
    assert "has no pattern to run" in line and "[[exclude]]" not in line
    both = text.replace('patterns = [{kind = "block", target = 0.5}]', 'patterns = [{kind = "block", target = 0.5}, "50%"]')
    assert incompatible(parse_grid(both)) == ["magnitude+dsnot x 50%/block4x4"]  # reported, not run
