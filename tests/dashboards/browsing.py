"""Helpers for the browser tests: log in through the form, and keep screenshots for a person to look at."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.dashboards.seed import PASSWORD


def logged_in(browser, base: str, name: str, start: str = "/"):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20000)
    page.goto(base + start)
    assert "/login" in page.url  # pages need a login
    page.fill('input[name="name"]', name)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(re.compile(re.escape(base + start.split("?")[0]) + ".*"))
    return page


_IMAGES_SETTLED = "Array.from(document.images).every(i => !i.getAttribute('src') || i.complete)"
_BROKEN_IMAGES = "Array.from(document.images).filter(i => i.getAttribute('src') && !i.naturalWidth).map(i => i.src)"


def screenshot(page, name: str) -> None:
    """Save a full-page PNG under $ATELIER_SCREENS (when set) for a person to look at.

    Every image on the page must have loaded first: thumbnails are made on their first request, and a
    picture taken before they arrive shows grey boxes (a broken image fails here, screenshots or not)."""
    page.wait_for_function(_IMAGES_SETTLED)
    assert page.evaluate(_BROKEN_IMAGES) == [], f"{name}: images that did not load"
    folder = os.environ.get("ATELIER_SCREENS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
