"""`english_cloze`: a multiple-choice lm-eval task on real English, built from `builtin:english`.

    python -m bench.accuracy.cloze            # rewrites bench/assets/tasks/english (byte-identical)

Each document is one paragraph of a split whose last word is a plain word of at least three letters: the
context is the paragraph's last sentences up to that word (at most `CONTEXT_WORDS` words, whole sentences
where they fit), the answer is the word, and the three other choices are answers of other paragraphs of the
same split, picked and placed by SHA-256 of the document's index (no random generator, so the same text
gives the same bytes everywhere). Test documents come from the `test` split, few-shot ones from
`validation`; nothing comes from `train`, which calibration draws from. Scored by lm-eval as `acc` (the
choice of highest log-likelihood) and `acc_norm` (per byte); chance is 0.25.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bench.accuracy import english

FOLDER = Path(__file__).resolve().parent.parent / "assets" / "tasks" / "english"
CHOICES = 4
CONTEXT_WORDS = 48
MIN_LETTERS = 3
SPLITS = ("test", "validation")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[A-Z“\"(])")
_TRAILING = ".?!…)\"”’'"


def _rank(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def item(paragraph: str) -> tuple[str, str] | None:
    """(context, answer) of one paragraph, or None when its last word is not a plain word."""
    head, _, last = paragraph.rpartition(" ")
    answer = last.rstrip(_TRAILING)
    if not head or len(answer) < MIN_LETTERS or not answer.isalpha():
        return None
    sentences = _SENTENCE_END.split(head)
    context = sentences.pop()
    while sentences and len(context.split()) + len(sentences[-1].split()) <= CONTEXT_WORDS:
        context = f"{sentences.pop()} {context}"
    words = context.split()
    return " ".join(words[-CONTEXT_WORDS:]), answer


def documents(split: str) -> list[dict[str, Any]]:
    """The split's cloze documents, in the split's order."""
    pairs = [p for p in map(item, english.split_text(split).splitlines()) if p]
    docs = []
    for i, (context, answer) in enumerate(pairs):
        others = sorted({a for _, a in pairs if a.lower() != answer.lower()}, key=lambda w: _rank(split, i, w))
        choices = others[:CHOICES - 1]
        label = _rank(split, i, "label") % CHOICES
        choices.insert(label, answer)
        docs.append({"id": i, "prompt": context, "choices": choices, "label": label})
    return docs


TASK_YAML = """\
# Multiple-choice cloze on real English ({n} choices, chance {chance:.3f}): the last word of a paragraph of
# builtin:english. Written by bench.accuracy.cloze; the documents are frozen in cloze.*.jsonl.
task: english_cloze
tag:
  - english
custom_dataset: !function utils.load
test_split: test
fewshot_split: validation
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

UTILS_PY = '''\
"""Loads the frozen documents of english_cloze from the .jsonl files beside this file."""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(**_ignored):
    files = {split: str(HERE / f"cloze.{split}.jsonl") for split in ("test", "validation")}
    return datasets.load_dataset("json", data_files=files)
'''


def write_task_folder(folder: Path = FOLDER) -> list[Path]:
    """(Re)write the task folder; the output is byte-identical for the same text and code."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"utils.py": UTILS_PY, "english_cloze.yaml": TASK_YAML.format(n=CHOICES, chance=1 / CHOICES)}
    for split in SPLITS:
        files[f"cloze.{split}.jsonl"] = "".join(json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n"
                                                for d in documents(split))
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]


if __name__ == "__main__":
    for path in write_task_folder():
        print(path.name, sum(1 for _ in path.open(encoding="utf-8")), "lines")
