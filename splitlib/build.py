"""Execute the book's chapters with a cache that knows about the package, and render the HTML.

jupyter-book's own cache keys a notebook on its code cells only, so a change in splitlib or a
switch of profile would silently serve stale outputs. Here a chapter's executed notebook is keyed
on the chapter's whole text, every source file of the package and the project's data folder, every
field of the resolved profile (a built-in or a profile file) and which real data files it will
read (by checksum); each profile has its own folders, named after it:

    _notebooks/<profile>/<chapter>.ipynb   executed notebooks (nbmake runs here)
    _notebooks/<profile>/results.json      every value the chapters glue into their pages
    _build/<profile>/site/                 the book as Sphinx sees it (executed chapters staged in)
    _build/html (cpu) or _build/html-<profile>   the HTML, with MathJax served from its own _static/

Usage: python -m splitlib.build {prepare,record,html,timeout,notebook-dir,html-dir} [--profile NAME|FILE] [--force]
(`timeout` prints the profile's per-cell timeout for nbmake; the two -dir steps print its folders.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import data
from .cache import stable_hash, write_atomically
from .profiles import DEFAULT_PROFILE, DeviceError, Profile, ProfileError, get_profile, profile_toml

if TYPE_CHECKING:
    from nbformat import NotebookNode

ProfileSpec = str | Profile  # a profile, a built-in profile's name, or a profile file's path

ROOT = Path(__file__).resolve().parent.parent
STATUS_MARKER = "<!-- chapter-times -->"
RESULTS_FILE = "results.json"  # every glued value of a profile's chapters, beside its notebooks
FINGERPRINTED = ("splitlib", "data", "pyproject.toml", "constraints.txt")
# MathJax 3.2.2 as shipped by this pinned package (pyproject's book extras); _config.yml's
# mathjax_path points into the copy `html` puts in the site, so equations render offline.
MATHJAX_PACKAGE = "sphinx-mathjax-offline"
MATHJAX_FILES = "sphinx-mathjax-offline/static/mathjax"


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


def resolved(profile: ProfileSpec) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def execution_key(chapter: Path, profile: ProfileSpec, root: Path = ROOT) -> str:
    """What determines a chapter's outputs: its text, the package, every field of the profile and
    the real data files it will read."""
    chosen = resolved(profile)
    return stable_hash({
        "chapter": chapter.read_text(),
        "package": package_fingerprint(root),  # splitlib/, data/ (the bundled sets), pyproject, constraints
        "profile": {"name": chosen.name, "fields": profile_toml(chosen)},
        "data": data_state(),
    })


def data_state() -> dict[str, str]:
    """The pinned sha256 of each real data file a chapter would read now, or "absent" where there
    is none at hand (chapters then fall back to the bundled sets); found without a download."""
    return {name: remote.sha256 if data.local_real_file(name) else "absent"
            for name, remote in data.REMOTE_FILES.items()}


def fetch_data(profile: Profile) -> None:
    """Get every real data file before any chapter runs, so that the keys name the data the chapters
    will read. A paper profile without its data stops here, with both ways to get it; otherwise each
    missing file is reported with why, and the chapters use the bundled sets."""
    missing = {}
    for name in data.REMOTE_FILES:
        try:
            data.real_file(name)
        except FileNotFoundError as error:
            missing[name] = str(error)
    needed = [name for name in missing if name in data.TASKS]
    if profile.paper_setup and needed:
        raise FileNotFoundError(f"profile {profile.name!r} runs at the paper's sizes and needs the real data of "
                                f"{', '.join(needed)}. {missing[needed[0]]}")
    for why in missing.values():
        print(f"splitlib: {why} Until then the chapters use the bundled sets.", file=sys.stderr)


def notebook_dir(profile: ProfileSpec, root: Path = ROOT) -> Path:
    return root / "_notebooks" / resolved(profile).name


def prepare(profile: ProfileSpec, root: Path = ROOT, force: bool = False) -> list[Path]:
    """Convert stale chapters to unexecuted notebooks; return the notebooks that must run."""
    chosen = resolved(profile)
    out = notebook_dir(chosen, root)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {chapter.stem for chapter in chapters(root)}
    for leftover in out.glob("*.ipynb"):
        if leftover.stem not in wanted:
            leftover.unlink()
    targets = [(chapter, out / f"{chapter.stem}.ipynb") for chapter in chapters(root)]
    return [target for chapter, target in targets if prepare_chapter(chapter, chosen, target, root, force)]


def prepare_chapter(chapter: Path, profile: ProfileSpec, target: Path, root: Path = ROOT, force: bool = False) -> bool:
    """Write `chapter` as an unexecuted notebook at `target`, unless an executed one with the same
    key is there already; True if it must run."""
    import jupytext
    import nbformat

    key = execution_key(chapter, profile, root)
    if not force and target.exists() and _stamp(nbformat.read(target, as_version=4)).get("key") == key:
        return False
    notebook = jupytext.read(chapter)
    notebook.metadata["splitlib"] = {"pending_key": key, "profile": resolved(profile).name}
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    return True


def _stamp(notebook: NotebookNode) -> dict:
    return dict(notebook.metadata.get("splitlib", {}))


def record(profile: ProfileSpec, root: Path = ROOT) -> list[str]:
    """Stamp each freshly executed notebook with its key and execution time, then write the
    profile's results file (`write_results`).

    A notebook is stamped only if every code cell ran and none raised; an unstamped notebook is
    executed again next time.
    """
    stamped = [target.stem for target in sorted(notebook_dir(profile, root).glob("*.ipynb"))
               if record_notebook(target)]
    write_results(profile, root)
    return stamped


def record_notebook(target: Path) -> bool:
    """Stamp one executed notebook (see `record`); False if it was not waiting for a stamp."""
    import nbformat

    notebook = nbformat.read(target, as_version=4)
    stamp = _stamp(notebook)
    if "pending_key" not in stamp:
        return False
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if any(cell.get("execution_count") is None for cell in code) or any(
        output.get("output_type") == "error" for cell in code for output in cell.get("outputs", [])
    ):
        raise RuntimeError(f"{target} was not executed cleanly; run its chapter and read the error")
    notebook.metadata["splitlib"] = {
        "key": stamp["pending_key"],
        "profile": stamp["profile"],
        "seconds": round(execution_seconds(notebook), 1),
        "executed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    nbformat.write(notebook, target)
    return True


def execution_seconds(notebook: NotebookNode) -> float:
    """Wall time from the first cell's start to the last cell's reply (nbclient's timing metadata)."""
    starts, ends = [], []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            starts.append(dt.datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00")))
            ends.append(dt.datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00")))
    return (max(ends) - min(starts)).total_seconds() if starts else float("nan")


def glued_values(notebook: NotebookNode) -> list[dict[str, str]]:
    """Each value a notebook glues (myst-nb's `glue`), as the page shows it: name, kind (text,
    table or figure) and, for text, the value."""
    import ast

    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None:
                continue
            shown = {mime.rsplit("/", 2)[-2] + "/" + mime.rsplit("/", 1)[-1]: value
                     for mime, value in output.get("data", {}).items()}
            entry = {"name": name}
            if any(mime.startswith("image/") for mime in shown):
                entry["kind"] = "figure"
            elif "text/html" in shown:
                entry["kind"] = "table"
            else:
                text = shown.get("text/plain", "")
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    value = text
                entry.update(kind="text", value=str(value))
            found.append(entry)
    return found


def results_path(profile: ProfileSpec, root: Path = ROOT) -> Path:
    return notebook_dir(profile, root) / RESULTS_FILE


def write_results(profile: ProfileSpec, root: Path = ROOT) -> Path:
    """Every value the chapters glue into their pages, with its name, chapter and profile, in one
    JSON file per profile, so two builds or two profiles can be compared and a number cited.

    Written atomically from the executed notebooks that exist."""
    import json

    import nbformat

    name = resolved(profile).name
    entries = []
    for chapter in chapters(root):
        executed = notebook_dir(profile, root) / f"{chapter.stem}.ipynb"
        if executed.exists():
            notebook = nbformat.read(executed, as_version=4)
            entries += [{"chapter": chapter.stem, "profile": name, **entry} for entry in glued_values(notebook)]
    target = results_path(profile, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, (json.dumps(entries, indent=1, ensure_ascii=False) + "\n").encode())
    return target


def chapter_title(chapter: Path) -> str:
    """The first top-level heading of a chapter's text."""
    for line in chapter.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return chapter.stem


def status_table(profile: ProfileSpec, root: Path = ROOT) -> str:
    """A Markdown table of each chapter's execution time, for the status page."""
    import nbformat

    profile = resolved(profile)  # a profile file's name alone would not find it again
    rows = ["| chapter | profile | execution time (s) | executed |", "| --- | --- | ---: | --- |"]
    total = 0.0
    for chapter in chapters(root):
        notebook = nbformat.read(notebook_dir(profile, root) / f"{chapter.stem}.ipynb", as_version=4)
        stamp = _stamp(notebook)
        total += stamp["seconds"]
        rows.append(f"| [{chapter_title(chapter)}]({chapter.stem}.ipynb) | {profile.name} | {stamp['seconds']:.1f} "
                    f"| {stamp['executed_at']} |")
    rows.append(f"| **all chapters** | {profile.name} | **{total:.1f}** | |")
    if results_path(profile, root).exists():
        rows.append(f"\nEvery value the chapters glue into their text, with its name and chapter: "
                    f"{{download}}`{RESULTS_FILE} <{RESULTS_FILE}>`.")
    return "\n".join(rows)


def stage(profile: ProfileSpec, root: Path = ROOT) -> Path:
    """Lay out the book for Sphinx: pages from book/, chapters as their executed notebooks."""
    import nbformat

    profile = resolved(profile)
    site = root / "_build" / profile.name / "site"
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
            raise RuntimeError(f"{chapter.name} has no up-to-date executed notebook for profile {profile.name!r}")
        (site / "book" / chapter.name).unlink()
        shutil.copy(executed, site / "book" / executed.name)
    status = site / "book" / "status.md"
    if results_path(profile, root).exists():
        shutil.copy(results_path(profile, root), site / "book" / RESULTS_FILE)
    if status.exists():
        status.write_text(status.read_text().replace(STATUS_MARKER, status_table(profile, root)))
    _disable_execution(site / "_config.yml")
    return site


def _disable_execution(config_path: Path) -> None:
    import yaml

    config = yaml.safe_load(config_path.read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"  # executed and keyed above
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def html_dir(profile: ProfileSpec, root: Path = ROOT) -> Path:
    name = resolved(profile).name
    return root / "_build" / ("html" if name == DEFAULT_PROFILE else f"html-{name}")


def html(profile: ProfileSpec, root: Path = ROOT) -> Path:
    """Stage the book and build its HTML with Sphinx warnings as errors."""
    profile = resolved(profile)
    site = stage(profile, root)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "jupyter-book"), "config", "sphinx", str(site)], check=True)
    out = html_dir(profile, root)
    if out.exists():
        shutil.rmtree(out)  # no page or image of an earlier build survives
    doctrees = root / "_build" / profile.name / "doctrees"
    subprocess.run(
        [str(bin_dir / "sphinx-build"), "-W", "--keep-going", "-q", "-E", "-b", "html", "-d", str(doctrees),
         str(site), str(out)],
        check=True,
    )
    install_mathjax(out, root)
    return out


def mathjax_source() -> Path:
    """The folder of MathJax files inside the installed package (located by its metadata, not imported)."""
    from importlib.metadata import distribution

    return Path(str(distribution(MATHJAX_PACKAGE).locate_file(MATHJAX_FILES)))


def install_mathjax(out: Path, root: Path = ROOT) -> Path:
    """Copy MathJax into the site's _static/ and check that _config.yml's mathjax_path names a copied file."""
    import yaml

    target = out / "_static" / "mathjax"
    shutil.copytree(mathjax_source(), target, dirs_exist_ok=True)
    config = yaml.safe_load((root / "_config.yml").read_text())
    script = out / "_static" / config["sphinx"]["config"]["mathjax_path"]
    if not script.is_file():
        raise RuntimeError(f"_config.yml's mathjax_path names {script.relative_to(out)}, which {MATHJAX_PACKAGE} lacks")
    return script


def preflight(profile: Profile) -> None:
    """What must hold before a chapter runs, cheapest first: the profile's device exists (checked
    before any download), then its data is fetched (`fetch_data`)."""
    from .models import check_profile_device

    check_profile_device(profile)
    fetch_data(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitlib.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "record", "html", "timeout", "notebook-dir", "html-dir"))
    parser.add_argument("--profile", default=None, help="a name or a .toml file (default $SPLITLIB_PROFILE, else cpu)")
    parser.add_argument("--force", action="store_true", help="prepare: re-run every chapter")
    args = parser.parse_args(argv)
    try:
        profile = get_profile(args.profile)
        if args.step == "prepare":
            preflight(profile)
            for path in prepare(profile, force=args.force):
                print(path.relative_to(ROOT))  # the Makefile hands these to nbmake
        elif args.step == "record":
            for stem in record(profile):
                print(f"recorded {stem}", file=sys.stderr)
        elif args.step == "html":
            print(f"HTML in {html(profile).relative_to(ROOT)}", file=sys.stderr)
        else:
            print({"timeout": profile.cell_timeout, "notebook-dir": notebook_dir(profile).relative_to(ROOT),
                   "html-dir": html_dir(profile).relative_to(ROOT)}[args.step])
    except (ProfileError, DeviceError, data.DataError, FileNotFoundError) as error:
        print(f"splitlib.build: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
