"""The book as read: every chapter teaches (summary, goals, exercises with folded solutions), the
paper's numbering is always named as the paper's, the glossary covers the names the code uses and
the API page covers the public API. Text checks only: nothing here executes a chapter."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import splitlib
from splitlib import fit, geometry
from splitlib.build import chapters
from splitlib.profiles import PAIR_TYPES
from splitlib.sweep import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = chapters(ROOT)

CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```[ \t]*$", re.S | re.M)
GLUE_FIGURE = re.compile(r"^```\{glue:figure\}.*?^```[ \t]*$", re.S | re.M)
SOLUTION = re.compile(r"^```\{admonition\} Solution[ \t]*\n:class: dropdown[ \t]*$", re.M)


def prose(path: Path) -> str:
    """The Markdown a reader reads: front matter and code cells removed."""
    text = path.read_text()
    if text.startswith("---\n"):
        text = text[text.index("\n---", 4) + 4 :]
    return CODE_CELL.sub("", text)


def section(text: str, heading: str) -> str:
    """The body of the level-2 section `heading` ('' if there is none)."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return match.group(1) if match else ""


def test_there_are_chapters():
    assert len(CHAPTERS) >= 5


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_ends_with_summary_goals_and_exercises(chapter: Path):
    text = prose(chapter)
    for heading in ("Summary", "Learning goals", "Exercises"):
        assert section(text, heading).strip(), f"{chapter.name} has no '## {heading}' section"
    exercises = section(text, "Exercises")
    asked = re.findall(r"^\*\*Exercise \d+", exercises, re.M)
    solved = SOLUTION.findall(exercises)
    assert len(asked) >= 2, f"{chapter.name}: fewer than two exercises"
    assert len(solved) == len(asked), f"{chapter.name}: {len(asked)} exercises but {len(solved)} dropdown solutions"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_says_what_it_shows(chapter: Path):
    assert "**What this chapter shows.**" in prose(chapter), f"{chapter.name} does not open with what it shows"


def test_chapter_3_introduces_the_methods_before_using_them():
    text = prose(BOOK / "03-manifold.md")
    box = text.index("Methods at a glance")
    assert box < text.index("## ")
    for name in ("DiffMean", "SFT", "RePS", "SPLIT", "D_u"):
        assert name in text[box : text.index("## ")], f"the methods box does not introduce {name}"


PAGES = [*CHAPTERS, BOOK / "intro.md", BOOK / "glossary.md", BOOK / "api.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_the_papers_numbering_is_always_named_as_the_papers(page: Path):
    # Figure captions live inside {glue:figure} directives, next to the code that makes them;
    # they are left out here, and the plain text must follow the convention.
    text = " ".join(GLUE_FIGURE.sub("", prose(page)).split())
    bare = [m.group(0) for m in re.finditer(r"(\S+ )?(\S+ )?\b(Eqs?\. \d+|Assumptions? 4\.\d)", text)
            if not re.search(r"paper('s)? $", (m.group(1) or "") + (m.group(2) or ""), re.I)]
    assert not bare, f"{page.name} cites the paper's numbering without saying so: {bare}"


def _code_names() -> set[str]:
    derived = fit.derived_quantities(fit.Fit("preference", dict.fromkeys(fit.PREF_PARAMS, 1.0), 1.0,
                                             np.array([-1.0, 0.0, 1.0]), np.zeros(3)))
    return {*splitlib.FORMS, *splitlib.METHODS, *splitlib.TASKS, *COLUMNS, *fit.PREF_PARAMS, *fit.UTIL_PARAMS,
            *(name for name in derived if not name.startswith("slope")), *geometry.DISTANCES,
            *geometry.PROJECTIONS, *PAIR_TYPES, "lambda_p", "lambda_n", "gamma", "theta", "accuracy"}


@pytest.mark.parametrize("name", sorted(_code_names()))
def test_the_glossary_names_what_the_code_names(name: str):
    glossary = (BOOK / "glossary.md").read_text()
    assert f"`{name}`" in glossary or f'`"{name}"`' in glossary, f"the glossary does not mention `{name}`"


def test_the_glossary_never_calls_the_multiplier_a_factor():
    entry = next(line for line in (BOOK / "glossary.md").read_text().splitlines() if line.startswith("| multiplier |"))
    assert "says *multiplier* only" in entry


def test_the_api_page_covers_the_public_api():
    page = (BOOK / "api.md").read_text()
    for name in splitlib.__all__:
        assert f"splitlib.{name}" in page, f"api.md does not document splitlib.{name}"
    # fit and interop are listed member by member (their module docstrings are summarised by hand)
    for module in (fit, splitlib.interop):
        public = [name for name, value in vars(module).items()
                  if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
                  and callable(value)]
        for name in public:
            assert f"{module.__name__}.{name}" in page, f"api.md does not document {module.__name__}.{name}"


def test_the_reference_pages_are_in_the_table_of_contents():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for entry in toc["chapters"]]
    assert {"book/glossary", "book/api"} <= set(files)
    assert files.index("book/glossary") > max(files.index(c.relative_to(ROOT).with_suffix("").as_posix())
                                               for c in CHAPTERS)


def test_autodoc_is_configured():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx.ext.autodoc" in config["sphinx"]["extra_extensions"]
