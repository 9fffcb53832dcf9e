"""Equations render offline: MathJax comes from a pinned package and is copied into the built site."""
from __future__ import annotations

from pathlib import Path

import yaml

from splitlib import build

ROOT = Path(__file__).resolve().parent.parent


def test_mathjax_path_is_inside_the_site_not_a_cdn():
    path = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]["mathjax_path"]
    assert "://" not in path and not path.startswith("/")
    assert path.startswith("mathjax/") and (build.mathjax_source() / path.removeprefix("mathjax/")).is_file()


def test_install_mathjax_copies_the_script_and_its_fonts(tmp_path: Path):
    script = build.install_mathjax(tmp_path)
    assert script.is_file() and script.parent == tmp_path / "_static" / "mathjax"
    fonts = list((script.parent / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 10, "CHTML output needs its web fonts beside the script"
