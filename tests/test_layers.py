"""The layout holds its shape: bench/ imports only downward, along the data flow, with no cycles.

Every import in every module is read from its source (function-level imports included), so a lazy import
that runs upward is caught as well as a top-level one. LAYERS lists the parts from the bottom up; a part
may import its own modules and any part below it, never one above.
"""

import ast
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"

LAYERS = [
    ["errors", "stats", "_native", "provenance"],  # leaves: no other bench module
    ["patterns"],                         # the plugin API: where zeros may go
    ["method"],                           # the plugin API: one layer at a time
    ["activation"],                       # the plugin API: activation-sparsity rules (uses method.Param)
    ["registry"],                         # entry points; base classes named lazily
    ["store"],                            # DuckDB, written by the driver alone
    ["spec"],                             # jobs, keys, hardware targets
    ["world"],                            # the synthetic language
    ["accuracy"],                         # perplexity, lm-eval, text data, hub
    ["model"],                            # loading, the model walk, artifacts, the zoo
    ["prune"],                            # the harness, refinement, calibration, conformance
    ["speed"],                            # latency, backends, packers, bench kernels
    ["run"],                              # runner, stage execution, local Ray
    ["grid"],                             # TOML to jobs
    ["cli"],
]
LEVEL = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def part(module: str) -> str:
    return module.split(".")[1]


def imports() -> dict[str, set[str]]:
    """{module: the bench modules it imports}, e.g. {"bench.run.runner": {"bench.store", ...}}."""
    out = defaultdict(set)
    for f in BENCH.rglob("*.py"):
        module = ".".join(f.relative_to(BENCH.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
                targets = [f"bench.{a.name}" for a in node.names] if node.module == "bench" else [node.module]
                out[module].update(t for t in targets if t != "bench")
            elif isinstance(node, ast.Import):
                out[module].update(a.name for a in node.names if a.name.startswith("bench."))
    return out


def test_every_part_is_in_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in BENCH.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert parts - set(LEVEL) == set(), "a new module or folder of bench/: give it a layer here"


def test_imports_only_go_down():
    upward = [f"{a} -> {b}" for a, targets in imports().items() for b in targets
              if part(a) != part(b) and LEVEL[part(b)] > LEVEL[part(a)]]
    assert upward == []


def test_no_import_cycles_between_modules():
    graph = imports()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert cycles == []


def test_the_top_level_stays_small():
    top = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 10, top


def test_no_module_is_over_400_lines():
    root = BENCH.parent
    files = [f for folder in ("bench", "methods", "dashboard", "tests", "benchmarks", "examples")
             for f in (root / folder).rglob("*.py")]
    too_long = {str(f.relative_to(root)): n for f in files if (n := len(f.read_text().splitlines())) > 400}
    assert too_long == {}


def test_no_function_in_bench_is_over_60_lines():
    """Long functions hide their steps: each grid table, CLI command group and pattern kind has its own."""
    too_long = {f"{f.relative_to(BENCH.parent)}:{n.name}": n.end_lineno - n.lineno + 1
                for f in BENCH.rglob("*.py") for n in ast.walk(ast.parse(f.read_text()))
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60}
    assert too_long == {}
