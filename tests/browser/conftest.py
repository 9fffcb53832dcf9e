"""The browser session and the site under test for tests/browser.

The site is `--site PATH` (or $SPLITLIB_SITE), default _build/html; screenshots go to
`--screenshots PATH` (or $SPLITLIB_SCREENSHOTS), default _build/screenshots. Without Chromium on
PATH every test here is skipped, saying so.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitlib import browse

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("browser", "the built book in headless Chromium")
    group.addoption("--site", default=None, help="built HTML folder (default $SPLITLIB_SITE, else _build/html)")
    group.addoption("--screenshots", default=None,
                    help="where page screenshots go (default $SPLITLIB_SCREENSHOTS, else _build/screenshots)")


def _path(config: pytest.Config, option: str, env: str, default: str) -> Path:
    value = config.getoption(option, default=None) or os.environ.get(env) or default
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


def site_folder(config: pytest.Config) -> Path:
    return _path(config, "--site", "SPLITLIB_SITE", "_build/html")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test per page of the site (and check); a missing site is one clear skip."""
    if "page" in metafunc.fixturenames:
        site = site_folder(metafunc.config)
        found = browse.pages(site) if (site / "index.html").is_file() else []
        params = found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no built site at {site}: make book"))]
        metafunc.parametrize("page", params)


@pytest.fixture(scope="session")
def browser() -> Iterator[browse.Browser]:
    executable = browse.find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set SPLITLIB_CHROMIUM)")
    started = browse.Browser(executable)
    yield started
    started.close()


@pytest.fixture(scope="session")
def book(request: pytest.FixtureRequest, browser: browse.Browser) -> Iterator[browse.Book]:
    """The site under test, served on 127.0.0.1; old screenshots are removed first."""
    site = site_folder(request.config)
    screenshots = _path(request.config, "--screenshots", "SPLITLIB_SCREENSHOTS", "_build/screenshots")
    for old in screenshots.rglob("*.png"):
        old.unlink()
    with browse.serve(site) as base_url:
        yield browse.Book(site, base_url, browser, screenshots)
