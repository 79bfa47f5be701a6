"""Reading one TOML table: `take` each known key with its type and check, then `finish` refuses the rest.

    t = _Table("grid.toml", "calibration", data["calibration"])
    samples = t.take("samples", int, 32, check=_positive)   # GridError naming grid.toml: calibration.samples
    t.finish()                                              # an unknown key is an error, with the closest name

The limits that every number of a grid is held to are here too.
"""

from __future__ import annotations

import math
from typing import Any

from bench.errors import GridError, did_you_mean

# What numbers can really take downstream. Integers are stored in 32-bit columns (seeds among them) and
# passed to C; a stage timeout is an interval timer; Ray counts retries in a C int.
DTYPES = ("float32", "bfloat16", "float16")
# What numbers can really take downstream. Integers are stored in 32-bit columns (seeds among them) and
# passed to C; a stage timeout is an interval timer; Ray counts retries in a C int.
MAX_INT = 2**31 - 1
MAX_STAGE_TIMEOUT_S = 7 * 24 * 3600.0
MAX_RETRIES = 100


class _Table:
    """A TOML table being read: `take` each known key, then `finish` rejects the unknown ones."""

    def __init__(self, source: str, path: str, data: Any):
        self.source, self.path = source, path
        if not isinstance(data, dict):
            self.fail("", f"expected a table, got {_kind(data)}")
        self.data, self.seen = data, set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else (self.path or key)

    def fail(self, key: str, message: str):
        raise GridError(self.source, self.where(key), message)

    def take(self, key: str, types, default=..., check=None):
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                self.fail(key, "missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in _tuple(types):
            self.fail(key, f"expected {_names(types)}, got a boolean")
        if not isinstance(value, types):
            self.fail(key, f"expected {_names(types)}, got {_kind(value)} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML's inf and nan: no field takes them
            self.fail(key, f"{value!r} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
            self.fail(key, f"{value} is out of range; integers here are at most {MAX_INT}")
        if check is not None:
            problem = check(value)
            if problem:
                self.fail(key, problem)
        return value

    def finish(self):
        for key in self.data:
            if key not in self.seen:
                self.fail(key, f"unknown field{did_you_mean(key, self.seen)}; allowed: {', '.join(sorted(self.seen))}")


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in _tuple(types))


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _positive(v):
    return None if v > 0 else f"{v} must be > 0"


def _nonnegative(v):
    return None if v >= 0 else f"{v} must be >= 0"
