"""builtin:english: real English prose with fixed, disjoint splits and its source recorded."""

from __future__ import annotations

import hashlib

from bench.accuracy import english
from bench.accuracy.data import check_dataset, load_text, provenance


def test_the_splits_are_the_recorded_bytes_and_do_not_overlap():
    source = english.source()
    assert source["licence"].startswith("GPL-2.0-or-later")
    assert [b["package"].split()[0] for b in source["books"]] == [b.package for b in english.BOOKS]
    assert all("GPL-2.0+" in b["licence"] for b in source["books"])
    lines = {}
    for split, info in source["splits"].items():
        text = load_text("builtin:english", split)
        assert hashlib.sha256(text.encode()).hexdigest() == info["sha256"]
        lines[split] = text.splitlines()
        assert len(lines[split]) == info["paragraphs"]
    for book in source["books"]:  # each book's splits are contiguous, in order, and cover it
        r = [book["paragraph_ranges"][s] for s in ("train", "validation", "test")]
        assert r[0][0] == 0 and r[0][1] == r[1][0] and r[1][1] == r[2][0] and r[2][1] == book["paragraphs"]
    for split in lines:
        assert len(lines[split]) == sum(b["paragraph_ranges"][split][1] - b["paragraph_ranges"][split][0]
                                        for b in source["books"])
    assert not set(lines["test"]) & set(lines["train"]), "a test paragraph is also in train"
    assert sum(len(t.encode()) for t in map("\n".join, lines.values())) > 1_000_000
    assert all(len(line.split()) >= english.MIN_WORDS for split in lines.values() for line in split)
    assert check_dataset("builtin:english") is None and provenance("builtin:english") == source
    assert provenance("builtin:synthetic") is None


def test_paragraphs_follow_the_book_and_leave_out_listings_and_index_terms(tmp_path):
    words = "one two three four five six seven eight nine ten eleven twelve"
    (tmp_path / "index.html").write_text(
        '<html><head><link rel="next" href="a.html#top" /></head><body>'
        f'<div class="para">Front matter that is prose: {words}.</div>'
        '<div class="para">Too short.</div></body></html>')
    (tmp_path / "a.html").write_text(
        '<html><head><link rel="next" href="b.html" /></head><body>'
        f'<div class="para">Run <span class="indexterm"><span>hidden term</span></span>the command {words}:'
        '<pre class="screen">$ apt-get install x</pre> and then it works. → https://example.org</div>'
        f'<p class="title">A title, {words}.</p></body></html>')
    (tmp_path / "b.html").write_text(f'<html><body><div class="para">The   last\n page, {words}…</div></body></html>')
    assert english.paragraphs(tmp_path) == [
        f"Front matter that is prose: {words}.",
        f"Run the command {words}: and then it works.",
        f"The last page, {words}…",
    ]


def test_sphinx_paragraphs_come_from_the_main_body_only_with_their_inline_code(tmp_path):
    words = "one two three four five six seven eight nine ten eleven twelve"
    (tmp_path / "index.html").write_text(
        '<html><head><link rel="next" href="a.html" /></head><body>'
        f'<div class="sphinxsidebar"><p>Navigation, not the book: {words}.</p></div>'
        f'<div class="body" role="main"><p>Run <code class="docutils literal"><span class="pre">dpkg</span></code> '
        f'to see {words}.</p><table><tr><td><p>In a table {words}.</p></td></tr></table></div>'
        f'<div class="footer"><p>Copyright and such, {words}.</p></div></body></html>')
    (tmp_path / "a.html").write_text(f'<html><body><div role="main"><p>Last page, {words}!</p></div></body></html>')
    assert english.paragraphs(tmp_path, "sphinx") == [f"Run dpkg to see {words}.", f"In a table {words}.",
                                                      f"Last page, {words}!"]
