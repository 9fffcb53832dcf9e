"""Open the built book in headless Chromium and check each page as a reader would see it.

The HTML is served on 127.0.0.1 and each page opened at 1400 px wide through the Chrome DevTools
Protocol (no browser download, no internet: requests to any other host go to a dead local proxy
and are recorded). `CHECKS` name what is wrong on a page, each problem naming the page and the
element. tests/browser runs them on every page; a full-page screenshot of each is kept.

Imports only the standard library at import time; websocket-client when a browser starts.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

WIDTH, HEIGHT = 1400, 900
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
RAW_MATH = ("\\(", "\\[", "$$")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
NO_DNS_EXCEPT = "EXCLUDE localhost, EXCLUDE 127.0.0.1"  # every other host name resolves to nothing

# Wait until every image has loaded or failed, MathJax has typeset and web fonts are in (20 s at most).
SETTLE_JS = """(async () => {
  const ready = (async () => {
    const images = [...document.images];
    images.forEach(img => { img.loading = "eager"; });
    await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
      img.addEventListener("load", done); img.addEventListener("error", done); })));
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
    await document.fonts.ready;
  })();
  await Promise.race([ready, new Promise(done => setTimeout(done, 20000))]);
  return true;
})()"""

# Everything the checks read, gathered in one pass over the rendered page.
COLLECT_JS = r"""(() => {
  const describe = el => {
    let s = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "");
    const classes = [...el.classList].slice(0, 2);
    if (classes.length) s += "." + classes.join(".");
    const link = el.getAttribute("src") || el.getAttribute("href");
    if (link) s += `[${el.hasAttribute("src") ? "src" : "href"}=${link.length > 90 ? "…" + link.slice(-90) : link}]`;
    const section = el.parentElement && el.parentElement.closest("section[id]");
    return section ? `${s} in section #${section.id}` : s;
  };
  const column = document.querySelector(".bd-article") || document.querySelector("main") || document.body;
  const box = column.getBoundingClientRect(), style = getComputedStyle(column);
  const left = box.left + parseFloat(style.paddingLeft), right = box.right - parseFloat(style.paddingRight);
  const rawMath = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent, el = walker.currentNode.parentElement;
    if (!RAW.some(m => text.includes(m)) || !el || el.closest("pre, code, script, style, textarea, mjx-container")) {
      continue;
    }
    rawMath.push({element: describe(el), text: text.trim().replace(/\s+/g, " ").slice(0, 80), error: false});
  }
  document.querySelectorAll("mjx-merror").forEach(el => rawMath.push({
    element: describe(el.closest("mjx-container").parentElement),
    text: el.getAttribute("data-mjx-error") || el.textContent, error: true}));
  const view = document.documentElement.clientWidth;
  const sticking = [...document.body.querySelectorAll("*")].filter(el =>
    el.getBoundingClientRect().right > view + 1 && el.parentElement.getBoundingClientRect().right <= view + 1);
  const wide = [...column.querySelectorAll("table, figure, img")].filter(el => !el.closest("aside, .margin, .sidebar"))
    .map(el => [el, el.getBoundingClientRect()])
    .filter(([, r]) => r.width > 0 && (r.left < left - 1 || r.right > right + 1))
    .map(([el, r]) => ({element: describe(el), width: Math.round(r.width)}));
  return {
    column: {left: Math.round(left), width: Math.round(right - left)},
    scrollWidth: document.documentElement.scrollWidth, clientWidth: view,
    sticking: sticking.slice(0, 5).map(describe),
    rawMath, wide,
    ids: [...document.querySelectorAll("[id]")].map(el => el.id)
      .concat([...document.querySelectorAll("a[name]")].map(el => el.getAttribute("name"))),
    links: [...document.querySelectorAll("a[href]")].map(a => ({href: a.href, element: describe(a)})),
    images: [...document.images].map(img => ({src: img.currentSrc || img.src, naturalWidth: img.naturalWidth,
      inColumn: column.contains(img), element: describe(img)})),
  };
})()""".replace("RAW", json.dumps(RAW_MATH))


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: $SPLITLIB_CHROMIUM, else the first on PATH; None if absent."""
    names = [os.environ["SPLITLIB_CHROMIUM"]] if os.environ.get("SPLITLIB_CHROMIUM") else CHROMIUM_NAMES
    return next((path for name in names if (path := shutil.which(name))), None)


def pages(site: Path) -> list[str]:
    """Every HTML page of a built site, as paths relative to it (not the _static/, _sources/... copies)."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not any(part.startswith("_") for part in p.relative_to(site).parts[:-1]))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a tab closed mid-answer is no error
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve `site` on 127.0.0.1 at a free port from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    with _QuietServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            thread.join()


@dataclass
class Snapshot:
    """What a page showed: the collected facts, every request it made, the local ones that failed."""

    page: str
    url: str
    site: Path
    facts: dict[str, Any]
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium driven over the DevTools Protocol; each page gets a fresh tab."""

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        import websocket

        self._profile = tempfile.mkdtemp(prefix="splitlib-chromium-")
        self._dead_proxy = socket.socket()  # bound, never listening: every connection to it is refused
        self._dead_proxy.bind(("127.0.0.1", 0))
        self._process = subprocess.Popen(self._command(executable), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        self._socket = websocket.create_connection(self._endpoint(timeout), timeout=timeout, suppress_origin=True)
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def _command(self, executable: str) -> list[str]:
        proxy = f"http://127.0.0.1:{self._dead_proxy.getsockname()[1]}"  # loopback is never proxied
        return [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
                f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-port=0", f"--user-data-dir={self._profile}",
                f"--proxy-server={proxy}", f"--host-resolver-rules=MAP * ~NOTFOUND, {NO_DNS_EXCEPT}",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
                "--dns-prefetch-disable", "about:blank"]

    def _endpoint(self, timeout: float) -> str:
        """The browser's websocket address, from the DevToolsActivePort file Chromium writes."""
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.1)
        self.close()
        raise RuntimeError("Chromium did not open its DevTools port")

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            reply = json.loads(self._socket.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self._events.append(reply)

    def wait_for(self, event: str, session: str, timeout: float = 60.0) -> None:
        """Read messages until `event` arrives for `session`."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event and e.get("sessionId") == session for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout:.0f} s")
            self._events.append(json.loads(self._socket.recv()))

    def open(self, session: str, url: str) -> None:
        """Load `url` in the tab; a redirect stub (meta refresh, as the book's index.html) is followed."""
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        if self.evaluate(session, "!!document.querySelector('meta[http-equiv=refresh i]')"):
            self._events = [e for e in self._events if e.get("sessionId") != session or "Network." in e["method"]]
            self.wait_for("Page.loadEventFired", session)

    def evaluate(self, session: str, expression: str) -> Any:
        """Run JavaScript in the page (awaiting a promise) and return its value."""
        result = self.send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    @contextlib.contextmanager
    def tab(self) -> Iterator[str]:
        """A fresh tab at WIDTH x HEIGHT with network events on; yields its session id."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        try:
            for domain in ("Page", "Network", "Runtime"):
                self.send(f"{domain}.enable", session)
            self.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT,
                      deviceScaleFactor=1, mobile=False)
            yield session
        finally:
            self.send("Target.closeTarget", targetId=target)
            self._events = [e for e in self._events if e.get("sessionId") != session]

    def network(self, session: str) -> tuple[list[str], list[str]]:
        """Every URL the tab requested, and the local ones that failed or answered an error status."""
        events = [e for e in self._events if e.get("sessionId") == session]
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
                if e.get("method") == "Network.requestWillBeSent"}
        failed = [(e["params"]["response"]["url"], str(e["params"]["response"]["status"])) for e in events
                  if e.get("method") == "Network.responseReceived" and e["params"]["response"]["status"] >= 400]
        failed += [(urls.get(e["params"]["requestId"], "?"), e["params"]["errorText"]) for e in events
                   if e.get("method") == "Network.loadingFailed" and not e["params"].get("canceled")]
        return list(urls.values()), [f"{url} ({why})" for url, why in failed
                                     if _is_local(url) and not url.endswith("/favicon.ico")]

    def screenshot(self, session: str, path: Path) -> None:
        """Save a PNG of the whole page, not only the viewport."""
        height = min(int(self.send("Page.getLayoutMetrics", session)["cssContentSize"]["height"]), 30000)
        self.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=height, deviceScaleFactor=1,
                  mobile=False)  # a viewport as tall as the page: a clip beyond the viewport shifts the layout
        shot = self.send("Page.captureScreenshot", session, format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        """Stop the browser this object started (its own process group) and remove its profile."""
        with contextlib.suppress(Exception):
            self._socket.close()
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._dead_proxy.close()
        shutil.rmtree(self._profile, ignore_errors=True)


class Book:
    """A served site opened page by page in a browser; each page is visited once and remembered."""

    def __init__(self, site: Path, base_url: str, browser: Browser, screenshots: Path | None = None) -> None:
        self.site, self.base_url, self.browser, self.screenshots = site, base_url, browser, screenshots
        self._seen: dict[str, Snapshot] = {}

    def visit(self, page: str) -> Snapshot:
        """Open `page`, let it settle, collect what the checks need and (optionally) screenshot it."""
        if page not in self._seen:
            url = self.base_url + page
            with self.browser.tab() as session:
                self.browser.open(session, url)
                self.browser.evaluate(session, SETTLE_JS)
                url = self.browser.evaluate(session, "location.href")  # where a redirect stub led
                facts = self.browser.evaluate(session, COLLECT_JS)
                if self.screenshots is not None:
                    self.browser.screenshot(session, self.screenshots / Path(page).with_suffix(".png"))
                requests, failed = self.browser.network(session)
            self._seen[page] = Snapshot(page, url, self.site, facts, requests, failed)
        return self._seen[page]


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme not in ("http", "https", "ws", "wss") or parts.hostname in LOCAL_HOSTS


def external_requests(snap: Snapshot) -> list[str]:
    """Anything fetched from outside 127.0.0.1: the book must read the same offline."""
    return [f"{snap.page}: requested {url} (not served by the site)" for url in snap.requests if not _is_local(url)]


def raw_math(snap: Snapshot) -> list[str]:
    r"""Text still holding \(, \[ or $$ after MathJax ran, or a MathJax error: an equation that did not render."""
    return [f"{snap.page}: {hit['element']}: {'MathJax error' if hit['error'] else 'raw math'} {hit['text']!r}"
            for hit in snap.facts["rawMath"]]


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if value and (name == "id" or (tag == "a" and name == "name")))


@functools.lru_cache(maxsize=256)
def _ids_in(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(errors="replace"))
    return frozenset(parser.ids)


def _site_file(site: Path, url_path: str) -> Path:
    path = site / unquote(url_path).lstrip("/")
    return path / "index.html" if url_path.endswith("/") or path.is_dir() else path


def broken_links(snap: Snapshot) -> list[str]:
    """Links to a page or #anchor the site does not have, and local files the page failed to load."""
    here = urlsplit(snap.url)
    problems = [f"{snap.page}: could not load {failure}" for failure in snap.failed]
    for link in snap.facts["links"]:
        target = urlsplit(link["href"])
        if target.scheme not in ("http", "https") or target.netloc != here.netloc:
            continue  # mailto:, javascript: or another site: not a page of this book
        path = _site_file(snap.site, target.path)
        if not path.is_file():
            problems.append(f"{snap.page}: {link['element']}: no page {target.path}")
        elif target.fragment:
            ids = set(snap.facts["ids"]) if target.path == here.path else _ids_in(path)
            if unquote(target.fragment) not in ids:
                problems.append(f"{snap.page}: {link['element']}: no #{unquote(target.fragment)} in {target.path}")
    return problems


def unloaded_images(snap: Snapshot) -> list[str]:
    """Images the browser could not show (naturalWidth 0)."""
    return [f"{snap.page}: {img['element']}: image did not load" for img in snap.facts["images"]
            if img["naturalWidth"] == 0]


def _image_key(snap: Snapshot, src: str) -> str:
    """A hash of the image's bytes (from the site folder or a data: URL), else its address."""
    parts = urlsplit(src)
    if parts.scheme == "data":
        return hashlib.sha256(src.partition(",")[2].encode()).hexdigest()
    path = _site_file(snap.site, parts.path)
    if _is_local(src) and path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return src


def duplicate_images(snap: Snapshot) -> list[str]:
    """The same picture shown more than once in the text column (same bytes, whatever the file name)."""
    groups: dict[str, list[str]] = {}
    for img in snap.facts["images"]:
        if img["inColumn"] and img["src"]:
            groups.setdefault(_image_key(snap, img["src"]), []).append(img["element"])
    return [f"{snap.page}: the same image is shown {len(elements)} times: " + "; ".join(elements)
            for elements in groups.values() if len(elements) > 1]


def page_width(snap: Snapshot) -> list[str]:
    """A page that scrolls sideways at WIDTH px; names the outermost elements that stick out."""
    facts = snap.facts
    if facts["scrollWidth"] <= facts["clientWidth"]:
        return []
    return [f"{snap.page}: page is {facts['scrollWidth']} px wide at a {facts['clientWidth']} px viewport; "
            f"sticking out: {', '.join(facts['sticking']) or '?'}"]


def wide_blocks(snap: Snapshot) -> list[str]:
    """Tables, figures and images that reach outside the text column."""
    column = snap.facts["column"]
    return [f"{snap.page}: {block['element']}: {block['width']} px wide, the text column is {column['width']} px"
            for block in snap.facts["wide"]]


CHECKS: dict[str, Callable[[Snapshot], list[str]]] = {
    "external_requests": external_requests,
    "raw_math": raw_math,
    "broken_links": broken_links,
    "unloaded_images": unloaded_images,
    "duplicate_images": duplicate_images,
    "page_width": page_width,
    "wide_blocks": wide_blocks,
}
