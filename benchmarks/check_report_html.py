"""Open benchmark reports in a real headless browser and check them as a reader would see them:
the page renders (a title, the verdict table), every image loads (decoded, non-zero size) and no
link is broken (relative links resolve to files that exist; no request fails).

    python benchmarks/check_report_html.py benchmarks/results/*/report.html [--screenshot-dir DIR]

Needs Chromium and Playwright (`apt-get install chromium`, `pip install playwright`; no browser
download: Playwright drives the system Chromium). Exits 0 when every report passes, 1 otherwise,
printing one line per problem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def check(page, path: Path, screenshot_dir: Path | None) -> list[str]:
    problems: list[str] = []
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    if not page.title():
        problems.append("no title")
    if not page.locator("h3", has_text="Verdicts").count() or not page.locator("table").count():
        problems.append("no verdict table")
    images = page.eval_on_selector_all(
        "img", "images => images.map(i => [i.alt, i.complete && i.naturalWidth > 0 && i.naturalHeight > 0])")
    if not images:
        problems.append("no images")
    problems += [f"image does not load: {alt}" for alt, loaded in images if not loaded]
    for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))"):
        target = urlparse(href)
        if target.scheme in ("", "file") and not target.fragment:
            if not (path.parent / unquote(target.path)).exists():
                problems.append(f"broken link: {href}")
    problems += [f"request failed: {url[:80]}" for url in failed]
    if screenshot_dir is not None:
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot_dir / f"{path.parent.name}.png"), full_page=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--screenshot-dir", type=Path, help="also save a full-page screenshot of each report here")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    failures = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        for path in args.reports:
            page = browser.new_page()
            problems = ["file not found"] if not path.is_file() else check(page, path, args.screenshot_dir)
            page.close()
            for problem in problems:
                print(f"{path}: {problem}")
            print(f"{path}: {'ok' if not problems else 'FAILED'}")
            failures += bool(problems)
        browser.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
