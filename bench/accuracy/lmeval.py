"""Zero- and few-shot tasks through lm-eval's own harness, on the in-memory pruned model.

    rows = run_tasks(model, tokenizer, TasksSpec(names=("synthetic_add",), limit=200), seed=0)

The model is wrapped with `HFLM(pretrained=model, tokenizer=tokenizer)` and evaluated by
`lm_eval.simple_evaluate` with a `TaskManager` that includes the project's task folder (and any folder
the grid names). Every metric comes back with its stderr, the number of documents scored and lm-eval's
version. The project ships one multiple-choice task per ability of its synthetic language
(`bench/assets/tasks/synthetic`, tag `synthetic`) and a cloze task on real English (`english_cloze`,
`bench/assets/tasks/english`, bench.accuracy.cloze); hub tasks such as `arc_easy` go through the same
code. `run_tasks_with_answers` also returns each document's answer, from which `flips` counts the answers
that differ from the dense model's.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.world import language as world
from bench.errors import BenchError
from bench.spec.protocols import TasksSpec  # noqa: F401 (the protocol; imported from here too)
from bench.stats import metric as record

TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tasks"  # bench/assets/tasks
SYNTHETIC_DIR = TASKS_DIR / "synthetic"
TASK_DOCS = {"test": 500, "validation": 50}


def include_paths(extra: str | None) -> list[str]:
    return [str(TASKS_DIR)] + ([str(Path(extra).resolve())] if extra else [])


def task_manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_paths(include_path), include_defaults=defaults)


def unknown_tasks(names, include_path: str | None) -> tuple[list[str], list[str]]:
    """Names (tasks, groups or tags) that no task folder defines, and the known names to suggest from.

    Only the project's folders are indexed first (fast); lm-eval's own tasks (about 15,000 files, 10-20 s)
    are indexed only when a name is not found there.
    """
    known = set(task_manager(include_path, defaults=False).all_tasks)
    missing = [n for n in names if n not in known]
    if missing:
        known |= set(task_manager(include_path, defaults=True).all_tasks)
        missing = [n for n in names if n not in known]
    return missing, sorted(known)


def run_tasks(model, tokenizer, spec: TasksSpec, seed: int) -> list[dict[str, Any]]:
    """The tasks' metrics, each with its stderr and protocol."""
    return _rows(_evaluate(model, tokenizer, spec, seed, log_samples=False), spec)


def run_tasks_with_answers(model, tokenizer, spec: TasksSpec, seed: int
                           ) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """`run_tasks`, plus each multiple-choice task's answers: per document (in document order) the index of
    the choice of highest log-likelihood, the answer `acc` scores."""
    out = _evaluate(model, tokenizer, spec, seed, log_samples=True)
    answers = {}
    for task, samples in sorted(out.get("samples", {}).items()):
        if samples and all(_is_choice(s.get("filtered_resps")) for s in samples):
            by_doc = sorted(samples, key=lambda s: s["doc_id"])
            answers[task] = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0])
                             for s in by_doc]
    return _rows(out, spec), answers


def _is_choice(resps) -> bool:
    return isinstance(resps, (list, tuple)) and len(resps) > 1 and all(
        isinstance(r, (list, tuple)) and isinstance(r[0], (int, float)) for r in resps)


def flips(answers: dict[str, list[int]], dense: dict[str, list[int]], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Per multiple-choice task, the fraction of documents whose answer differs from the dense model's."""
    rows = []
    for task, mine in sorted(answers.items()):
        theirs = dense.get(task)
        if theirs is None or len(theirs) != len(mine):
            continue
        changed = sum(a != b for a, b in zip(mine, theirs))
        rows.append(record(f"{task}/flips", changed / len(mine), "fraction", False, "lm_eval",
                           {"task": task, "documents": len(mine), "flipped": changed, "versus": "the dense model's "
                            "answer (the choice of highest log-likelihood, as acc)", "dense_reference": reference}))
    return rows


def _evaluate(model, tokenizer, spec: TasksSpec, seed: int, log_samples: bool) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from bench.accuracy import hub

    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size, device=device)
    ours = set(task_manager(spec.include_path, defaults=False).all_tasks)
    manager = task_manager(spec.include_path, defaults=not set(spec.names) <= ours)
    try:
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(spec.names), num_fewshot=spec.num_fewshot, limit=spec.limit,
            task_manager=manager, log_samples=log_samples, bootstrap_iters=1000, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except Exception as err:
        offline = " (the hub is not reachable from this worker and the data is not in the local cache)" if not hub.reachable() else ""
        raise BenchError(f"lm-eval tasks {', '.join(spec.names)} failed{offline}: {type(err).__name__}: "
                         f"{' '.join(str(err).split())[:500]}") from err


def _rows(out: dict[str, Any], spec: TasksSpec) -> list[dict[str, Any]]:
    lm_eval_version = version("lm_eval")
    rows = []
    for task, metrics in sorted(out["results"].items()):
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in sorted(metrics.items()):
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            name = f"{task}/{metric}" if filt == "none" else f"{task}/{metric},{filt}"
            rows.append(record(
                name, value, "fraction", True, "lm_eval",
                {"lm_eval": lm_eval_version, "task": task, "metric": metric, "filter": filt,
                 "num_fewshot": spec.num_fewshot, "limit": spec.limit, "documents": n,
                 "task_version": out.get("versions", {}).get(task)},
                stderr=stderr if isinstance(stderr, (int, float)) else None))
    return rows


# ---- the shipped task folder --------------------------------------------------------------------

# The files' bytes are part of every task stage's key (bench.grid.expand._task_suite): the text stays as it
# was written, module name of that time included (now bench.accuracy.lmeval), so stored results stay valid.
TASK_YAML = """\
# One multiple-choice task of the synthetic language: {ability} ({n} choices, chance {chance:.3f}).
# Written by bench.lmeval.write_task_folder; the documents are frozen in {ability}.*.jsonl.
task: synthetic_{ability}
tag:
  - synthetic
custom_dataset: !function utils.load
dataset_kwargs:
  ability: {ability}
test_split: test
fewshot_split: validation
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
fewshot_delimiter: "\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

UTILS_PY = '''\
"""Loads the frozen documents of a synthetic task from the .jsonl files beside this file."""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(ability, **_ignored):
    files = {split: str(HERE / f"{ability}.{split}.jsonl") for split in ("test", "validation")}
    return datasets.load_dataset("json", data_files=files)
'''


def write_task_folder(folder: Path = SYNTHETIC_DIR) -> list[Path]:
    """(Re)write the synthetic task folder; the output is byte-identical for the same code."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "utils.py"]
    written[0].write_text(UTILS_PY)
    for ability in world.ABILITIES:
        n = world.CHOICES[ability]
        path = folder / f"synthetic_{ability}.yaml"
        path.write_text(TASK_YAML.format(ability=ability, n=n, chance=1 / n))
        written.append(path)
        for split, count in TASK_DOCS.items():
            path = folder / f"{ability}.{split}.jsonl"
            path.write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in world.task_docs(ability, split, count)))
            written.append(path)
    return written


def chance(task: str) -> float | None:
    """Accuracy of uniform guessing on a shipped task, or None for other tasks."""
    if task == "english_cloze":
        from bench.accuracy.cloze import CHOICES

        return 1 / CHOICES
    ability = task.removeprefix("synthetic_")
    return 1 / world.CHOICES[ability] if ability in world.CHOICES else None
