"""Execute the book's chapters with a cache that knows about the package, and render the HTML.

jupyter-book's own cache keys a notebook on its code cells only, so a change in splitlib or a
switch of profile would silently serve stale outputs. Here a chapter's executed notebook is keyed
on the chapter's whole text, every source file of the package, the project's data folder and the
profile; each profile has its own folders:

    _notebooks/<profile>/<chapter>.ipynb   executed notebooks (nbmake runs here)
    _build/<profile>/site/                 the book as Sphinx sees it (executed chapters staged in)
    _build/html (cpu) or _build/html-<profile>   the HTML

Usage: python -m splitlib.build {prepare,record,html} [--profile NAME] [--force]
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import stable_hash
from .data import DATA_ENV
from .profiles import DEFAULT_PROFILE, get_profile

if TYPE_CHECKING:
    from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parent.parent
STATUS_MARKER = "<!-- chapter-times -->"
FINGERPRINTED = ("splitlib", "data", "pyproject.toml")


def chapters(root: Path = ROOT) -> list[Path]:
    """The executable chapters: MyST-markdown files under book/ with a kernelspec in their front matter."""
    return sorted(p for p in (root / "book").glob("*.md") if "kernelspec:" in _front_matter(p))


def _front_matter(path: Path) -> str:
    text = path.read_text()
    if not text.startswith("---\n"):
        return ""
    end = text.find("\n---", 4)
    return text[4:end] if end > 0 else ""


def package_fingerprint(root: Path = ROOT) -> str:
    """A hash of every file an executed chapter depends on besides its own text."""
    digest = hashlib.sha256()
    for entry in FINGERPRINTED:
        base = root / entry
        files = sorted(base.rglob("*")) if base.is_dir() else [base]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def execution_key(chapter: Path, profile: str, root: Path = ROOT) -> str:
    """What determines a chapter's outputs: its text, the package, the data and the profile."""
    return stable_hash({
        "chapter": chapter.read_text(),
        "package": package_fingerprint(root),
        "profile": profile,
        "data_folder": os.environ.get(DATA_ENV, ""),  # real data (checksummed files) or the bundled sets
    })


def notebook_dir(profile: str, root: Path = ROOT) -> Path:
    return root / "_notebooks" / profile


def prepare(profile: str, root: Path = ROOT, force: bool = False) -> list[Path]:
    """Convert stale chapters to unexecuted notebooks; return the notebooks that must run."""
    import jupytext
    import nbformat

    out = notebook_dir(profile, root)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {chapter.stem for chapter in chapters(root)}
    for leftover in out.glob("*.ipynb"):
        if leftover.stem not in wanted:
            leftover.unlink()
    stale = []
    for chapter in chapters(root):
        target = out / f"{chapter.stem}.ipynb"
        key = execution_key(chapter, profile, root)
        if not force and target.exists() and _stamp(nbformat.read(target, as_version=4)).get("key") == key:
            continue
        notebook = jupytext.read(chapter)
        notebook.metadata["splitlib"] = {"pending_key": key, "profile": profile}
        nbformat.write(notebook, target)
        stale.append(target)
    return stale


def _stamp(notebook: NotebookNode) -> dict:
    return dict(notebook.metadata.get("splitlib", {}))


def record(profile: str, root: Path = ROOT) -> list[str]:
    """Stamp each freshly executed notebook with its key and execution time.

    A notebook is stamped only if every code cell ran and none raised; an unstamped notebook is
    executed again next time.
    """
    import nbformat

    stamped = []
    for target in sorted(notebook_dir(profile, root).glob("*.ipynb")):
        notebook = nbformat.read(target, as_version=4)
        stamp = _stamp(notebook)
        if "pending_key" not in stamp:
            continue
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        if any(cell.get("execution_count") is None for cell in code) or any(
            output.get("output_type") == "error" for cell in code for output in cell.get("outputs", [])
        ):
            raise RuntimeError(f"{target} was not executed cleanly; run its chapter and read the error")
        notebook.metadata["splitlib"] = {
            "key": stamp["pending_key"],
            "profile": profile,
            "seconds": round(execution_seconds(notebook), 1),
            "executed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
        nbformat.write(notebook, target)
        stamped.append(target.stem)
    return stamped


def execution_seconds(notebook: NotebookNode) -> float:
    """Wall time from the first cell's start to the last cell's reply (nbclient's timing metadata)."""
    starts, ends = [], []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            starts.append(dt.datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00")))
            ends.append(dt.datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00")))
    return (max(ends) - min(starts)).total_seconds() if starts else float("nan")


def status_table(profile: str, root: Path = ROOT) -> str:
    """A Markdown table of each chapter's execution time, for the status page."""
    import nbformat

    rows = ["| chapter | profile | execution time (s) | executed |", "| --- | --- | ---: | --- |"]
    total = 0.0
    for chapter in chapters(root):
        notebook = nbformat.read(notebook_dir(profile, root) / f"{chapter.stem}.ipynb", as_version=4)
        stamp = _stamp(notebook)
        total += stamp["seconds"]
        rows.append(f"| {chapter.stem} | {profile} | {stamp['seconds']:.1f} | {stamp['executed_at']} |")
    rows.append(f"| **all chapters** | {profile} | **{total:.1f}** | |")
    return "\n".join(rows)


def stage(profile: str, root: Path = ROOT) -> Path:
    """Lay out the book for Sphinx: pages from book/, chapters as their executed notebooks."""
    import nbformat

    site = root / "_build" / profile / "site"
    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(root / "book", site / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(root / name, site / name)
    for chapter in chapters(root):
        executed = notebook_dir(profile, root) / f"{chapter.stem}.ipynb"
        if not executed.exists() or _stamp(nbformat.read(executed, as_version=4)).get("key") != execution_key(
            chapter, profile, root
        ):
            raise RuntimeError(f"{chapter.name} has no up-to-date executed notebook for profile {profile!r}")
        (site / "book" / chapter.name).unlink()
        shutil.copy(executed, site / "book" / executed.name)
    status = site / "book" / "status.md"
    if status.exists():
        status.write_text(status.read_text().replace(STATUS_MARKER, status_table(profile, root)))
    _disable_execution(site / "_config.yml")
    return site


def _disable_execution(config_path: Path) -> None:
    import yaml

    config = yaml.safe_load(config_path.read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"  # executed and keyed above
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def html_dir(profile: str, root: Path = ROOT) -> Path:
    return root / "_build" / ("html" if profile == DEFAULT_PROFILE else f"html-{profile}")


def html(profile: str, root: Path = ROOT) -> Path:
    """Stage the book and build its HTML with Sphinx warnings as errors."""
    site = stage(profile, root)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "jupyter-book"), "config", "sphinx", str(site)], check=True)
    out = html_dir(profile, root)
    if out.exists():
        shutil.rmtree(out)  # no page or image of an earlier build survives
    doctrees = root / "_build" / profile / "doctrees"
    subprocess.run(
        [str(bin_dir / "sphinx-build"), "-W", "--keep-going", "-q", "-E", "-b", "html", "-d", str(doctrees),
         str(site), str(out)],
        check=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitlib.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "record", "html"))
    parser.add_argument("--profile", default=None, help="defaults to $SPLITLIB_PROFILE, else cpu")
    parser.add_argument("--force", action="store_true", help="prepare: re-run every chapter")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile).name
    if args.step == "prepare":
        for path in prepare(profile, force=args.force):
            print(path.relative_to(ROOT))  # the Makefile hands these to nbmake
    elif args.step == "record":
        for stem in record(profile):
            print(f"recorded {stem}", file=sys.stderr)
    else:
        print(f"HTML in {html(profile).relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
