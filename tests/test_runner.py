"""Runner pieces that need no cluster: resource mapping, feasibility, address checks, progress."""

import io
import os

import pytest

from bench.errors import BenchError
from bench.spec.hardware import Hardware
from bench.run.cluster import check_address, job_env, resolve_address
from bench.run.runner import Progress


def resources_for(label):
    return Hardware.parse(label).ray_options()


def test_hardware_maps_to_ray_resources():
    assert resources_for("cpu") == {"num_cpus": 1}
    assert resources_for("cpu:4") == {"num_cpus": 4}
    assert resources_for("cuda") == {"num_cpus": 1, "num_gpus": 1}
    assert resources_for("cuda:H100") == {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "H100"}
    assert resources_for("cpu:2+epyc") == {"num_cpus": 2, "resources": {"epyc": 1.0}}
    assert resources_for("cuda:A100+nvlink=2+rack_7") == {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "A100",
                                                          "resources": {"nvlink": 2.0, "rack_7": 1.0}}
    assert Hardware.parse("cpu:3+x").threads == 3 and Hardware.parse("cuda+x").threads == 1


@pytest.mark.parametrize("bad", ["gpu", "cpu:0", "cpu+", "cpu+CPU", "cpu+x+x", "cpu+x=0", "cpu+x=-1", "cuda+1x",
                                 "cpu+node:10.0.0.1", ""])
def test_bad_hardware_is_refused_with_the_reason(bad):
    with pytest.raises(ValueError) as info:
        Hardware.parse(bad)
    assert repr(bad) in str(info.value) and "\n" not in str(info.value)


def test_feasibility_against_node_resources():
    cpu_node = {"CPU": 2.0, "memory": 1e9, "epyc": 1.0}
    gpu_node = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H100": 1.0, "nvlink": 4.0}
    assert Hardware.parse("cpu:2").fits(cpu_node)
    assert not Hardware.parse("cpu:4").fits(cpu_node)
    assert not Hardware.parse("cuda").fits(cpu_node)
    assert Hardware.parse("cuda:H100").fits(gpu_node)
    assert not Hardware.parse("cuda:A100").fits(gpu_node)
    assert Hardware.parse("cpu+epyc").fits(cpu_node) and not Hardware.parse("cpu+epyc").fits(gpu_node)
    assert not Hardware.parse("cpu+epyc=2").fits(cpu_node)
    assert Hardware.parse("cuda+nvlink=4").fits(gpu_node) and not Hardware.parse("cuda+nvlink=5").fits(gpu_node)


def test_unreachable_address_fails_fast_in_one_line():
    with pytest.raises(BenchError, match=r"--address: no Ray cluster answers at 127.0.0.1:9 ") as info:
        check_address("127.0.0.1:9", timeout_s=2)
    assert "\n" not in str(info.value)
    with pytest.raises(BenchError, match="is not host:port"):
        check_address("nonsense")
    check_address("auto")  # resolved by Ray itself


def test_ray_address_in_the_environment_is_joined_and_named_when_unreachable(monkeypatch, tmp_path, untrained_model):
    """`ray job submit` runs its entrypoint with RAY_ADDRESS set: `bench submit` joins that cluster (it started
    a second, local one before), and --address still wins."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    assert resolve_address(None) == ("127.0.0.1:9", "RAY_ADDRESS")
    assert resolve_address("10.0.0.5:6379") == ("10.0.0.5:6379", "--address")
    monkeypatch.setenv("RAY_ADDRESS", "  ")
    assert resolve_address(None) == (None, "--address")
    from conftest import bench, grid_text, one_line_exit_2, write_grid

    grid = write_grid(tmp_path, grid_text(untrained_model))
    db = tmp_path / "b.duckdb"
    proc = bench("submit", grid, "--db", db, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})
    line = one_line_exit_2(proc)
    assert line.startswith("bench: error: RAY_ADDRESS: no Ray cluster answers at 127.0.0.1:9 ") and "unset RAY_ADDRESS" in line
    assert not db.exists()  # refused before anything was written


def test_workers_get_the_drivers_kernel_and_cache_settings(monkeypatch):
    """A joined cluster's workers inherit their raylet's environment, not the driver's: the settings a stage
    depends on travel with the job."""
    for name in ("SPARSEBENCH_ISA", "SPARSEBENCH_SPIN_US", "SPARSEBENCH_MODEL_CACHE", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    assert job_env() == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("SPARSEBENCH_ISA", "avx2")
    monkeypatch.setenv("SPARSEBENCH_MODEL_CACHE", "/shared/models")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert job_env() == {"OMP_WAIT_POLICY": "ACTIVE", "SPARSEBENCH_ISA": "avx2", "SPARSEBENCH_MODEL_CACHE": "/shared/models"}


class Done:
    def describe(self):
        return "m · magnitude · 50% · cpu · torch-dense · seed 0"


def test_progress_counts_and_log_lines():
    out = io.StringIO()
    bar = Progress(3, stream=out)
    bar.update(2)
    bar.update(1, (Done(), {"status": "done", "duration_s": 1.5}))
    bar.update(0, (Done(), {"status": "failed", "error": "RuntimeError: boom"}))
    line = bar.line()
    assert "2/3" in line and "1 done" in line and "1 failed" in line and "0 stages running" in line and "ETA" in line
    assert out.getvalue().splitlines() == [
        "[1/3] done m · magnitude · 50% · cpu · torch-dense · seed 0 (1.5 s in this run)",
        "[2/3] failed m · magnitude · 50% · cpu · torch-dense · seed 0: RuntimeError: boom",
    ]


def test_progress_says_when_each_stage_is_queued_starts_and_ends():
    """In a log (no terminal), every stage has a line when it is queued, when a worker starts it and when it
    ends: its kind, what it runs for (a prune stage its pruned model, whatever kernels share it), when its worker started it,
    seconds and the stage's own peak memory."""
    from datetime import datetime, timezone

    from bench.grid import expand, parse_grid

    job = next(j for j in expand(parse_grid('models = ["builtin:tiny-gpt2"]\nmethods = ["magnitude"]\n'
                                            'patterns = ["50%"]\nactivations = ["teal:0.5"]\n'))
               if j.method == "magnitude")
    out = io.StringIO()
    bar = Progress(1, stream=out)
    now = datetime.now(timezone.utc).isoformat()
    bar.stage_queued("prune", job)
    bar.stage_started("prune", job)
    bar.stage_finished("prune", job, {"status": "done", "duration_s": 12.34, "peak_rss_bytes": 3 * 2**29,
                                      "peak_rss_scope": "stage", "started_at": now})
    bar.stage_queued("latency", job)
    bar.stage_finished("latency", job, {"status": "done", "duration_s": 2.0, "peak_rss_bytes": 2**30,
                                        "peak_rss_scope": "process"})
    bar.stage_finished("evaluate", job, {"status": "failed", "error": "TaskError: arc_easy"})
    lines = [line.strip().split(" ", 2)[1:] for line in out.getvalue().splitlines()]  # after the clock
    assert lines == [
        ["queued", "prune · tiny-gpt2 · magnitude · 50% · activations teal:0.5 · seed 0"],
        ["started", "prune · tiny-gpt2 · magnitude · 50% · activations teal:0.5 · seed 0 (queued 0.0 s)"],
        ["done", "prune · tiny-gpt2 · magnitude · 50% · activations teal:0.5 · seed 0 (started 0:00, 12.3 s, "
                 "peak 1.50 GiB)"],
        ["queued", "latency · tiny-gpt2 · magnitude · 50% · activations teal:0.5 · cpu · torch-dense · seed 0"],
        ["done", "latency · tiny-gpt2 · magnitude · 50% · activations teal:0.5 · cpu · torch-dense · seed 0 "
                 "(2.0 s, peak 1.00 GiB over the worker's life)"],
        ["failed", "evaluate · tiny-gpt2 · magnitude · 50% · activations teal:0.5 · seed 0: TaskError: arc_easy"]]
    assert all(line.startswith("  0:00 ") for line in out.getvalue().splitlines())
    quiet = io.StringIO()
    Progress(1, stream=quiet, enabled=False).stage_queued("prune", job)  # --no-progress
    assert quiet.getvalue() == ""


def test_sigint_and_sigterm_set_the_flag_instead_of_interrupting_a_write():
    """The scheduling loop checks the flag between store transactions; a second Ctrl-C interrupts at once."""
    import os
    import signal

    from bench.run.runner import _Signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN under nohup &
    for sig in (signal.SIGINT, signal.SIGTERM):
        with _Signals() as signals:
            os.kill(os.getpid(), sig)
            assert signals.received == sig  # delivered to the handler, no exception raised here
            if sig == signal.SIGINT:
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored on the way out
