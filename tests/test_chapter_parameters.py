"""A chapter's parameters cell, run with an unknown task, stops at once with an error naming it."""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
TASK_LINE = re.compile(r'^TASK = "[a-z]+"$', re.MULTILINE)
CHAPTERS = sorted(path.name for path in BOOK.glob("0*.md") if TASK_LINE.search(path.read_text()))


def parameters_cell(chapter: str) -> str:
    cells = [cell for cell in jupytext.read(BOOK / chapter).cells
             if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"{chapter} needs exactly one cell tagged parameters"
    return cells[0].source


def test_the_analysis_chapters_take_a_task_parameter():
    assert {"03-manifold.md", "04-three-regions.md", "05-split.md"} <= set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_an_unknown_task_is_named_before_any_work(chapter: str, monkeypatch: pytest.MonkeyPatch):
    source = parameters_cell(chapter)
    assert TASK_LINE.search(source), f"{chapter}: the task is set in the parameters cell"
    monkeypatch.setenv("SPLITLIB_PROFILE", "cpu")
    with pytest.raises(ValueError, match="unknown task 'no-such-task'; choose one of psychopathy"):
        exec(TASK_LINE.sub('TASK = "no-such-task"', source), {})
