"""Text datasets for perplexity and calibration, named by one string:

    builtin:synthetic         the project's synthetic language (bench.world.language), splits train/validation/test
    builtin:english           real English prose from two Debian manuals (bench.accuracy.english),
                              splits train/validation/test; its source and licence go with every figure
    path/to/folder            a local folder holding `<split>.txt`
    path/to/file.txt          one local text file (the split name is recorded but not used to pick a file)
    hf:NAME or hf:NAME:CONFIG a Hugging Face dataset, e.g. hf:wikitext:wikitext-2-raw-v1; rows of its `text`
                              column are joined with blank lines (the usual GPTQ protocol for wikitext)
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError

BUILTIN = {"builtin:synthetic", "builtin:english"}


def check_dataset(dataset: str) -> str | None:
    """What is wrong with a dataset name, or None; nothing is loaded."""
    if dataset.startswith("builtin:"):
        return None if dataset in BUILTIN else f"unknown built-in dataset '{dataset}'; known: {', '.join(sorted(BUILTIN))}"
    if dataset.startswith("hf:"):
        return None if len(dataset) > 3 else "write a Hugging Face dataset as 'hf:NAME' or 'hf:NAME:CONFIG'"
    p = Path(dataset).expanduser()
    if not p.exists():
        return f"'{dataset}' does not exist; give a folder of <split>.txt files, a .txt file, 'builtin:synthetic' or 'hf:NAME[:CONFIG]'"
    return None


def load_text(dataset: str, split: str) -> str:
    if dataset == "builtin:synthetic":
        from bench.world import language as world

        if split not in world.SPLIT_SEEDS:
            raise BenchError(f"builtin:synthetic has no split '{split}'; known: {', '.join(world.SPLIT_SEEDS)}")
        return world.split_text(split)
    if dataset == "builtin:english":
        from bench.accuracy import english

        return english.split_text(split)
    if dataset.startswith("hf:"):
        return _load_hub_text(dataset, split)
    p = Path(dataset).expanduser()
    if p.is_dir():
        f = p / f"{split}.txt"
        if not f.is_file():
            have = ", ".join(sorted(x.stem for x in p.glob("*.txt"))) or "none"
            raise BenchError(f"{dataset}: no {split}.txt in that folder (splits there: {have})")
        return f.read_text(encoding="utf-8")
    if p.is_file():
        return p.read_text(encoding="utf-8")
    raise BenchError(f"dataset '{dataset}' does not exist")


def _load_hub_text(dataset: str, split: str) -> str:
    import datasets

    name, _, config = dataset[3:].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # network, missing dataset, bad split: all end the job with the cause
        raise BenchError(f"could not load {dataset} split '{split}' ({type(err).__name__}: {err}); "
                         "without a reachable hub, use a local folder or builtin:synthetic") from err
    if "text" not in ds.column_names:
        raise BenchError(f"{dataset} has no 'text' column (columns: {', '.join(ds.column_names)})")
    return "\n\n".join(ds["text"])


def provenance(dataset: str) -> dict | None:
    """Where a built-in dataset's text comes from and under what licence (None for the others: a local
    path or hub id is its own record)."""
    if dataset == "builtin:english":
        from bench.accuracy import english

        return english.source()
    return None
