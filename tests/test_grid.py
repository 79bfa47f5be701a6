"""Grid validation: every error names the file, the field path and what was expected."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import GridError
from bench.grid import expand, incompatible, load_grid, parse_grid
from bench.spec.jobs import ModelSpec
from bench.patterns import NM, Dense, Unstructured
from conftest import write_grid


def grid(model: Path, extra: str = "", methods: str = 'methods = ["magnitude"]') -> str:
    return f'models = [{{ path = "{model}" }}]\n{methods}\n{extra}\n'


BAD = [
    # (grid body builder, field path, fragment of the message)
    (lambda m: "models = [ {path = 'x' ", "", "not valid TOML"),
    (lambda m: grid(m, 'patterns = ["unstructured:1.3"]'), "patterns[0]", "1.3 is not in [0, 1)"),
    (lambda m: grid(m, 'patterns = [{kind = "unstructured", target = 1.3}]'), "patterns[0].target", "1.3 is not in [0, 1)"),
    (lambda m: grid(m, 'patterns = ["4:2"]'), "patterns[0]", "impossible"),
    (lambda m: grid(m, 'patterns = ["2:4", "2:4"]'), "patterns[1]", "listed twice"),
    (lambda m: grid(m, 'patterns = [{kind = "blok"}]'), "patterns[0].kind", "not a pattern kind"),
    (lambda m: grid(m, methods='methods = [{name = "magnitde"}]'), "methods[0].name", "did you mean 'magnitude'?"),
    (lambda m: grid(m, methods='methods = [{name = "magnitude", params = {sparsity = 0.5}}]'), "methods[0].params.sparsity", "unknown parameter"),
    (lambda m: grid(m, methods='methods = [{name = "magnitude", colour = "red"}]'), "methods[0].colour", "unknown field"),
    (lambda m: grid(m, methods="methods = []"), "methods", "at least one method"),
    (lambda m: 'methods = ["dense"]\nmodels = [{ path = "/no/such/folder" }]', "models[0].path", "is not a folder"),
    (lambda m: f'methods = ["dense"]\nmodels = [{{ path = "{m.parent}" }}]', "models[0].path", "has no config.json"),
    (lambda m: f'methods = ["dense"]\nmodels = [{{ path = "{m}", hub = "a/b" }}]', "models[0]", "exactly one of"),
    (lambda m: 'methods = ["dense"]\nmodels = [{ hub = "not a valid id!" }]', "models[0].hub", "not a model id"),
    (lambda m: f'methods = ["dense"]\nmodels = [{{ path = "{m}", dtype = "int3" }}]', "models[0].dtype", "not one of"),
    (lambda m: f'methods = ["dense"]\nmodels = [{{ path = "{m}" }}, {{ path = "{m}" }}]', "models[1].name", "names two models"),
    (lambda m: grid(m, 'hardwre = ["cpu"]'), "hardwre", "did you mean 'hardware'?"),
    (lambda m: grid(m, 'hardware = ["tpu"]'), "hardware[0]", "not a hardware target"),
    (lambda m: grid(m, 'hardware = ["cpu:0"]'), "hardware[0]", "not a hardware target"),
    (lambda m: grid(m, 'kernels = ["torch-dens"]'), "kernels[0]", "did you mean 'torch-dense'?"),
    (lambda m: grid(m, "seeds = [-1]"), "seeds[0]", "non-negative integer"),
    (lambda m: grid(m, "seeds = []"), "seeds", "must not be empty"),
    (lambda m: grid(m, "[evaluation.perplexity]\ncontext_length = 64\nstride = 128"), "evaluation.perplexity.stride", "larger than context_length"),
    (lambda m: grid(m, "[evaluation.perplexity]\nmax_tokens = 0"), "evaluation.perplexity.max_tokens",
     "leave max_tokens unset to evaluate the whole split"),
    (lambda m: grid(m, "[evaluation.perplexity]\ncontext_length = 0"), "evaluation.perplexity.context_length", "must be > 0"),
    (lambda m: grid(m, '[evaluation.perplexity]\ndataset = "builtin:nope"'), "evaluation.perplexity.dataset", "unknown built-in dataset"),
    (lambda m: grid(m, '[evaluation.perplexity]\ndataset = "/no/such/data"'), "evaluation.perplexity.dataset", "does not exist"),
    (lambda m: grid(m, "[evaluation.perplexity]\nbos = 1"), "evaluation.perplexity.bos", "expected true or false"),
    (lambda m: grid(m, "[evaluation]\naccuracy = {}"), "evaluation.accuracy", "unknown field"),
    (lambda m: grid(m, "[latency]\nrepeats = 0"), "latency.repeats", "must be > 0"),
    (lambda m: grid(m, "[latency]\ndecode_batch = [1, 0]"), "latency.decode_batch[1]", "positive integer"),
    (lambda m: grid(m, "[latency]\nwarmup = 1.5"), "latency.warmup", "expected an integer"),
    (lambda m: grid(m, "[latency]\nprecision = 0"), "latency.precision", "fraction in (0, 1)"),
    (lambda m: grid(m, "[latency]\nprecision = 3"), "latency.precision", "e.g. 0.03 for +-3%"),
    (lambda m: grid(m, "[latency]\nmax_seconds = -1"), "latency.max_seconds", "must be > 0"),
    (lambda m: grid(m, "[latency]\nrepeats = 9\nmax_repeats = 5"), "latency.max_repeats", "below repeats = 9"),
    (lambda m: grid(m, "[[exclude]]\n"), "exclude[0]", "needs at least one of"),
    (lambda m: grid(m, '[[exclude]]\npattern = "9:4"'), "exclude[0].pattern", "impossible"),
    (lambda m: grid(m, "[calibration]\nsamples = -3"), "calibration.samples", "must be > 0"),
]


@pytest.mark.parametrize("build,field,fragment", BAD, ids=[b[1] or "toml" for b in BAD])
def test_bad_grids_name_field_and_fix(untrained_model, tmp_path, build, field, fragment):
    path = write_grid(tmp_path, build(untrained_model), name="bad.toml")
    with pytest.raises(GridError) as info:
        load_grid(path)
    err = info.value
    assert err.source == "bad.toml"
    assert err.field == field
    assert fragment in str(err)
    assert "\n" not in str(err)
    assert str(err).startswith(f"bad.toml: {field + ': ' if field else ''}")


def test_missing_grid_file(tmp_path):
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "nope.toml")


def test_bad_grid_through_cli_exits_2_one_line_and_writes_nothing(untrained_model, tmp_path):
    db = tmp_path / "bench.duckdb"
    path = write_grid(tmp_path, grid(untrained_model, 'patterns = ["unstructured:1.3"]'), name="grid.toml")
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "submit", str(path), "--db", str(db)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["bench: error: grid.toml: patterns[0]: 1.3 is not in [0, 1)"]
    assert not db.exists()


def test_defaults_and_shorthands(untrained_model):
    spec = parse_grid(grid(untrained_model, 'patterns = ["50%", "2:4", {kind = "nm", n = 4, m = 8}]'))
    assert spec.patterns == [Unstructured(0.5), NM(2, 4), NM(4, 8)]
    assert [h.label for h in spec.hardware] == ["cpu"] and spec.kernels == ["torch-dense"] and spec.seeds == [0]
    assert spec.models[0].name == "untrained" and spec.models[0].source == "path"
    assert spec.latency is not None and spec.perplexity.dataset == "builtin:synthetic"
    assert spec.perplexity.max_tokens is None  # unset: the whole split is evaluated


def test_expand_adds_dense_baseline_once_per_model(untrained_model):
    spec = parse_grid(grid(untrained_model, 'patterns = ["50%", "2:4"]\nseeds = [0, 1]'))
    jobs = expand(spec)
    dense = [j for j in jobs if j.method == "dense"]
    mag = [j for j in jobs if j.method == "magnitude"]
    assert len(dense) == 2  # one per seed, pattern dense
    assert all(j.pattern == Dense() for j in dense)
    assert len(mag) == 4
    assert len({j.key for j in jobs}) == len(jobs)


def test_expand_without_dense_baseline_and_with_excludes(untrained_model):
    body = grid(untrained_model, 'patterns = ["50%", "70%", "2:4"]\ndense_baseline = false\n'
                                 '[[exclude]]\npattern = "unstructured:0.7"\n[[exclude]]\nmethod = "magnitude"\npattern = "2:4"')
    jobs = expand(parse_grid(body))
    assert [j.pattern.label for j in jobs] == ["50%"]


def test_dense_pattern_with_pruning_method_is_reported_not_run(untrained_model):
    spec = parse_grid(grid(untrained_model, 'patterns = ["dense", "50%"]'))
    assert incompatible(spec) == []
    assert {j.pattern.label for j in expand(spec) if j.method == "magnitude"} == {"50%"}


def test_keys_are_stable_and_follow_what_determines_results(untrained_model, tmp_path):
    base = grid(untrained_model, 'patterns = ["50%"]')
    keys = [j.key for j in expand(parse_grid(base))]
    assert keys == [j.key for j in expand(parse_grid(base))]
    # the model label does not change a key; the evaluation protocol does
    relabelled = base.replace(f'path = "{untrained_model}"', f'path = "{untrained_model}", name = "other"')
    assert [j.key for j in expand(parse_grid(relabelled))] == keys
    longer = base + "[evaluation.perplexity]\ncontext_length = 256\nstride = 256\n"
    assert not set(keys) & {j.key for j in expand(parse_grid(longer))}


@pytest.mark.parametrize("name, value", [("SPARSEBENCH_ISA", "avx2"), ("SPARSEBENCH_SPIN_US", "50")])
def test_a_native_kernel_setting_is_another_measurement_on_native_kernels_only(untrained_model, monkeypatch, name, value):
    """SPARSEBENCH_ISA lowers the native kernels' instruction set on the run's workers (SPARSEBENCH_SPIN_US
    changes their pool's spin); the latency key did not say so, and a rerun at avx2 reused the timings made
    at avx512."""
    from bench.spec.jobs import Job, NATIVE_ENV

    body = grid(untrained_model, 'patterns = ["50%"]\nkernels = ["torch-dense", "native", "native-dense"]')
    for other in NATIVE_ENV:
        monkeypatch.delenv(other, raising=False)
    default = {(j.method, j.kernel): j for j in expand(parse_grid(body))}
    monkeypatch.setenv(name, value)
    changed = {(j.method, j.kernel): j for j in expand(parse_grid(body))}
    assert default.keys() == changed.keys() and {k for _, k in default} == {"torch-dense", "native", "native-dense"}
    for cell, job in changed.items():
        native = cell[1] != "torch-dense"
        assert job.native_env == (((name, value),) if native else ()) and default[cell].native_env == ()
        assert (job.latency_key != default[cell].latency_key) == native and (job.key != default[cell].key) == native
        assert (job.prune_key, job.eval_key) == (default[cell].prune_key, default[cell].eval_key)
        assert Job.from_dict(job.to_dict()) == job


def test_key_follows_model_contents(untrained_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(untrained_model, copy)
    assert ModelSpec("a", "path", str(copy)).fingerprint == ModelSpec("b", "path", str(untrained_model)).fingerprint
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    assert ModelSpec("a", "path", str(copy)).fingerprint != ModelSpec("b", "path", str(untrained_model)).fingerprint


def test_job_round_trips_through_a_dict(untrained_model):
    from bench.spec.jobs import Job

    for job in expand(parse_grid(grid(untrained_model, 'patterns = ["2:4"]'))):
        again = Job.from_dict(job.to_dict())
        assert again == job and again.key == job.key


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_example_grids_load_and_expand(path):
    jobs = expand(load_grid(path))
    assert jobs and len({j.key for j in jobs}) == len(jobs)
