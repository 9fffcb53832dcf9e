"""The book's layout: chapters are MyST notebooks without outputs, dependencies agree."""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from splitlib.build import chapters

ROOT = Path(__file__).resolve().parent.parent


def _front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n"), f"{path.name} has no front matter"
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def test_no_notebook_is_committed_under_book():
    tracked = subprocess.run(["git", "ls-files", "book"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    committed = [name for name in tracked.split() if name.endswith(".ipynb")]
    on_disk = [str(p.relative_to(ROOT)) for p in (ROOT / "book").rglob("*.ipynb")]
    assert committed == [] and on_disk == [], "chapters are MyST markdown; executed notebooks live in _notebooks/"


def test_every_chapter_is_a_myst_notebook_on_the_python3_kernel():
    found = chapters(ROOT)
    assert found, "no chapters found under book/"
    for chapter in found:
        meta = _front_matter(chapter)
        assert meta["jupytext"]["text_representation"]["format_name"] == "myst", chapter.name
        assert meta["kernelspec"]["name"] == "python3", f"{chapter.name}: kernel must be python3"
        assert meta["kernelspec"]["language"] == "python", chapter.name


def test_every_chapter_starts_with_a_parameters_cell_that_reads_the_profile():
    for chapter in chapters(ROOT):
        first_cell = re.search(r"```\{code-cell\}[^\n]*\n(.*?)```", chapter.read_text(), re.S).group(1)
        assert re.search(r":tags: \[.*parameters.*\]", first_cell), f"{chapter.name}: first cell is not tagged"
        assert "get_profile()" in first_cell and "run_box(" in first_cell, chapter.name


def test_the_table_of_contents_names_existing_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [entry["file"] for entry in toc["chapters"]]
    for name in files:
        assert (ROOT / f"{name}.md").exists(), f"_toc.yml names {name}, which does not exist"
    assert {c.relative_to(ROOT).with_suffix("").as_posix() for c in chapters(ROOT)} <= set(files)


def _pins(requirements: list[str]) -> dict[str, str]:
    """{normalised name: exact version} of `name==version` lines (comments and blanks skipped)."""
    pins = {}
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _declared() -> tuple[dict, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = project["project"]["dependencies"] + [
        r for extra in project["project"]["optional-dependencies"].values() for r in extra
    ]
    return project, declared


def test_pyproject_declares_ranges_and_constraints_pin_each_within_its_range():
    from packaging.requirements import Requirement

    project, declared = _declared()
    pins = _pins((ROOT / "constraints.txt").read_text().splitlines())
    no_deps = _pins(project["tool"]["splitlib"]["no-deps"])
    ranges = {Requirement(r).name.lower(): Requirement(r).specifier for r in declared}
    assert set(pins) == set(ranges) | set(no_deps), "constraints.txt pins exactly the declared packages"
    for name, specifier in ranges.items():
        assert "==" not in str(specifier), f"pyproject pins {name}; exact versions belong in constraints.txt"
        assert specifier.contains(pins[name]), f"constraints.txt's {name}=={pins[name]} is outside {specifier}"
    assert all(pins[name] == version for name, version in no_deps.items())


def test_environment_yml_pins_the_versions_of_constraints_txt():
    project, _ = _declared()
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    pins = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for package in project["tool"]["splitlib"]["no-deps"]:  # installed by hand, said in a comment
        assert f"pip install --no-deps {package}" in (ROOT / "environment.yml").read_text()
        pins.pop(package.split("==")[0].lower())
    assert _pins(pip_section) == pins


def test_ci_runs_make_test_and_the_readme_names_both_commands():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme


def test_the_book_config_raises_on_errors_and_stays_offline():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["raise_on_error"] is True and config["execute"]["timeout"] > 0
    assert config["sphinx"]["config"]["intersphinx_mapping"] == {}
