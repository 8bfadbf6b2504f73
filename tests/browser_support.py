"""A real browser for the console tests: Playwright driving Debian's chromium by its path.

scripts/test installs both. With CI=true a missing browser fails the test; elsewhere it is a
skip that names what to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest

CHROMIUM = os.environ.get("OKM_CHROMIUM", "/usr/bin/chromium")


def chromium_path() -> str:
    if os.path.exists(CHROMIUM) or shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"no chromium at {CHROMIUM}: run scripts/test as root (it installs Debian's chromium) or set OKM_CHROMIUM"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    path = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # the test extras were not installed
        pytest.fail("the playwright package is missing: run scripts/test (it installs the test extras)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            await browser.close()
