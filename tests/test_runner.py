"""Runner pieces that need no cluster: resource mapping, feasibility, address checks, progress."""

import io

import pytest

from bench.errors import BenchError
from bench.runner import Progress, _node_can_run, check_address, resources_for


def test_hardware_maps_to_ray_resources():
    assert resources_for("cpu") == {"num_cpus": 1}
    assert resources_for("cpu:4") == {"num_cpus": 4}
    assert resources_for("cuda") == {"num_cpus": 1, "num_gpus": 1}
    assert resources_for("cuda:H100") == {"num_cpus": 1, "num_gpus": 1, "accelerator_type": "H100"}


def test_feasibility_against_node_resources():
    cpu_node = {"CPU": 2.0, "memory": 1e9}
    gpu_node = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H100": 1.0}
    assert _node_can_run(cpu_node, resources_for("cpu:2"))
    assert not _node_can_run(cpu_node, resources_for("cpu:4"))
    assert not _node_can_run(cpu_node, resources_for("cuda"))
    assert _node_can_run(gpu_node, resources_for("cuda:H100"))
    assert not _node_can_run(gpu_node, resources_for("cuda:A100"))


def test_unreachable_address_fails_fast_in_one_line():
    with pytest.raises(BenchError, match=r"--address: no Ray cluster answers at 127.0.0.1:9 ") as info:
        check_address("127.0.0.1:9", timeout_s=2)
    assert "\n" not in str(info.value)
    with pytest.raises(BenchError, match="is not host:port"):
        check_address("nonsense")
    check_address("auto")  # resolved by Ray itself


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
    assert "2/3" in line and "1 done" in line and "1 failed" in line and "0 running" in line and "ETA" in line
    assert out.getvalue().splitlines() == [
        "[1/3] done m · magnitude · 50% · cpu · torch-dense · seed 0 (1.5 s)",
        "[2/3] failed m · magnitude · 50% · cpu · torch-dense · seed 0: RuntimeError: boom",
    ]
