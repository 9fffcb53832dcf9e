"""The page checks themselves: a tiny hand-written site where each page breaks one rule, and a clean page."""
from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Iterator

import pytest

from splitlib import browse, build

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{name}</title>{head}</head>
<body style="margin: 0"><main><article class="bd-article" style="width: 700px; margin: 0 auto">
<section id="body">{body}</section></article></main></body></html>"""

PAGES = {  # name: (head, body, the checks that must fail)
    "clean": (
        '<script defer src="_static/mathjax/tex-mml-chtml.js"></script>',
        '<h1 id="top">Clean: \\(x^2\\)</h1><p>Inline \\(\\Delta h\\) and display</p>'
        "<div>$$\\sum_i x_i$$</div><div>\\[\\begin{align} a &= b \\\\ c &= d \\end{align}\\]</div>"
        '<img src="red.png" width="40"><img src="blue.png" width="40">'
        '<table><tr><td>narrow</td></tr></table><a href="#top">up</a> <a href="anchors.html#here">there</a>'
        '<a href="https://example.com/">elsewhere</a>',
        set(),
    ),
    "duplicate": ("", '<img src="red.png"><p>again:</p><img src="red-copy.png">', {"duplicate_images"}),
    "external": ('<script src="http://cdn.example.com/lib.js"></script>', "<p>text</p>", {"external_requests"}),
    "rawmath": ("", "<p>An equation: $$ x^2 $$</p>", {"raw_math"}),
    "matherror": ('<script defer src="_static/mathjax/tex-mml-chtml.js"></script>', "<p>\\(\\frac{1}\\)</p>",
                  {"raw_math"}),
    "anchors": ("", '<p id="here"><a href="#nowhere">a</a> <a href="clean.html#missing">b</a> '
                '<a href="gone.html">c</a>', {"broken_links"}),
    "missing-image": ("", '<img src="gone.png">', {"unloaded_images", "broken_links"}),
    "wide-table": ("", '<div style="overflow-x: auto"><table style="width: 2000px"><tr><td>wide</td></tr>'
                   "</table></div>", {"wide_blocks"}),
    "wide-page": ("", '<p>text</p></section></article><div style="width: 3000px">banner</div><section>',
                  {"page_width"}),
}


def png(rgb: tuple[int, int, int]) -> bytes:
    """A valid 1x1 PNG of one colour, written by hand (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes([0, *rgb]))) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, browser: browse.Browser) -> Iterator[browse.Book]:
    site = tmp_path_factory.mktemp("site")
    for name, (head, body, _) in PAGES.items():
        (site / f"{name}.html").write_text(PAGE.format(name=name, head=head, body=body))
    (site / "red.png").write_bytes(png((255, 0, 0)))
    (site / "red-copy.png").write_bytes(png((255, 0, 0)))  # another name, the same picture
    (site / "blue.png").write_bytes(png((0, 0, 255)))
    shutil.copytree(build.mathjax_source(), site / "_static" / "mathjax")  # the book's offline MathJax
    with browse.serve(site) as base_url:
        yield browse.Book(site, base_url, browser, site / "_screenshots")


@pytest.mark.parametrize("name", list(PAGES))
def test_each_check_fails_exactly_where_its_rule_is_broken(tiny: browse.Book, name: str) -> None:
    snap = tiny.visit(f"{name}.html")
    problems = {check: run(snap) for check, run in browse.CHECKS.items()}
    failing = {check for check, found in problems.items() if found}
    assert failing == PAGES[name][2], problems
    for found in problems.values():
        assert all(message.startswith(f"{name}.html: ") for message in found)


def test_messages_name_the_element(tiny: browse.Book) -> None:
    assert "img[src=red-copy.png]" in browse.duplicate_images(tiny.visit("duplicate.html"))[0]
    assert "http://cdn.example.com/lib.js" in browse.external_requests(tiny.visit("external.html"))[0]
    assert "p in section #body" in browse.raw_math(tiny.visit("rawmath.html"))[0]
    assert "MathJax error" in browse.raw_math(tiny.visit("matherror.html"))[0]
    broken = "\n".join(browse.broken_links(tiny.visit("anchors.html")))
    assert "#nowhere" in broken and "#missing in /clean.html" in broken and "no page /gone.html" in broken
    assert "table" in browse.wide_blocks(tiny.visit("wide-table.html"))[0]
    assert "div" in browse.page_width(tiny.visit("wide-page.html"))[0]


def test_the_clean_page_rendered_its_math_and_left_a_screenshot(tiny: browse.Book) -> None:
    snap = tiny.visit("clean.html")
    assert snap.requests and all(url.startswith(tiny.base_url) for url in snap.requests)
    assert any("mathjax/output/chtml/fonts" in url for url in snap.requests), "MathJax did not typeset"
    assert (tiny.site / "_screenshots" / "clean.png").stat().st_size > 1000
