"""report.html in a real headless browser: Debian's Chromium (``make browser`` installs it; ``make test`` runs
that first), driven by Playwright with that executable (Playwright's own browser download is not used).

The page must load with no console errors and no request beyond the file itself, and every chart must be a
decoded image of nonzero size. A full-page screenshot is kept: in the test's tmp folder and copied to
``build/report-screenshot.png`` (git-ignored), the artifact to look at.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.pipelines.test_report import published  # noqa: F401 (the module-scoped fixture: one pipeline run)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "report-screenshot.png"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: run `make browser`")
def test_report_loads_without_errors_and_draws_every_chart(published, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    page_url = (published / "report.html").as_uri()
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            viewport={"width": 1200, "height": 900},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_url, wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, done: i.complete, w: i.naturalWidth,"
                " h: i.naturalHeight}))"
            )
            marks = page.locator("mark").count()
            title = page.title()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert [url for url in requests if url != page_url and not url.startswith("data:")] == []
    assert title == "Run report rep"
    assert [image["alt"] for image in images] == [
        "label distribution", "confidence histogram", "reliability diagram", "coverage", "throughput over the run",
    ]  # fmt: skip
    assert all(image["done"] and image["w"] > 100 and image["h"] > 100 for image in images), images
    assert marks >= 4  # the sample rows' evidence words
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "report.png", SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 50_000


def test_make_test_installs_the_browser_first_and_make_report_makes_the_report():
    root = SCREENSHOT.parents[1]
    # --no-print-directory: under `make test` the inner make would otherwise add "Leaving directory" lines.
    command = ["make", "-n", "--no-print-directory", "test", "report", "OUTPUT=gs://b/run1"]
    plan = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    browser = next(i for i, line in enumerate(plan) if "apt-get install -y -q chromium" in line)
    tests = next(i for i, line in enumerate(plan) if "-m pytest" in line)
    assert browser < tests  # make test: chromium first
    assert plan[-1] == ".venv/bin/python -m pipelines.report gs://b/run1"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: run `make browser`")
def test_make_browser_is_quick_when_chromium_is_there():
    started = time.monotonic()
    subprocess.run(["make", "-s", "browser"], cwd=SCREENSHOT.parents[1], check=True, timeout=60)
    assert time.monotonic() - started < 5
