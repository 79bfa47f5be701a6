"""Loads the frozen documents of english_cloze from the .jsonl files beside this file."""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(**_ignored):
    files = {split: str(HERE / f"cloze.{split}.jsonl") for split in ("test", "validation")}
    return datasets.load_dataset("json", data_files=files)
