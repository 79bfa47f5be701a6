"""`builtin:english`: real English prose with fixed splits, built from The Debian Administrator's Handbook.

    python -m bench.accuracy.english debian-handbook_11.20220922_all.deb    # rewrites bench/assets/text/english

The book's English HTML (Debian package `debian-handbook`) is read in reading order, following each page's
`rel="next"` link from `index.html`. Every paragraph (`class="para"`) becomes one line, code listings inside it left out:
its text with whitespace collapsed, index terms and trailing "→ URL" references left out, kept when it reads
as prose (at least 12 words, ending with a full stop, question or exclamation mark, or an ellipsis). The lines, in book order, are cut into contiguous
splits: the first 85% `train` (calibration draws from it), the next 5% `validation` (few-shot items), the
last 10% `test` (perplexity, KL, the cloze task); contiguous, so that no passage is split across two of them.
Licence: GPL-2.0+ or CC-BY-SA-3.0 (the package's copyright file); the derived text is distributed under
CC-BY-SA-3.0 with attribution, written to SOURCE.json beside the splits and recorded with every figure
measured on it. The same package version gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from bench.errors import BenchError

ENGLISH_DIR = Path(__file__).resolve().parent.parent / "assets" / "text" / "english"
SPLITS = {"train": 0.85, "validation": 0.05, "test": 0.10}
HTML_DIR = "usr/share/doc/debian-handbook/html/en-US"
MIN_WORDS = 12
_LINK = re.compile(r"(\s*→\s*\S+)+$")  # the book's trailing "→ https://..." link references


class _Page(HTMLParser):
    """The prose paragraphs of one page and its `next` link."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.next: str | None = None
        self._depth = 0  # inside a <p class="para">: nesting depth of tags
        self._skip = 0  # inside an index term or a listing within it
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and a.get("rel") == "next":
            self.next = a.get("href")
        if self._depth:
            self._depth += tag not in ("br", "img")
            if self._skip or "indexterm" in (a.get("class") or "") or tag in ("pre", "code", "table"):
                self._skip += tag not in ("br", "img")
        elif tag in ("p", "div") and "para" in (a.get("class") or "").split():
            self._depth, self._text = 1, []

    def handle_endtag(self, tag):
        if not self._depth:
            return
        self._skip = max(0, self._skip - 1) if self._skip else 0
        self._depth -= 1
        if self._depth == 0:
            text = _LINK.sub("", " ".join("".join(self._text).split()))
            if len(text.split()) >= MIN_WORDS and text[-1] in ".?!…":
                self.paragraphs.append(text)

    def handle_data(self, data):
        if self._depth and not self._skip:
            self._text.append(data)


def paragraphs(html_dir: Path) -> list[str]:
    """The book's prose paragraphs in reading order."""
    out, page, seen = [], "index.html", set()
    while page and page not in seen and (html_dir / page).is_file():
        seen.add(page)
        parser = _Page()
        parser.feed((html_dir / page).read_text(encoding="utf-8"))
        out += parser.paragraphs
        page = parser.next.split("#")[0] if parser.next else None
    return out


def build(deb: Path, out: Path = ENGLISH_DIR) -> dict[str, Any]:
    """Write train/validation/test .txt and SOURCE.json from the package file `deb`."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        html_dir = Path(tmp) / HTML_DIR
        if not (html_dir / "index.html").is_file():
            raise BenchError(f"{deb}: no {HTML_DIR}/index.html; give the debian-handbook .deb")
        lines = paragraphs(html_dir)
    version = deb.name.split("_")[1] if deb.name.count("_") >= 2 else "unknown"
    out.mkdir(parents=True, exist_ok=True)
    bounds, start, sizes = {}, 0, {}
    for i, (split, share) in enumerate(SPLITS.items()):
        end = len(lines) if i == len(SPLITS) - 1 else start + round(share * len(lines))
        text = "\n".join(lines[start:end]) + "\n"
        (out / f"{split}.txt").write_text(text, encoding="utf-8")
        bounds[split] = [start, end]
        sizes[split] = {"paragraphs": end - start, "bytes": len(text.encode()),
                        "sha256": hashlib.sha256(text.encode()).hexdigest()}
        start = end
    source = {
        "name": "builtin:english",
        "source": "The Debian Administrator's Handbook (Raphaël Hertzog, Roland Mas; Freexian SARL), English HTML",
        "package": f"debian-handbook {version} (Debian)",
        "package_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "licence": "CC-BY-SA-3.0 (the book is GPL-2.0+ or CC-BY-SA-3.0); this text is derived from it: its "
                   "prose paragraphs, with markup, listings and index terms removed",
        "selection": f"elements of class para without their listings and index terms, >= {MIN_WORDS} words, ending in . ? ! or an ellipsis, trailing link references removed; book order",
        "splits": {s: {"share": SPLITS[s], "paragraph_range": bounds[s], **sizes[s]} for s in SPLITS},
    }
    (out / "SOURCE.json").write_text(json.dumps(source, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return source


def source() -> dict[str, Any]:
    """What builtin:english is and its licence, as recorded with every figure measured on it."""
    return json.loads((ENGLISH_DIR / "SOURCE.json").read_text(encoding="utf-8"))


def split_text(split: str) -> str:
    if split not in SPLITS:
        raise BenchError(f"builtin:english has no split '{split}'; known: {', '.join(SPLITS)}")
    return (ENGLISH_DIR / f"{split}.txt").read_text(encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.accuracy.english PATH/TO/debian-handbook_VERSION_all.deb")
    info = build(Path(sys.argv[1]))
    print(json.dumps(info["splits"], indent=1))
