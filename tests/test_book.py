"""The book in a real browser: headless Chromium opens every page of build/html from disk with the network off.

Per page: no console errors, no failed request and no request leaving the disk, math typeset by the bundled
MathJax (``mjx-container`` for every math element, no TeX error), every image decoded with a non-zero width,
every internal link pointing to an existing file and anchor. A screenshot of each page goes to
build/screenshots/. The book is (re)built first when build/html is missing or older than its sources.

Needs Chromium and its driver (Debian: ``apt-get install -y chromium chromium-driver``; ``.ci/run`` installs them)
and the ``book`` extra (selenium, jupyter-book); skipped with that message otherwise. Run it alone with
``make html && .venv/bin/python -m pytest tests/test_book.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "build" / "html"
SHOTS = ROOT / "build" / "screenshots"
HOW = ("apt-get install -y chromium chromium-driver; make html; .venv/bin/python -m pytest tests/test_book.py "
       "(selenium comes with pip install -e '.[book]')")
#: What the book is built from: when any is newer than build/html/index.html, the book is rebuilt.
SOURCES = [ROOT / "book", ROOT / "notebooks", ROOT / "reports" / "paper", ROOT / "reports" / "quick" / "claims.csv",
           ROOT / "scripts" / "build_book.py", ROOT / "spikehijack" / "reporting"]
#: Full-page screenshots are cut at this height (pixels): long chapters would give huge files.
MAX_SHOT_HEIGHT = 6000


def _binary(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


CHROMIUM = _binary("chromium", "chromium-browser", "google-chrome")
DRIVER = _binary("chromedriver")


def _newest(paths: list[Path]) -> float:
    times = [f.stat().st_mtime for p in paths if p.exists() for f in ([p] if p.is_file() else p.rglob("*"))
             if f.is_file() and "__pycache__" not in f.parts]
    return max(times, default=0.0)


@pytest.fixture(scope="module")
def book() -> Path:
    index = HTML / "index.html"
    if not index.exists() or index.stat().st_mtime < _newest(SOURCES):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py"), "--out", str(HTML)], check=True)
    return HTML


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(f"Chromium or chromedriver not installed; to run the browser test: {HOW}")
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium not installed; {HOW}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--hide-scrollbars",
                # the network is off: every request that is not a file on disk fails and is reported
                "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit driver path: selenium-manager never downloads anything
    service = webdriver.ChromeService(executable_path=DRIVER)
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _pages(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.html") if not p.relative_to(root).parts[0].startswith("_"))


def _ids(page: Path, cache: dict[Path, set[str]]) -> set[str]:
    if page not in cache:
        cache[page] = set(re.findall(r'\b(?:id|name)="([^"]+)"', page.read_text(errors="replace")))
    return cache[page]


#: Waits for MathJax (when the page loads it) and reports math, images and links as JSON.
PAGE_REPORT = """
const done = arguments[arguments.length - 1];
const wait = (window.MathJax && MathJax.startup && MathJax.startup.promise) || Promise.resolve();
const imgs = Array.from(document.images);
Promise.all([wait, ...imgs.map(i => i.decode().catch(() => null))]).then(() => done(JSON.stringify({
  mathjax: !!(window.MathJax && MathJax.startup && MathJax.startup.document),
  math: document.querySelectorAll('.math').length,
  typeset: document.querySelectorAll('mjx-container').length,
  untypeset: Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container'))
                  .map(e => e.textContent.slice(0, 60)),
  errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent.slice(0, 80)),
  images: imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  height: document.documentElement.scrollHeight,
})));
"""


def _problems(driver, page: Path, root: Path, ids: dict[Path, set[str]]) -> list[str]:
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    driver.get(page.as_uri())
    report = json.loads(driver.execute_async_script(PAGE_REPORT))
    problems = [f"console {e['level']}: {e['message']}" for e in driver.get_log("browser")
                if e["level"] in ("SEVERE", "ERROR")]
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg["method"] == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"failed request: {params.get('errorText')} ({params.get('requestId')})")
        if msg["method"] == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if urlsplit(url).scheme not in ("file", "data", "blob", "about"):
                problems.append(f"request leaves the disk: {url}")
    if report["math"]:
        if not report["mathjax"] or report["typeset"] == 0 or report["untypeset"]:
            problems.append(f"math not typeset: {report['typeset']} of {report['math']} ({report['untypeset'][:3]})")
        problems += [f"TeX error: {e}" for e in report["errors"]]
    problems += [f"image not decoded: {i['src'][:100]}" for i in report["images"] if not i["ok"]]
    for href in report["links"]:
        parts = urlsplit(href)
        if parts.scheme != "file":
            continue
        target = Path(unquote(parts.path))
        if not target.exists():
            problems.append(f"broken link: {href}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target, ids):
            problems.append(f"missing anchor: {href}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = min(report["height"], MAX_SHOT_HEIGHT)
    driver.set_window_size(1280, height)
    name = "__".join(page.relative_to(root).with_suffix("").parts) + ".png"
    driver.save_screenshot(str(SHOTS / name))
    driver.set_window_size(1280, 1000)
    return problems


def test_every_page_renders_offline(book, browser):
    pages = _pages(book)
    assert len(pages) >= 12, f"expected the landing page, 6 chapters and the paper-profile part, got {pages}"
    ids: dict[Path, set[str]] = {}
    failures = {str(p.relative_to(book)): probs for p in pages if (probs := _problems(browser, p, book, ids))}
    assert not failures, "\n".join(f"{page}:\n  " + "\n  ".join(probs) for page, probs in failures.items())


def test_math_and_claims_figure_on_the_landing_page_and_chapter_01(book, browser):
    browser.get((book / "chapters" / "01_maxsim_derivation.html").as_uri())
    report = json.loads(browser.execute_async_script(PAGE_REPORT))
    assert report["math"] > 5 and report["typeset"] >= report["math"], report
    browser.get((book / "index.html").as_uri())
    report = json.loads(browser.execute_async_script(PAGE_REPORT))
    assert any("claims_quick" in i["src"] and i["ok"] for i in report["images"]), report["images"]
    text = browser.find_element("tag name", "main").text
    assert "{{" not in text and "links tested for the paper" in text, text[:500]


def test_search_finds_a_chapter(book, browser):
    browser.get((book / "search.html").as_uri() + "?q=hijacking")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('#search-results li').length") > 0)
