"""Job and stage keys are what lets a resubmitted grid reuse stored work: a refactor must not change them.

tests/data/example_keys.json holds, for every example grid, each job's key and its stage keys as the code
computed them. A change that is meant to alter results bumps STAGE_VERSIONS and rewrites this file on
purpose; the last such rewrite: native-dense version 2 (its batch-1 GEMV reads four rows at a time, about
1.3x faster from memory), which changed the job and latency keys of the native-dense jobs only. (Before
it: latency 4, which changed every latency key and no prune or evaluate key.)
"""

import json
from pathlib import Path

import pytest

from bench.grid import expand, load_grid

ROOT = Path(__file__).parent.parent
EXPECTED = json.loads((Path(__file__).parent / "data" / "example_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_grid_keys_are_unchanged(name):
    jobs = expand(load_grid(ROOT / "examples" / name))
    got = [[j.key, j.stage_keys()] for j in jobs]
    assert got == EXPECTED[name]


def test_every_example_grid_is_covered():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_job_crosses_into_json_and_back_unchanged(name):
    """What a worker or the store rebuilds from a job's JSON is the same job: typed values, same keys."""
    from bench.patterns import Pattern
    from bench.spec.hardware import Hardware
    from bench.spec.jobs import Job
    from bench.spec.protocols import PerplexitySpec

    for job in expand(load_grid(ROOT / "examples" / name)):
        d = json.loads(json.dumps(job.to_dict()))  # the store and Ray see only JSON
        back = Job.from_dict(d)
        assert back == job and back.key == job.key and back.stage_keys() == job.stage_keys()
        assert isinstance(back.pattern, Pattern) and isinstance(back.hardware, Hardware)
        assert isinstance(back.perplexity, PerplexitySpec)
        assert all(v is None or not isinstance(v, dict) for k, v in vars(back).items()
                   if k in ("pattern", "calibration", "perplexity", "latency", "tasks", "layers", "refine"))
