"""Every page of the built book, as a reader sees it at 1400 px in Chromium: one test per page and check."""
from __future__ import annotations

import pytest

from splitlib import browse


@pytest.mark.parametrize("check", list(browse.CHECKS))
def test_page(book: browse.Book, page: str, check: str) -> None:
    problems = browse.CHECKS[check](book.visit(page))
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)
