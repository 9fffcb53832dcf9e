"""Portability: no POSIX-only import, data shipped inside the package, a license file."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

from splitlib.data import BUNDLED_DIR, BUNDLED_FILES

ROOT = Path(__file__).resolve().parent.parent


def test_splitlib_imports_and_locks_without_fcntl(tmp_path):
    """As on Windows: `fcntl` cannot be imported, yet splitlib imports and its cache still locks."""
    script = textwrap.dedent(f"""
        import sys, warnings
        sys.modules["fcntl"] = None  # any `import fcntl` now raises ImportError
        import splitlib
        from splitlib.cache import cached_artifact, file_lock
        warnings.simplefilter("ignore")  # filelock says it falls back to a lock file
        with file_lock({str(tmp_path / "x.lock")!r}):
            pass
        built = cached_artifact({str(tmp_path / "a.txt")!r}, lambda tmp: tmp.write_text("ok"))
        print(built.read_text(), "fcntl" in sys.modules and sys.modules["fcntl"] is None)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "True"]


def test_the_bundled_data_ships_inside_the_package(tmp_path):
    """data/ in the checkout is what a built wheel holds as splitlib/bundled/, byte for byte."""
    assert BUNDLED_DIR == ROOT / "data"
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside pyproject.toml
    for folder in ("splitlib", "data"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("splitlib-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in [*BUNDLED_FILES.values(), "README.md"]:
            assert archive.read(f"splitlib/bundled/{name}") == (ROOT / "data" / name).read_bytes(), name


def test_the_license_file_is_the_apache_license_pyproject_names():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
