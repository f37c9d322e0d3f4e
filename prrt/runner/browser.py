"""The built book, checked as a reader's browser shows it: headless Chromium driven by Playwright.

:func:`check_book` serves a built book over HTTP on the loopback interface and opens every page in
Chromium (the system's browser, e.g. Debian's ``chromium`` package; Playwright's own browser builds are
never downloaded). On every page it records JavaScript errors (console errors and uncaught exceptions),
failed requests, images (in the page's content) that did not load or have no alt text, and internal links
whose target file is missing; on every
chapter it checks that the parameters table (and, for a synthetic cohort, the synthetic-data banner) is
visible, and saves a screenshot; the search page must find a word. :class:`BookCheck` holds the result.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Where the browser is looked for, in order: $PRRT_CHROMIUM, then these programs on PATH.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
VIEWPORT = {"width": 1280, "height": 1800}


def find_browser() -> str | None:
    """The Chromium executable to drive, or None (then the check cannot run)."""
    explicit = os.environ.get("PRRT_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_missing_reason() -> str | None:
    """Why :func:`check_book` cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (it is in requirements.txt)"
    if find_browser() is None:
        return ("no Chromium found (looked for $PRRT_CHROMIUM and " + ", ".join(BROWSERS) + " on PATH): install "
                "Debian's chromium package (`apt-get install chromium`)")
    return None


@dataclass
class PageCheck:
    page: str                      # path in the book, e.g. notebooks/01_cohort.html
    errors: list[str] = field(default_factory=list)         # JavaScript errors and failed requests
    broken_images: list[str] = field(default_factory=list)
    images_without_alt: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)        # what a chapter must show but does not
    screenshot: str | None = None

    @property
    def problems(self) -> list[str]:
        return ([f"JavaScript/network: {e}" for e in self.errors] + [f"image not loaded: {i}" for i in self.broken_images]
                + [f"image without alt text: {i}" for i in self.images_without_alt]
                + [f"link to a missing file: {u}" for u in self.broken_links] + [f"not visible: {m}" for m in self.missing])


@dataclass
class BookCheck:
    browser: str
    pages: list[PageCheck]
    search_query: str
    search_results: int
    screenshots: Path

    @property
    def problems(self) -> list[str]:
        out = [f"{p.page}: {msg}" for p in self.pages for msg in p.problems]
        if self.search_results == 0:
            out.append(f"search.html: no result for {self.search_query!r}")
        return out

    def summary(self) -> str:
        return (f"{len(self.pages)} pages opened in {Path(self.browser).name}, {len(self.problems)} problem(s); "
                f"search for {self.search_query!r}: {self.search_results} page(s); "
                f"{sum(p.screenshot is not None for p in self.pages)} chapter screenshots")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # the browser closed a tab
            super().handle_error(request, client_address)


def _serve(directory: Path):
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _pages(book: Path) -> list[str]:
    skip = {"genindex.html", "search.html"}
    return sorted(str(p.relative_to(book)) for p in book.rglob("*.html")
                  if not p.relative_to(book).parts[0].startswith("_") and p.name not in skip)


def _internal_target(book: Path, page: str, href: str) -> Path | None:
    """The file an internal link points at (None for an external link, an anchor on the page, or mailto:)."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return (book / Path(page).parent / unquote(parts.path)).resolve()


#: Pages open at once: most of a page's second is the browser waiting (half a second without network traffic before
#: a page counts as loaded), so a few tabs at a time overlap those waits (the demo book's 15 pages: about 22 s one at
#: a time; benchmarks/DESIGN.md)
TABS = 4


def check_book(book, screenshots, synthetic: bool, search_query: str = "chromogranin",
               chapters_glob: str = "notebooks/*.html") -> BookCheck:
    """Open every page of the built book ``book`` (its ``index.html`` folder) in headless Chromium, :data:`TABS`
    pages at a time.

    ``screenshots``: the folder for one screenshot per chapter (``chapters_glob``); ``synthetic``: whether
    the chapters must show the synthetic-data banner. Raises RuntimeError when no browser can be driven
    (:func:`browser_missing_reason`).
    """
    import asyncio

    reason = browser_missing_reason()
    if reason:
        raise RuntimeError(f"cannot check the book in a browser: {reason}")
    book, screenshots = Path(book).resolve(), Path(screenshots)
    screenshots.mkdir(parents=True, exist_ok=True)
    chapters = {str(p.relative_to(book)) for p in book.glob(chapters_glob)}
    server, base = _serve(book)
    try:
        check = _check_all(book, base, chapters, synthetic, screenshots, search_query)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop runs in this thread (the runner, a script)
            results, hits = asyncio.run(check)
        else:  # called from a running event loop (a notebook): the check gets a thread and a loop of its own
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as pool:
                results, hits = pool.submit(asyncio.run, check).result()
    finally:
        server.shutdown()
    return BookCheck(find_browser(), results, search_query, hits, screenshots)


async def _check_all(book: Path, base: str, chapters: set, synthetic: bool, screenshots: Path, search_query: str):
    """Every page's :class:`PageCheck` (in the order of :func:`_pages`) and the number of search results."""
    import asyncio

    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=find_browser(), args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport=VIEWPORT)
            tabs, front = asyncio.Semaphore(TABS), asyncio.Lock()

            async def one(name):
                async with tabs:
                    return await _check_page(context, base, book, name, name in chapters, synthetic, screenshots,
                                             front)

            results = await asyncio.gather(*(one(name) for name in _pages(book)))
            search = await context.new_page()
            await search.goto(f"{base}/search.html?q={search_query}")
            await search.wait_for_function("() => !!document.querySelector('#search-results p.search-summary') "
                                           "&& !document.querySelector('#search-results p.search-summary')"
                                           ".textContent.startsWith('Preparing')", timeout=30_000)
            hits = await search.locator("#search-results ul.search li").count()
        finally:
            await browser.close()
    return list(results), hits


async def _check_page(context, base: str, book: Path, name: str, chapter: bool, synthetic: bool, screenshots: Path,
                      front):
    """One page's :class:`PageCheck`; ``front``: held while the page is the tab in front for its screenshot."""
    page = await context.new_page()
    check = PageCheck(name)
    page.on("console", lambda m: check.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: check.errors.append(f"uncaught {e}"))
    page.on("requestfailed", lambda r: check.errors.append(f"request failed: {r.url}"))
    page.on("response", lambda r: check.errors.append(f"HTTP {r.status}: {r.url}")
            if r.status >= 400 and r.url.startswith(base) else None)
    await page.goto(f"{base}/{name}", wait_until="load")
    await page.wait_for_load_state("networkidle")
    images = await page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete && "
                                                    "e.naturalWidth > 0, (e.getAttribute('alt') || '').trim(), "
                                                    "!!e.closest('article')])")
    check.broken_images = [src for src, ok, _, _ in images if not ok]
    # the page's own figures need alt text (docutils writes the file's path as alt when a figure has none)
    check.images_without_alt = [src for src, _, alt, content in images if content and
                                (not alt or alt == src or alt.lower().endswith((".png", ".svg", ".jpg", ".jpeg")))]
    hrefs = await page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    shown = unquote(urlsplit(page.url).path).lstrip("/")  # after a redirect (index.html) links are relative to it
    for href in sorted(set(hrefs)):
        target = _internal_target(book, shown, href)
        if target is not None and not target.exists():
            check.broken_links.append(href)
    if chapter:
        if not await page.locator("table", has_text="voxel spacing (mm)").first.is_visible():
            check.missing.append("the parameters table")
        if synthetic and not await page.get_by_text("Synthetic data", exact=False).first.is_visible():
            check.missing.append("the synthetic-data banner")
        shot = screenshots / (Path(name).stem + ".png")
        async with front:  # a tab behind others may show stale tiles of its top in a screenshot: one in front at a time
            await page.bring_to_front()
            await page.screenshot(path=str(shot))
        check.screenshot = str(shot)
    await page.close()
    return check
