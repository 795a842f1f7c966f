"""The recipe site in a real browser: headless Chromium (Debian's package) driven by selenium.

Install the browser and its driver with `make docs-deps` (runs
`apt-get install -y chromium chromium-driver` when either is missing; `make test` does it). Without
them this file is skipped on a workstation, and fails in CI (CI=true), where the browser is required.

The site is built from the committed notebooks (API pages included) into a temporary folder and every
page is opened from disk (file://), as a reader who downloaded it would.
"""

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from site_notebooks import REPOSITORY_ROOT, load_builder

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
INSTALL = "apt-get install -y chromium chromium-driver (or `make docs-deps`)"
PHONE_WIDTH = 390


def _first(names):
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _first(BROWSERS), _first(DRIVERS)
    if not (binary and driver_path):
        missing = ", ".join(n for n, p in (("chromium", binary), ("chromedriver", driver_path)) if not p)
        message = f"{missing} not found; install with: {INSTALL}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--hide-scrollbars", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    site = load_builder()
    out = tmp_path_factory.mktemp("browser") / "site"
    summary = site.build_site(REPOSITORY_ROOT / "recipes", out, api_package="kcookbook")
    return summary, out


def pages_of(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))


def open_page(browser, out, page, width=1280):
    browser.set_window_size(width, 900)
    browser.get_log("browser")   # drop what the previous page logged
    browser.get((out / page).as_uri())
    browser.execute_script("return document.readyState")


def test_every_page_loads_cleanly_with_images_and_links_that_resolve(browser, built):
    summary, out = built
    pages = pages_of(out)
    assert "index.html" in pages and any(p.startswith("api/") for p in pages)
    problems = []
    for page in pages:
        open_page(browser, out, page)
        for entry in browser.get_log("browser"):
            if entry["level"] == "SEVERE":
                problems.append(f"{page}: console error: {entry['message']}")
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        for src, complete, natural_width in images:
            if not (complete and natural_width > 0):
                problems.append(f"{page}: image {src} did not load (naturalWidth {natural_width})")
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('a[href], link[href]')).map(a => a.getAttribute('href'))")
        for href in links:
            problems += link_problems(out, page, href, browser)
    assert not problems, "\n".join(problems)


def link_problems(out, page, href, browser):
    parts = urlsplit(href)
    if parts.scheme in ("http", "https", "data", "mailto"):
        return []
    if parts.scheme or href.startswith("/"):
        return [f"{page}: link {href!r} is not relative"]
    target = (out / page).parent / unquote(parts.path) if parts.path else out / page
    target = target.resolve()
    if not target.is_file() or out.resolve() not in target.parents:
        return [f"{page}: link {href!r} points at {target}, which is not a file of the site"]
    if parts.fragment and target.suffix == ".html":
        fragment = unquote(parts.fragment)
        if target == (out / page).resolve():
            found = browser.execute_script("return document.getElementById(arguments[0]) !== null",
                                           fragment)
        else:
            found = f'id="{fragment}"' in target.read_text(encoding="utf-8")
        if not found:
            return [f"{page}: link {href!r}: no element with id {fragment!r}"]
    return []


def test_the_index_shows_one_card_per_notebook(browser, built):
    summary, out = built
    notebooks = sorted((REPOSITORY_ROOT / "recipes").rglob("*.ipynb"))
    open_page(browser, out, "index.html")
    cards = browser.execute_script(
        "return Array.from(document.querySelectorAll('li.card > a')).map(a => "
        "[a.getAttribute('href'), a.querySelector('h3').innerText, a.offsetWidth, a.offsetHeight])")
    assert len(cards) == len(notebooks) == summary["notebooks"]
    expected = {"recipes/" + p.relative_to(REPOSITORY_ROOT / "recipes").with_suffix(".html").as_posix()
                for p in notebooks}
    assert {href for href, *_ in cards} == expected
    for href, title, width, height in cards:
        assert title.strip() and width > 0 and height > 0, href
    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('section.section h2')).map(h => h.innerText)")
    assert sections == ["NLP", "CV", "Audio", "Benchmarks"]


VISIBLE = """
return Array.from(document.querySelectorAll(arguments[0])).map(e => {
  const r = e.getBoundingClientRect(), s = getComputedStyle(e);
  return [s.display !== 'none' && s.visibility !== 'hidden' && r.width > 0 && r.height > 0, r.width];
});"""


@pytest.mark.parametrize("width", [1280, PHONE_WIDTH])
def test_recipe_code_and_figures_are_visible_and_fit_the_width(browser, built, width):
    summary, out = built
    recipes = [page for page in summary["image_bytes"] if page.startswith("recipes/")]
    assert "recipes/cv/01_zero_config_classification.html" in recipes
    for page in recipes:
        open_page(browser, out, page, width)
        code = browser.execute_script(VISIBLE, ".cell.code .highlight")
        figures = browser.execute_script(VISIBLE, "figure.output img")
        assert code and all(visible for visible, _ in code), page
        expected_figures = len(list((out / page).with_suffix("").glob("*.*")))
        assert len(figures) == expected_figures and all(visible for visible, _ in figures), page
        viewport = browser.execute_script("return document.documentElement.clientWidth")
        assert all(w <= viewport for _, w in figures), f"{page}: a figure is wider than the page"
        assert browser.execute_script(
            "return !!document.querySelector('.actions a[download]')"), f"{page}: no download link"


def test_no_page_scrolls_sideways_on_a_phone(browser, built):
    """At phone width the page itself never scrolls sideways: long code lines and wide tables scroll
    inside their own block, long words wrap."""
    summary, out = built
    wide = []
    for page in pages_of(out):
        open_page(browser, out, page, PHONE_WIDTH)
        viewport, content = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]")
        if content > viewport:
            wide.append(f"{page}: {content} px of content in a {viewport} px window")
    assert not wide, "\n".join(wide)
