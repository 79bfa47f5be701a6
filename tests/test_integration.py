"""`bench submit` end to end: a real local Ray instance, a real DuckDB file, a real (tiny) model.

One grid holds a healthy model and one whose weights file is corrupt: the corrupt model's jobs are stored
as failed with their error, the others finish, the exit code is 1 and the summary names the failures.
Resubmitting runs only what is not done; --force runs everything again.
"""

import json
import shutil
from importlib.metadata import version
import subprocess
import sys

import pandas as pd
import pytest

from bench.store import Store
from conftest import FAST_LATENCY, FAST_PPL, write_grid

pytestmark = pytest.mark.slow


def bench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def grid_text(models: dict) -> str:
    body = 'name = "integration"\npatterns = ["50%", "2:4"]\nmethods = ["magnitude"]\n'
    body += "".join(f'[[models]]\nname = "{name}"\npath = "{path}"\n' for name, path in models.items())
    return body + FAST_PPL + FAST_LATENCY


@pytest.fixture(scope="module")
def grid_and_db(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("integration")
    broken = folder / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    grid = write_grid(folder, grid_text({"tiny": tiny_model, "broken": broken}))
    return grid, folder / "bench.duckdb"


def test_dry_run_lists_jobs_and_writes_nothing(grid_and_db):
    grid, db = grid_and_db
    proc = bench("submit", grid, "--dry-run", "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert "6 jobs, 6 to run, 0 already done" in proc.stdout
    assert "tiny · magnitude · 2:4 · cpu · torch-dense · seed 0" in proc.stdout
    assert not db.exists()


def test_submit_resume_and_force(grid_and_db, tiny_model):
    grid, db = grid_and_db

    first = bench("submit", grid, "--db", db)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "6 jobs · 0 already done · 3 done · 3 failed" in first.stdout
    assert first.stdout.count("failed: broken ·") == 3
    # progress in a log (stderr is not a terminal): every stage is queued, then started by a worker, then
    # ends (the broken model's prune stages fail after they start; what needs them is never queued)
    said = [line.split(None, 2)[1:] for line in first.stderr.splitlines() if line.startswith("  ") and " · " in line]
    for kind in ("prune", "evaluate", "latency"):
        assert [e for e, what in said if what.startswith(f"{kind} · tiny · magnitude · 2:4 ")] == \
            ["queued", "started", "done"], first.stderr
    assert [e for e, what in said if what.startswith("prune · broken · magnitude · 2:4 ")] == \
        ["queued", "started", "failed"], first.stderr
    assert sum(e == "queued" for e, _ in said) == sum(e == "started" for e, _ in said) > 0

    store = Store(db)
    jobs = store.query("SELECT model, method, pattern, status, error, traceback FROM jobs ORDER BY model, pattern")
    assert (jobs[jobs.model == "tiny"].status == "done").all()
    broken = jobs[jobs.model == "broken"]
    assert (broken.status == "failed").all()
    assert broken.error.str.contains("cannot load model 'broken'").all()
    assert broken.traceback.str.contains("Traceback").all()

    board = store.leaderboard()
    assert sorted(board.method) == ["dense", "magnitude", "magnitude"]
    assert board.perplexity.notna().all() and board.decode_tok_s_b1.notna().all() and board.prefill_ms.notna().all()
    rows = {r.pattern: r for r in board.itertuples()}
    assert rows["dense"].measured_sparsity < 0.01 and rows["dense"].kernel_status == "dense"
    assert rows["50%"].measured_sparsity == pytest.approx(0.5, abs=1e-3)
    assert rows["2:4"].measured_sparsity == pytest.approx(0.5, abs=1e-3)
    assert rows["2:4"].kernel_status == "mask only"
    assert rows["50%"].perplexity > rows["dense"].perplexity * 0.9
    assert rows["dense"].perplexity_change_vs_dense == 0

    # provenance of the run and of each job
    run = store.query("SELECT * FROM runs").iloc[0]
    assert run.grid_text == grid.read_text() and json.loads(run.packages)["torch"]
    assert run.jobs_done == 3 and run.jobs_failed == 3 and run.status == "failed"
    metrics = store.query("SELECT name, details FROM metrics WHERE name = 'perplexity'")
    protocol = json.loads(metrics.details[0])
    assert protocol["context_length"] == 64 and protocol["tokens_scored"] > 0
    layers = store.query("SELECT count(*) AS n FROM layers")["n"][0]
    assert layers == 3 * 28  # 4 blocks x 7 linear layers, for each done job

    # resubmit: only the failed jobs run again
    again = bench("submit", grid, "--db", db, "--no-progress")
    assert again.returncode == 1
    assert "6 jobs · 3 already done · 0 done · 3 failed" in again.stdout

    # --force: everything runs again, and the rows are replaced, not duplicated
    fixed = write_grid(grid.parent, grid_text({"tiny": tiny_model}), name="fixed.toml")
    forced = bench("submit", fixed, "--db", db, "--force", "--no-progress")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "3 jobs · 0 already done · 3 done · 0 failed" in forced.stdout
    assert len(store.leaderboard()) == 3
    assert store.query("SELECT count(*) AS n FROM runs")["n"][0] == 3


def test_read_commands(grid_and_db, tmp_path):
    grid, db = grid_and_db
    table = bench("leaderboard", "--db", db)
    assert table.returncode == 0 and "magnitude" in table.stdout and "mask only" in table.stdout
    csv = bench("leaderboard", "--db", db, "--format", "csv")
    df = pd.read_csv(__import__("io").StringIO(csv.stdout))
    assert {"perplexity", "decode_tok_s_b1", "prefill_ms", "measured_sparsity"} <= set(df.columns)
    js = bench("leaderboard", "--db", db, "--format", "json")
    assert all("job_key" in json.loads(line) for line in js.stdout.splitlines())

    listing = bench("ls", "--db", db, "--status", "failed")
    assert listing.returncode == 0 and "broken" in listing.stdout
    key = df.job_key[0]
    shown = bench("show", key[:8], "--db", db)
    assert shown.returncode == 0 and "git_commit" in shown.stdout and "perplexity" in shown.stdout
    stages = shown.stdout.split("\nstages ")[1].split("\n\n")[0].splitlines()
    assert stages[1].split()[:4] == ["kind", "status", "ran", "attempts"] and "peak_GiB" in stages[1]
    assert {line.split()[0] for line in stages[2:]} == {"prune", "evaluate", "latency"}
    assert all(" this run " in line or " reused from " in line for line in stages[2:])
    assert bench("show", "zzzz", "--db", db).returncode == 2

    out = tmp_path / "export"
    assert bench("export", "--format", "parquet", out, "--db", db).returncode == 0
    assert len(pd.read_parquet(out / "leaderboard.parquet")) == len(df)
    assert bench("export", "--format", "csv", out, "--db", db).returncode == 0
    assert (out / "metrics.csv").stat().st_size > 0
    exported = pd.read_csv(out / "stages.csv")  # stage timings, reuse (the run that ran it) and peak memory
    assert {"kind", "run_id", "duration_s", "peak_rss_bytes", "attempts"} <= set(exported.columns)
    assert {"decode_speedup_b1_lo", "decode_speedup_b1_hi", "decode_speedup_b1_verdict"} <= set(
        pd.read_csv(out / "leaderboard.csv").columns)


def test_unreachable_cluster_is_one_line_and_writes_nothing(grid_and_db, tmp_path):
    grid, _ = grid_and_db
    db = tmp_path / "fresh.duckdb"
    proc = bench("submit", grid, "--db", db, "--address", "127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "--address: no Ray cluster answers at 127.0.0.1:9" in proc.stderr
    assert not db.exists() and not list(tmp_path.iterdir())  # no store, no lock file


def test_an_artifact_folder_that_is_a_file_is_one_line_and_writes_nothing(grid_and_db, tmp_path):
    grid, _ = grid_and_db
    (tmp_path / "afile").write_text("")
    proc = bench("submit", grid, "--db", tmp_path / "b.duckdb", "--artifacts", tmp_path / "afile")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--artifacts:" in proc.stderr and "is a file; give a folder" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_hardware_no_node_can_run_is_failed_at_once(tiny_model, tmp_path):
    grid = write_grid(tmp_path, f'hardware = ["cuda:H100"]\nmethods = ["dense"]\nmodels = [{{ path = "{tiny_model}" }}]\n'
                      + FAST_PPL + FAST_LATENCY)
    db = tmp_path / "b.duckdb"
    proc = bench("submit", grid, "--db", db, "--no-progress")
    assert proc.returncode == 1
    assert "no node of the Ray cluster can run hardware 'cuda:H100'" in proc.stdout
    row = Store(db).query("SELECT status, error FROM jobs").iloc[0]
    assert row.status == "failed" and row.error.startswith("prune stage: Unschedulable:")


def test_lm_eval_scores_equal_a_direct_lm_eval_run(tmp_path):
    """The stored task metrics are lm-eval's own numbers for the same model; the dense gate warns."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.model import zoo
    from bench.accuracy.lmeval import task_manager

    grid = write_grid(tmp_path, """
        methods = ["dense"]
        [[models]]
        builtin = "tiny-llama"
        expect_perplexity = 1.5
        [evaluation.tasks]
        names = ["synthetic_add", "synthetic_recall"]
        limit = 40
        [latency]
        enabled = false
        """ + FAST_PPL)
    db = tmp_path / "b.duckdb"
    proc = bench("submit", grid, "--db", db, "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING: dense tiny-llama has perplexity" in proc.stdout and "expected 1.5" in proc.stdout
    store = Store(db)
    stored = store.query("SELECT name, value, stderr, details FROM metrics WHERE stage = 'lm_eval' ORDER BY name")
    assert stored.name.tolist() == ["synthetic_add/acc", "synthetic_add/flips", "synthetic_recall/acc",
                                    "synthetic_recall/flips"]
    assert stored.set_index("name").value[["synthetic_add/flips", "synthetic_recall/flips"]].tolist() == [0, 0]
    stored = stored[stored.name.str.endswith("/acc")]  # lm-eval's own figures (flips are ours: vs dense)
    assert store.query("SELECT warnings FROM jobs").warnings[0].startswith("dense tiny-llama has perplexity")

    torch.set_num_threads(1)  # as the worker ran it (hardware "cpu")
    folder = zoo.builtin_path("tiny-llama")
    lm = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(folder).eval(),
              tokenizer=AutoTokenizer.from_pretrained(folder), batch_size=32, device="cpu")
    direct = lm_eval.simple_evaluate(model=lm, tasks=["synthetic_add", "synthetic_recall"], limit=40,
                                     task_manager=task_manager(None, defaults=False), log_samples=False)
    for row in stored.itertuples():
        task = row.name.split("/")[0]
        assert row.value == direct["results"][task]["acc,none"]
        assert row.stderr == pytest.approx(direct["results"][task]["acc_stderr,none"], rel=1e-12)
        details = json.loads(row.details)
        assert details["lm_eval"] == version("lm_eval")
        assert details["documents"] == 40


@pytest.mark.skipif(__import__("bench.accuracy.hub", fromlist=["x"]).reachable(), reason="needs a machine with no hub access")
def test_hub_task_without_a_hub_fails_with_a_clear_message(tmp_path):
    grid = write_grid(tmp_path, """
        methods = ["dense"]
        models = ["builtin:tiny-gpt2"]
        [evaluation.tasks]
        names = ["arc_easy"]
        limit = 5
        [latency]
        enabled = false
        """ + FAST_PPL)
    proc = bench("submit", grid, "--db", tmp_path / "b.duckdb", "--no-progress")
    assert proc.returncode == 1
    assert "lm-eval tasks arc_easy failed (the hub is not reachable from this worker" in proc.stdout
    # the stage failed on its task, and keeps the perplexity it measured before: beside the failure
    store = Store(tmp_path / "b.duckdb")
    job = store.query("SELECT job_key, status, error FROM jobs").iloc[0]
    assert job["status"] == "failed" and "arc_easy" in job["error"]
    kept = store.query("SELECT name, value FROM metrics WHERE job_key = ?", [job["job_key"]]).set_index("name")["value"]
    assert {"perplexity", "kl_vs_dense"} <= set(kept.index) and kept["perplexity"] > 1
    assert store.leaderboard().empty  # a failed job is not ranked
    shown = bench("show", job["job_key"], "--db", tmp_path / "b.duckdb")
    assert "status: failed" in shown.stdout and "perplexity" in shown.stdout.split("\nmetrics")[1]


def test_a_third_party_plugin_runs_through_a_grid(tiny_model, tmp_path):
    """The example plugin package (installed by ci/setup.sh) is found through its entry point and its
    rows reach the leaderboard, next to a calibrated built-in method."""
    grid = write_grid(tmp_path, f"""
        patterns = ["2:4"]
        models = [{{ path = "{tiny_model}", name = "tiny" }}]
        methods = [{{ name = "example-l1-row", params = {{ alpha = 2.0 }} }}, "wanda"]
        [calibration]
        samples = 8
        seq_len = 64
        [latency]
        enabled = false
        """ + FAST_PPL)
    db = tmp_path / "b.duckdb"
    proc = bench("submit", grid, "--db", db, "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    board = Store(db).leaderboard()
    assert sorted(board.method) == ["dense", "example-l1-row", "wanda"]
    for row in board[board.method != "dense"].itertuples():
        assert row.measured_sparsity == pytest.approx(0.5, abs=1e-3) and row.perplexity > 1
    jobs = Store(db).query("SELECT method, method_params, spec FROM jobs WHERE method != 'dense' ORDER BY method")
    assert json.loads(jobs.method_params[0]) == {"alpha": 2.0}
    assert json.loads(jobs.spec[1])["calibration"] == {"dataset": "builtin:synthetic", "split": "train",
                                                       "samples": 8, "seq_len": 64, "seed": 0}
