"""Executed chapters are keyed on the chapter, the package, the data and the profile."""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import nbformat
import pytest

from splitlib import build

CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
x = 1 + 1
```
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "splitlib").mkdir()
    (tmp_path / "splitlib" / "core.py").write_text("VALUE = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "set.jsonl").write_text('{"q": 1}\n')
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")  # a plain page, not a chapter
    (tmp_path / "book" / "ch1.md").write_text(CHAPTER)
    return tmp_path


def _execute(notebook_path: Path, error: bool = False) -> None:
    """Stand in for nbmake: give each code cell a count, timing and (optionally) an error."""
    notebook = nbformat.read(notebook_path, as_version=4)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for count, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.metadata["execution"] = {
            "iopub.execute_input": start.isoformat(),
            "shell.execute_reply": (start + dt.timedelta(seconds=2.5)).isoformat(),
        }
        cell.outputs = [nbformat.v4.new_output("error", ename="E", evalue="boom", traceback=[])] if error else []
    nbformat.write(notebook, notebook_path)


def _run(project: Path, profile: str = "cpu") -> list[str]:
    stale = build.prepare(profile, root=project)
    for path in stale:
        _execute(path)
    build.record(profile, root=project)
    return [p.stem for p in stale]


def test_only_chapters_with_a_kernel_are_executed(project):
    assert [c.name for c in build.chapters(project)] == ["ch1.md"]


def test_an_unchanged_book_is_not_executed_again(project):
    assert _run(project) == ["ch1"]
    assert _run(project) == []
    stamp = nbformat.read(project / "_notebooks" / "cpu" / "ch1.ipynb", as_version=4).metadata["splitlib"]
    assert stamp["seconds"] == 2.5 and stamp["profile"] == "cpu"


@pytest.mark.parametrize(
    "change",
    [
        lambda p: (p / "splitlib" / "core.py").write_text("VALUE = 2\n"),
        lambda p: (p / "splitlib" / "new_module.py").write_text("\n"),
        lambda p: (p / "data" / "set.jsonl").write_text('{"q": 2}\n'),
        lambda p: (p / "pyproject.toml").write_text("[project]\nname = 'y'\n"),
        lambda p: (p / "book" / "ch1.md").write_text(CHAPTER + "\nMore prose.\n"),
    ],
    ids=["package source", "new package file", "data", "dependencies", "chapter text"],
)
def test_a_change_re_runs_the_chapter(project, change):
    _run(project)
    change(project)
    assert _run(project) == ["ch1"]


def test_the_data_a_chapter_reads_keys_it_not_the_folder_it_is_in(project, monkeypatch, tmp_path):
    """Real data (by checksum) or the bundled sets re-run a chapter; another folder with the same files does not."""
    from splitlib import data

    content = b'{"statement": "x"}\n'
    remote = data.RemoteFile("sets/x.jsonl", "owner/repo", "0" * 40, "x.jsonl", hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(data, "REMOTE_FILES", {"psychopathy": remote})
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPLITLIB_DATA", raising=False)
    _run(project)
    for folder in ("one", "two"):
        (tmp_path / folder / "sets").mkdir(parents=True)
        (tmp_path / folder / "sets" / "x.jsonl").write_bytes(content)
    monkeypatch.setenv("SPLITLIB_DATA", str(tmp_path / "one"))
    assert _run(project) == ["ch1"]  # the real file instead of the bundled set
    monkeypatch.setenv("SPLITLIB_DATA", str(tmp_path / "two"))
    assert _run(project) == []  # the same bytes elsewhere
    monkeypatch.setenv("SPLITLIB_DATA", "/somewhere/else")
    assert _run(project) == ["ch1"]  # back to the bundled set


def test_a_profile_file_has_its_own_notebooks_keyed_on_its_contents(project, tmp_path):
    profile = tmp_path / "mine.toml"
    profile.write_text("layer = 3\n")
    _run(project, "cpu")
    assert _run(project, str(profile)) == ["ch1"] and (project / "_notebooks" / "mine" / "ch1.ipynb").exists()
    assert _run(project, str(profile)) == [] and _run(project, "cpu") == []
    profile.write_text("layer = 4\n")
    assert _run(project, str(profile)) == ["ch1"] and _run(project, "cpu") == []
    assert build.html_dir(str(profile), project) == project / "_build" / "html-mine"


def test_each_profile_has_its_own_executed_notebooks(project):
    _run(project, "cpu")
    assert _run(project, "qwen2.5-7b-it") == ["ch1"]
    assert _run(project, "cpu") == []


def test_force_re_runs_everything(project):
    _run(project)
    assert [p.stem for p in build.prepare("cpu", root=project, force=True)] == ["ch1"]


def test_a_failed_chapter_is_never_stamped(project):
    (stale,) = build.prepare("cpu", root=project)
    _execute(stale, error=True)
    with pytest.raises(RuntimeError, match="was not executed cleanly"):
        build.record("cpu", root=project)
    assert build.prepare("cpu", root=project) == [stale]


def test_staging_refuses_a_stale_notebook(project):
    shutil.copy(Path(__file__).resolve().parent.parent / "_config.yml", project / "_config.yml")
    (project / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/ch1\n")
    _run(project)
    site = build.stage("cpu", root=project)
    assert (site / "book" / "ch1.ipynb").exists() and not (site / "book" / "ch1.md").exists()
    (project / "splitlib" / "core.py").write_text("VALUE = 3\n")
    with pytest.raises(RuntimeError, match="ch1.md has no up-to-date executed notebook"):
        build.stage("cpu", root=project)


def test_a_profile_files_book_is_staged_with_its_status_table(project, tmp_path):
    """`make book` with SPLITLIB_PROFILE=<file>: the HTML step stages the file's own notebooks and
    fills the status page's table from them (it once looked the profile up again by its name)."""
    shutil.copy(Path(__file__).resolve().parent.parent / "_config.yml", project / "_config.yml")
    (project / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/ch1\n"
                                      "  - file: book/status\n")
    (project / "book" / "status.md").write_text(f"# Status\n\n{build.STATUS_MARKER}\n")
    profile = tmp_path / "mine.toml"
    profile.write_text('inherit = "cpu"\ndtype = "bfloat16"\n')
    _run(project, str(profile))
    site = build.stage(str(profile), root=project)
    assert (site / "book" / "ch1.ipynb").exists()
    assert "| [A chapter](ch1.ipynb) | mine | 2.5 |" in (site / "book" / "status.md").read_text()


def _glue(name: str, mime: str, value: str) -> nbformat.NotebookNode:
    """An output as myst-nb's `glue` writes it."""
    prefix = "application/papermill.record/"
    return nbformat.v4.new_output("display_data", data={f"{prefix}{mime}": value},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})


def test_the_results_file_holds_every_glued_value_with_its_chapter_and_profile(project):
    import json

    (stale,) = build.prepare("cpu", root=project)
    _execute(stale)
    notebook = nbformat.read(stale, as_version=4)
    notebook.cells[-1].outputs = [_glue("accuracy", "text/plain", "'93 %'"), _glue("n_pairs", "text/plain", "40"),
                                  _glue("fig_curve", "image/png", "iVBOR"), _glue("table", "text/html", "<table/>")]
    nbformat.write(notebook, stale)
    build.record("cpu", root=project)
    results = json.loads(build.results_path("cpu", root=project).read_text())
    assert results == [
        {"chapter": "ch1", "profile": "cpu", "name": "accuracy", "kind": "text", "value": "93 %"},
        {"chapter": "ch1", "profile": "cpu", "name": "n_pairs", "kind": "text", "value": "40"},
        {"chapter": "ch1", "profile": "cpu", "name": "fig_curve", "kind": "figure"},
        {"chapter": "ch1", "profile": "cpu", "name": "table", "kind": "table"},
    ]
    assert "results.json" in build.status_table("cpu", root=project)
    assert "[A chapter](ch1.ipynb)" in build.status_table("cpu", root=project)
