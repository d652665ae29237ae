"""Fixtures of the website tests: the served build and a headless Chromium.

Environment variables and helpers: see sitekit.py. Nothing here skips: a missing
build, browser or driver is a failure (`make site` and `make browser`, which
`make test` runs, provide them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from sitekit import (
    CHROMEDRIVER,
    CHROMIUM,
    CHROMIUM_FLAGS,
    HTML,
    INIT_SCRIPT,
    REPORT,
    SiteServer,
    missing_browser_message,
    require_build,
)


@pytest.fixture(scope="session")
def site():
    require_build()
    with SiteServer(HTML) as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    message = missing_browser_message()
    if message:
        pytest.fail(message, pytrace=False)
    # Selenium must never fetch a browser or driver: explicit paths skip Selenium Manager,
    # and these make sure it stays offline if it were ever consulted.
    os.environ["SE_OFFLINE"] = "true"
    os.environ["SE_AVOID_STATS"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gqa-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    started = time.perf_counter()
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": INIT_SCRIPT})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        REPORT["browser_seconds"] = time.perf_counter() - started


# ---------------------------------------------------------------- summary


def pytest_terminal_summary(terminalreporter):
    weights = REPORT["page_weights"]
    if weights:
        tr = terminalreporter
        tr.section("page weight (html + page-specific assets; shared _static scripts excluded)")
        tr.write_line(f"{'page':48s} {'html':>10s} {'assets':>10s} {'total':>10s} {'+shared':>10s}")
        for page, w in weights.items():
            tr.write_line(
                f"{page:48s} {w['html']:>10,d} {w['assets']:>10,d} {w['total']:>10,d} {w['shared']:>10,d}"
            )
    if REPORT["screenshots"]:
        terminalreporter.section("screenshots")
        for path in REPORT["screenshots"]:
            terminalreporter.write_line(str(path))
    if REPORT["browser_seconds"] is not None:
        terminalreporter.write_line(f"headless Chromium session: {REPORT['browser_seconds']:.1f} s")
