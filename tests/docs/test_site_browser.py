"""The built site, looked at in a real browser: headless Chromium renders pages offline.

Each page is served from 127.0.0.1 and rendered with every other host unreachable; the test then
reads the rendered DOM and checks that KaTeX turned every formula into maths (no raw ``$$``,
``\\(`` or ``\\[`` left in the text, no KaTeX error), that the navigation is there, and that the
page is not an error page. Marked ``browser``; skipped when Chromium or mkdocs is not installed.
Set ``CHROMIUM`` to the browser's path if it is not on ``PATH`` as ``chromium``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: (path under the site, what must be on it): the home page and an API page, both with maths.
PAGES = [
    ("", "Verified DPM-Solver"),
    ("api/integrators/", "DPMSolverMultistep"),
    ("concepts/integrators/", "exponential integrators"),
]
RAW_TEX = ("$$", "\\(", "\\)", "\\[", "\\]")


def chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def browser_flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--mute-audio",
            # Offline: every host but the local server is unreachable, so CDN assets would fail.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}", "--virtual-time-budget=20000"]


@pytest.fixture(scope="module")
def browser() -> str:
    path = chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium), or set CHROMIUM=/path/to/chrome")
    return path


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(built_site):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(built_site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the local http.server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class RenderedPage(HTMLParser):
    """What the checks need from a rendered DOM."""

    SKIP_TEXT = {"script", "style", "code", "pre", "textarea", "annotation", "math"}

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, set[str]]] = []
        self.katex = 0
        self.katex_errors = 0
        self.arithmatex: list[bool] = []   # one per arithmatex element: whether KaTeX rendered inside it
        self.open_arithmatex: list[int] = []
        self.nav_links = 0
        self.text: list[str] = []
        self.title = ""

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        if "katex" in classes:
            self.katex += 1
            for i in self.open_arithmatex:
                self.arithmatex[i] = True
        if "katex-error" in classes:
            self.katex_errors += 1
        if "md-nav__link" in classes and tag == "a":
            self.nav_links += 1
        if tag in ("br", "img", "input", "meta", "link", "hr", "wbr", "source", "col", "area", "base", "embed"):
            return
        if "arithmatex" in classes:
            self.arithmatex.append(False)
            self.open_arithmatex.append(len(self.arithmatex) - 1)
            classes = classes | {"__arithmatex__"}
        self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        while self.stack:
            name, classes = self.stack.pop()
            if "__arithmatex__" in classes:
                self.open_arithmatex.pop()
            if name == tag:
                break

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] == "title":
            self.title += data
        if not any(name in self.SKIP_TEXT for name, _ in self.stack):
            self.text.append(data)


def render(browser: str, url: str, profile: Path) -> str:
    proc = subprocess.run([browser, *browser_flags(profile), "--dump-dom", url], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"chromium failed on {url}:\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.mark.parametrize("path,expected", PAGES, ids=[p or "home" for p, _ in PAGES])
def test_page_renders_maths_and_navigation(browser, server, tmp_path, path, expected):
    dom = render(browser, server + path, tmp_path / "profile")
    page = RenderedPage()
    page.feed(dom)
    text = " ".join(page.text)
    assert "404" not in page.title and "Error response" not in text, f"{path}: error page: {page.title!r}"
    assert expected in dom, f"{path}: {expected!r} is not on the page"
    assert page.nav_links >= 10, f"{path}: navigation missing ({page.nav_links} links)"
    assert page.arithmatex, f"{path}: the page has no maths (the check would be vacuous)"
    assert page.katex >= len(page.arithmatex), f"{path}: KaTeX did not run ({page.katex} rendered formulas)"
    unrendered = page.arithmatex.count(False)
    assert unrendered == 0, f"{path}: {unrendered} of {len(page.arithmatex)} formulas were not rendered by KaTeX"
    assert page.katex_errors == 0, f"{path}: {page.katex_errors} KaTeX errors"
    raw = [token for token in RAW_TEX if token in text]
    assert not raw, f"{path}: raw TeX delimiters {raw} left in the text"


def test_screenshot_of_the_home_page(browser, server, tmp_path):
    """A screenshot renders (kept under $DIFFODE_SCREENSHOT_DIR when set, for a human to look at)."""
    shot = tmp_path / "home.png"
    proc = subprocess.run([browser, *browser_flags(tmp_path / "profile"), "--window-size=1280,1600",
                           f"--screenshot={shot}", server], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "the screenshot is empty"
    if out := os.environ.get("DIFFODE_SCREENSHOT_DIR"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / "home.png")
