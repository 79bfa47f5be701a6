"""Grid files: parse and validate a TOML grid completely, then expand it into jobs.

    spec = load_grid("examples/quickstart.toml")     # raises GridError on the first problem
    jobs = expand(spec)                               # one Job per model x method x pattern x hardware x kernel x seed

Every error names the file, the field path and what was expected, e.g.
`grid.toml: patterns[1]: 1.3 is not in [0, 1)`. Nothing here runs a model or touches the store, so a
bad grid costs nothing. The grid format is described in docs/grid-format.md.

    table.py    reading one TOML table (`_Table`), and the limits numbers are held to
    specs.py    MethodSpec, GridSpec (the protocols they hold are in bench.spec.protocols)
    fields.py   the lists and what they name: models, methods, patterns, hardware, kernels, tasks, datasets
    parse.py    load_grid, parse_grid: the file, table by table
    expand.py   expand (to jobs), why_no_jobs, incompatible
"""

from bench.grid.expand import expand, incompatible, why_no_jobs
from bench.grid.fields import max_positions
from bench.grid.parse import load_grid, parse_grid
from bench.grid.specs import CalibrationSpec, GridSpec, MethodSpec
from bench.grid.table import DTYPES, MAX_INT, MAX_RETRIES, MAX_STAGE_TIMEOUT_S

__all__ = ["CalibrationSpec", "DTYPES", "GridSpec", "MAX_INT", "MAX_RETRIES", "MAX_STAGE_TIMEOUT_S", "MethodSpec",
           "expand", "incompatible", "load_grid", "max_positions", "parse_grid", "why_no_jobs"]
