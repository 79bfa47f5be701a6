"""`builtin:english`: real English prose with fixed splits, built from two Debian manuals.

    python -m bench.accuracy.english debian-handbook_11.20220922_all.deb developers-reference_12.18_all.deb

The books (`BOOKS`) are The Debian Administrator's Handbook (DocBook HTML) and the Debian Developer's
Reference (Sphinx HTML). Each is read in reading order, following each page's `rel="next"` link from
`index.html`. Every prose paragraph (DocBook: `class="para"`; Sphinx: a `<p>` in the page's main body)
becomes one line: its text with whitespace collapsed, with the listings, tables and index terms inside it left out
(inline code and file names are kept: they are words of the sentence) and trailing "→ URL" references
removed, kept when it reads as prose (at least 12 words, ending with a full stop, question or exclamation
mark, or an ellipsis). Each book's lines are cut into contiguous splits: the first 85% `train`
(calibration draws from it), the next 5% `validation`, the last 10% `test` (perplexity, KL, the cloze
task); contiguous, so that no passage is split across two of them. A split is the handbook's part followed
by the reference's part.
Licence: the handbook is GPL-2.0+ or CC-BY-SA-3.0, the reference GPL-2.0+ (their packages' copyright
files); the derived text is distributed under GPL-2.0-or-later, the handbook taken under that option, with
attribution written to SOURCE.json beside the splits and recorded with every figure measured on it. The
same package versions give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from bench.errors import BenchError

ENGLISH_DIR = Path(__file__).resolve().parent.parent / "assets" / "text" / "english"
SPLITS = {"train": 0.85, "validation": 0.05, "test": 0.10}
MIN_WORDS = 12
LICENCE = "GPL-2.0-or-later"
_LINK = re.compile(r"(\s*→\s*\S+)+$")  # the handbook's trailing "→ https://..." link references


@dataclass(frozen=True)
class Book:
    package: str  # the Debian package that ships its HTML
    title: str
    html_dir: str  # inside the package
    style: str  # "docbook": paragraphs are class="para"; "sphinx": <p> inside the main body
    licence: str  # as the package's copyright file states it


BOOKS = (
    Book("debian-handbook", "The Debian Administrator's Handbook (Raphaël Hertzog, Roland Mas; Freexian SARL)",
         "usr/share/doc/debian-handbook/html/en-US", "docbook", "GPL-2.0+ or CC-BY-SA-3.0"),
    Book("developers-reference", "Debian Developer's Reference (Christian Schwarz, Adam Di Carlo, Raphaël "
         "Hertzog, Andreas Barth, Lucas Nussbaum, Hideki Yamane, Holger Levsen)",
         "usr/share/developers-reference", "sphinx", "GPL-2.0+"),
)


class _Page(HTMLParser):
    """The prose paragraphs of one page and its `next` link."""

    def __init__(self, style: str = "docbook"):
        super().__init__(convert_charrefs=True)
        self.style = style
        self.paragraphs: list[str] = []
        self.next: str | None = None
        self._body = style == "docbook"  # sphinx: only the main body holds the book's text
        self._depth = 0  # inside a paragraph: nesting depth of tags
        self._skip = 0  # inside an index term, a listing or a table within it
        self._text: list[str] = []

    def _opens_paragraph(self, tag: str, cls: list[str]) -> bool:
        if self.style == "docbook":
            return tag in ("p", "div") and "para" in cls
        return self._body and tag == "p"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "link" and a.get("rel") == "next":
            self.next = a.get("href")
        if self.style == "sphinx" and tag == "div":
            if a.get("role") == "main":
                self._body = True
            elif "sphinxsidebar" in cls or "footer" in cls:
                self._body = False
        if self._depth:
            self._depth += tag not in ("br", "img")
            if self._skip or "indexterm" in cls or tag in ("pre", "table"):
                self._skip += tag not in ("br", "img")
        elif self._opens_paragraph(tag, cls):
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


def paragraphs(html_dir: Path, style: str = "docbook") -> list[str]:
    """A book's prose paragraphs in reading order."""
    out, page, seen = [], "index.html", set()
    while page and page not in seen and (html_dir / page).is_file():
        seen.add(page)
        parser = _Page(style)
        parser.feed((html_dir / page).read_text(encoding="utf-8"))
        out += parser.paragraphs
        page = parser.next.split("#")[0] if parser.next else None
    return out


def _package(deb: Path) -> tuple[str, str]:
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True,
                            capture_output=True, text=True).stdout
    info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
    return info.get("Package", ""), info.get("Version", "unknown")


def _book_lines(book: Book, deb: Path) -> tuple[list[str], dict[str, Any]]:
    name, version = _package(deb)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        html_dir = Path(tmp) / book.html_dir
        if not (html_dir / "index.html").is_file():
            raise BenchError(f"{deb}: no {book.html_dir}/index.html; give the {book.package} .deb")
        lines = paragraphs(html_dir, book.style)
    record = {"title": book.title, "package": f"{name} {version} (Debian)", "licence": book.licence,
              "package_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(), "paragraphs": len(lines)}
    return lines, record


def _cut(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Contiguous [start, end) paragraph ranges of each split, in SPLITS order."""
    bounds, start = {}, 0
    for i, (split, share) in enumerate(SPLITS.items()):
        end = len(lines) if i == len(SPLITS) - 1 else start + round(share * len(lines))
        bounds[split], start = (start, end), end
    return bounds


def build(debs: list[Path], out: Path = ENGLISH_DIR) -> dict[str, Any]:
    """Write train/validation/test .txt and SOURCE.json from the books' package files, one per BOOKS entry."""
    by_name = {_package(d)[0]: d for d in debs}
    missing = [b.package for b in BOOKS if b.package not in by_name]
    if missing:
        raise BenchError(f"give the .deb of {', '.join(missing)} (apt-get download {' '.join(missing)})")
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    books = []
    for book in BOOKS:
        lines, record = _book_lines(book, by_name[book.package])
        bounds = _cut(lines)
        for split, (start, end) in bounds.items():
            splits[split] += lines[start:end]
        books.append({**record, "paragraph_ranges": {s: list(r) for s, r in bounds.items()}})
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, lines in splits.items():
        text = "\n".join(lines) + "\n"
        (out / f"{split}.txt").write_text(text, encoding="utf-8")
        sizes[split] = {"share": SPLITS[split], "paragraphs": len(lines), "bytes": len(text.encode()),
                        "sha256": hashlib.sha256(text.encode()).hexdigest()}
    source = {
        "name": "builtin:english",
        "books": books,
        "licence": f"{LICENCE}: derived from the books above (the handbook taken under its GPL-2.0+ option): "
                   "their prose paragraphs, with markup, listings, tables and index terms removed",
        "selection": f"DocBook elements of class para / Sphinx <p> in the main body, without listings, tables "
                     f"and index terms, >= {MIN_WORDS} words, ending in . ? ! or an ellipsis, trailing link "
                     "references removed; reading order; each book cut 85/5/10% into contiguous splits, a split "
                     "being the books' parts in the order above",
        "splits": sizes,
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
    if len(sys.argv) != len(BOOKS) + 1:
        sys.exit("usage: python -m bench.accuracy.english " + " ".join(f"{b.package}_VERSION_all.deb" for b in BOOKS))
    info = build([Path(p) for p in sys.argv[1:]])
    print(json.dumps(info["splits"], indent=1))
