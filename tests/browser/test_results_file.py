"""The built site's results file (linked from the status page) holds every value the chapters glue."""
from __future__ import annotations

import json
import re

import pytest

from .conftest import ROOT, site_folder

GLUE_NAME = re.compile(r"""\bglue\(\s*(?:f?["'])([^"']+)["']""")


def test_the_results_file_holds_every_glued_name_of_every_chapter(request: pytest.FixtureRequest) -> None:
    site = site_folder(request.config)
    files = sorted(site.glob("_downloads/*/results.json"))
    if not (site / "index.html").is_file():
        pytest.skip(f"no built site at {site}: make book")
    assert len(files) == 1, f"expected one results.json linked from the status page, found {files}"
    results = json.loads(files[0].read_text())
    found = {(entry["chapter"], entry["name"]) for entry in results}
    for chapter in sorted((ROOT / "book").glob("0*.md")):
        names = {name for name in GLUE_NAME.findall(chapter.read_text()) if "{" not in name}
        missing = sorted(name for name in names if (chapter.stem, name) not in found)
        assert not missing, f"{chapter.name}: glued but not in results.json: {missing}"
    assert all(entry["kind"] != "text" or entry["value"] != "" for entry in results)
