"""Driving the dashboard in a real browser, as a person does: Debian's chromium through Playwright.

Shared by the browser tests (``tests/test_dashboard.py``) and the bench's P6 (click to drawn
chart), so both sign in, wait and click the same way. Playwright is a test dependency; Playwright's
own browser download is never used (``CHROMIUM``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

CHROMIUM = "/usr/bin/chromium"
IDLE = "[data-testid=stApp][data-test-script-state=notRunning][data-test-connection-state=CONNECTED]"
VIEWPORT = {"width": 1400, "height": 1300}


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def sign_in(browser: Any, url: str, user: str, password: str) -> Any:
    """A fresh context (no cookies, no session) opening ``url`` and signing in as ``user``; the page."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.goto(url)
    submit(page, user, password)
    return page


def submit(page: Any, user: str, password: str) -> None:
    """Fill and send the sign-in form shown on ``page``; returns once signed in."""
    page.get_by_label("User name").fill(user)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {user}").wait_for()


def settle(page: Any) -> None:
    """Until Streamlit's script runs are over (the app's own state attribute, as Streamlit's end-to-end
    tests wait), twice in a row: a drill's run ends by asking for another."""
    for _ in range(2):
        page.wait_for_timeout(120)
        page.locator(IDLE).wait_for(timeout=60_000)


def metrics(page: Any) -> dict[str, Decimal]:
    """The headline figures: label → amount (``"23,338.35 USD"`` → ``Decimal("23338.35")``), read
    once two reads in a row agree, both taken while no script run is going (a run redraws them, and a
    rerun can start after ``settle``), and every figure is drawn."""
    settle(page)
    page.locator("[data-testid=stMetricValue]").first.wait_for()
    read = """(idle) => document.querySelector(idle) === null ? null :
        [...document.querySelectorAll('[data-testid=stMetric]')].map(m => [
        m.querySelector('[data-testid=stMetricLabel]')?.innerText ?? '',
        m.querySelector('[data-testid=stMetricValue]')?.innerText ?? ''])"""
    previous = None
    for _ in range(100):
        current = page.evaluate(read, IDLE)
        if current and current == previous and all(label.strip() and value.strip() for label, value in current):
            break
        previous = current
        page.wait_for_timeout(100)
    else:
        raise TimeoutError(f"the headline figures did not settle: {current}")
    return {label.strip(): Decimal(value.replace(",", "").split()[0])
            for label, value in current if value.strip() not in ("—", "")}


def bars(page: Any) -> dict[str, dict[str, Decimal]]:
    """The first chart's bars: group → ledger → amount, read off the marks' aria labels."""
    settle(page)
    found: dict[str, dict[str, Decimal]] = {}
    chart = page.locator("[data-testid=stVegaLiteChart]").first
    labels = chart.locator("[role=graphics-symbol]").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    for label in labels:
        match = re.search(r"group: (.*?); ledger: (.*?);.*amount: (-?[\d,.]+)$", label or "")
        if match:
            found.setdefault(match[1], {})[match[2]] = Decimal(match[3].replace(",", ""))
    return found


def click_bar(page: Any, group: str) -> None:
    """Click the widest bar of ``group`` at the centre of its bounding box; returns once the drilled
    view is drawn (the URL changed, the runs are over, the chart has its marks)."""
    chart = page.locator("[data-testid=stVegaLiteChart]").first
    marks = chart.locator(f'[role=graphics-symbol][aria-label*="group: {group}; ledger:"]')
    widths = [(marks.nth(i).bounding_box() or {"width": -1})["width"] for i in range(marks.count())]
    if not widths:
        raise LookupError(f"no bar {group!r} in the chart")
    mark = marks.nth(widths.index(max(widths)))
    # to the middle of the view: at its edge a bar may sit under Streamlit's header, which takes the click
    mark.evaluate("e => e.scrollIntoView({block: 'center'})")
    box = _still(page, mark)
    before = page.url
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url(lambda url: url != before, timeout=60_000)
    # drawn: the breadcrumb ends with the value clicked (the drill's second run wrote it), that run
    # is over, and the new chart has its marks
    page.locator("[data-testid=stMarkdownContainer] strong", has_text=f": {group}").first.wait_for(timeout=60_000)
    page.locator(IDLE).wait_for(timeout=60_000)
    page.locator("[data-testid=stVegaLiteChart] [role=graphics-symbol]").first.wait_for()


def _still(page: Any, locator: Any) -> dict[str, float]:
    """``locator``'s bounding box once it stops moving (a scroll into view may be animated)."""
    box = locator.bounding_box()
    for _ in range(40):
        page.wait_for_timeout(25)
        again = locator.bounding_box()
        if again == box:
            return box
        box = again
    return box
