"""Writing a benchmark's record: one JSON file per run under the results folder, named by time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def save(folder: Path, name: str, record: dict[str, Any]) -> Path:
    """`folder/<name>-<UTC time>.json`, written whole (a temporary file renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.rename(path)
    return path
