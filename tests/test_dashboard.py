"""The dashboard in a real browser (Debian's chromium, driven by Playwright), as people use it:
finance drills from the organisation to an hour by clicking bars and rows, and every figure on
screen equals the marts to the cent; the back button and the breadcrumb step back up; a pasted
link opens the same view; a tenant's viewer cannot reach another tenant by link or filter; an
invoice downloads with its recorded sha256; an anomaly is acknowledged in the viewer's name.

Each run saves a screenshot of every page under reports/out/screenshots/ (README, docs/DASHBOARD.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.dashboard import browser as driving
from chargeback.dashboard import server
from chargeback.platform import warehouse
from conftest import database_of_its_own

pytestmark = [pytest.mark.warehouse, pytest.mark.browser]
playwright = pytest.importorskip("playwright.sync_api")

SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "out" / "screenshots"
OCTOBER = dt.date(2026, 10, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(test_warehouse, tmp_path_factory):
    import dashboard_data

    if not Path(driving.CHROMIUM).exists():
        pytest.fail(f"{driving.CHROMIUM} is missing: apt-get install chromium (make browser-deps, .ci/run)")
    with database_of_its_own("dashboard"):
        dashboard_data.build()
        log = tmp_path_factory.mktemp("dashboard") / "streamlit.log"
        with server.running(_free_port(), log=log) as url:
            yield url


@pytest.fixture(scope="module")
def browser(dashboard):
    with playwright.sync_playwright() as p:
        chromium = driving.launch(p)
        yield chromium
        chromium.close()


def sign_in(browser, url: str, user: str):
    """A fresh browser context (no cookies, no session) opening ``url`` and signing in as ``user``."""
    from dashboard_data import PASSWORD

    return driving.sign_in(browser, url, user, PASSWORD)


settle, metrics, bars, click_bar = driving.settle, driving.metrics, driving.bars, driving.click_bar


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def ledger(where: str = "true", *params, relation: str = "marts.int_ledger_daily") -> tuple[Decimal, Decimal]:
    """(billed, cost) of October in the marts, as the pipeline reads them."""
    billed, cost = query(f"select coalesce(sum(b.billed_amount), 0), coalesce(sum(b.cost_to_serve), 0)"
                         f" from {relation} as b join marts.dim_tenants as d using (tenant_id)"
                         f" where b.ledger_month = %s and {where}", OCTOBER, *params)[0]
    return billed, cost


def assert_headline(page, billed: Decimal, cost: Decimal) -> None:
    shown = metrics(page)
    assert (shown["Billed"], shown["Cost to serve"], shown["Margin"]) == (billed, cost, billed - cost)


def shoot(page, name: str) -> None:
    """The page from its top (Streamlit scrolls its main block, not the document)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    settle(page)
    page.evaluate("document.querySelector('[data-testid=stMain]')?.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_finance_drills_from_the_organisation_to_an_hour_and_every_figure_is_the_marts(dashboard, browser):
    page = sign_in(browser, f"{dashboard}explorer?month=2026-10", "fin")
    assert_headline(page, *ledger())
    top = bars(page)
    assert {g: v["Billed"] for g, v in top.items()} == dict(query(
        "select d.organisation, sum(b.billed_amount) from marts.int_ledger_daily as b join marts.dim_tenants as d"
        " using (tenant_id) where b.ledger_month = %s group by 1", OCTOBER))
    shoot(page, "explorer-1-organisations")

    click_bar(page, "Acme Corp")
    assert "org=Acme+Corp" in page.url or "org=Acme%20Corp" in page.url
    assert_headline(page, *ledger("d.organisation = %s", "Acme Corp"))
    unit = max(bars(page), key=lambda g: bars(page)[g]["Billed"])
    click_bar(page, unit)
    team = max(bars(page), key=lambda g: bars(page)[g]["Billed"])
    click_bar(page, team)
    assert_headline(page, *ledger("d.organisation = %s and d.business_unit = %s and d.team = %s",
                                  "Acme Corp", unit, team))
    tenant = max(bars(page), key=lambda g: bars(page)[g]["Billed"])
    click_bar(page, tenant)
    billed, cost = ledger("b.tenant_id = %s", tenant)
    assert_headline(page, billed, cost)
    shoot(page, "explorer-2-tenant-by-source")
    # what the figures are made of: the month's invoice lines add up to the billed amount, the
    # cost engine's allocations to the cost to serve
    page.get_by_text("Show what these figures are made of").click()
    page.wait_for_url(lambda url: "trace=1" in url)
    settle(page)
    made_of = page.locator("[data-testid=stMarkdownContainer]", has_text="— total").all_inner_texts()
    totals = {text.split(" — total ")[0].split(" of ")[0].strip(): Decimal(text.split(" — total ")[1].split()[0]
                                                                          .replace(",", "")) for text in made_of}
    assert totals == {"Invoice lines": billed, "Cost allocations": cost}
    shoot(page, "explorer-2b-what-it-is-made-of")
    page.get_by_text("Show what these figures are made of").click()
    page.wait_for_url(lambda url: "trace=1" not in url)
    settle(page)

    sources = bars(page)
    expected = dict(query("select source, sum(billed_amount) from marts.fct_showback_sources_daily"
                          " where ledger_month = %s and tenant_id = %s group by 1", OCTOBER, tenant))
    assert {s: v["Billed"] for s, v in sources.items()} == {s: a for s, a in expected.items() if s in sources}
    source = max((s for s in sources if not s.startswith("(")), key=lambda s: sources[s]["Billed"])
    click_bar(page, source)
    source_where = "b.tenant_id = %s and b.source = %s"
    assert_headline(page, *ledger(source_where, tenant, source, relation="marts.fct_showback_sources_daily"))
    meter = max(bars(page), key=lambda m: bars(page)[m]["Billed"])
    click_bar(page, meter)
    days = bars(page)
    assert len(days) == 31
    day = max(days, key=lambda d: days[d]["Billed"])
    click_bar(page, day)
    day_where = "b.tenant_id = %s and b.source = %s and b.meter = %s and b.ledger_day = %s"
    billed, cost = ledger(day_where, tenant, source, meter, dt.date.fromisoformat(day),
                          relation="marts.fct_showback_sources_daily")
    assert_headline(page, billed, cost)
    hours = bars(page)
    assert len(hours) == 24
    assert sum(h["Billed"] for h in hours.values()) == billed  # the hours add up to the day to the cent
    assert sum(h["Cost to serve"] for h in hours.values()) == cost
    shoot(page, "explorer-3-hours")
    hour = max(hours, key=lambda h: hours[h]["Billed"])
    click_bar(page, hour)
    assert f"hour={int(hour)}" in page.url or f"hour={hour}" in page.url
    assert metrics(page)["Billed"] == hours[hour]["Billed"]

    # the browser's back button steps back a level; the breadcrumb goes up several
    page.go_back()
    settle(page)
    assert "hour=" not in page.url
    assert_headline(page, billed, cost)
    page.get_by_role("button", name="Organisation: Acme Corp").click()
    page.wait_for_url(lambda url: "tenant=" not in url)
    assert_headline(page, *ledger("d.organisation = %s", "Acme Corp"))


def test_a_row_click_drills_and_a_pasted_link_opens_the_same_view_in_another_browser(dashboard, browser):
    page = sign_in(browser, f"{dashboard}explorer?month=2026-10&by=tenant", "fin")
    settle(page)
    grid = page.locator("[data-testid=stDataFrame]").first
    first_tenant = grid.locator("[role=gridcell]").first.inner_text()
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()  # the grid is a canvas: rows of 35 px under a 35 px header, the row marker leftmost
    page.mouse.click(box["x"] + 15, box["y"] + 35 + 17)
    page.wait_for_url(lambda url: f"tenant={first_tenant}" in url, timeout=30_000)
    link = page.url
    here = metrics(page)
    assert here["Billed"] == ledger("b.tenant_id = %s", first_tenant)[0]

    other = sign_in(browser, link, "fin")  # a new context: another browser, signed in afresh
    assert other.url == link
    assert metrics(other) == here
    assert other.get_by_text(f"Tenant: {first_tenant}").count() >= 1


def test_a_tenant_viewer_sees_only_its_tenant_whatever_the_link_or_filter(dashboard, browser):
    t007 = ledger("b.tenant_id = %s", "t007")
    page = sign_in(browser, f"{dashboard}explorer?month=2026-10", "t007")
    assert_headline(page, *t007)
    assert set(bars(page)) == {"Initech"}  # its own organisation, holding only itself

    for crafted in ("tenant=t002", "org=Acme+Corp", "by=tenant"):
        page.goto(f"{dashboard}explorer?month=2026-10&{crafted}")
        from dashboard_data import PASSWORD

        driving.submit(page, "t007", PASSWORD)  # a goto is a new session: sign in again
        shown = metrics(page)
        if crafted == "by=tenant":
            assert set(bars(page)) == {"t007"}
            assert shown["Billed"] == t007[0]
        else:
            assert shown["Billed"] == 0
            assert page.get_by_text("Nothing here in your scope").count() == 1
    shoot(page, "explorer-tenant-viewer-crafted-link")


def test_an_invoice_downloads_with_its_recorded_hash_and_only_to_its_tenant(dashboard, browser):
    (document_id, number, recorded), = query(
        "select document_id, invoice_number, pdf_sha256 from pipeline.invoices where tenant_id = 't007'"
        " and period_start = %s", OCTOBER)
    page = sign_in(browser, f"{dashboard}invoices", "t007")
    settle(page)
    grid = page.locator("[data-testid=stDataFrame]").first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()  # its only row: click its row marker (the grid is a canvas)
    page.mouse.click(box["x"] + 15, box["y"] + 35 + 17)
    page.wait_for_url(lambda url: f"document={document_id}" in url)
    settle(page)
    assert page.get_by_text(f"sha256 {recorded} checked against the record").count() == 1
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PDF").click()
    body = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == f"{number}.pdf"
    assert hashlib.sha256(body).hexdigest() == recorded
    assert body.startswith(b"%PDF")
    shoot(page, "invoices")

    (other,) = query("select document_id from pipeline.invoices where tenant_id = 't002' and period_start = %s",
                     OCTOBER)[0]
    page = sign_in(browser, f"{dashboard}invoices?document={other}", "t007")
    settle(page)
    assert page.get_by_text(f"Document {other}: document {other} is not one of yours").count() == 1
    assert page.get_by_role("button", name="Download PDF").count() == 0


def test_an_anomaly_is_acknowledged_from_the_page_in_the_viewers_name(dashboard, browser):
    (anomaly_id,) = query("select anomaly_id from insights.anomalies where tenant_id = 't002' and status = 'open'"
                          " order by actual - expected desc limit 1")[0]
    page = sign_in(browser, f"{dashboard}anomalies?id={anomaly_id}", "acme")
    settle(page)
    assert page.get_by_text("Volume + rate + mix =").count() == 1
    shoot(page, "anomalies")
    page.get_by_label("Why").fill("The orders launch: a planned load test")
    page.get_by_role("button", name="Acknowledge").click()
    page.get_by_text("Acknowledged as expected by acme").wait_for()
    assert query("select status, ack_kind, ack_by, ack_reason from insights.anomalies where anomaly_id = %s",
                 anomaly_id) == [("acknowledged", "expected", "acme", "The orders launch: a planned load test")]


def test_a_recommendation_is_dismissed_and_its_change_re_priced_on_the_spot(dashboard, browser):
    (rec_id, tenant, change, saving), = query(
        "select recommendation_id, tenant_id, change, saving from marts.fct_recommendations where tenant_id = 't007'"
        " order by saving desc limit 1")
    page = sign_in(browser, f"{dashboard}recommendations?month=2026-10&id={rec_id}", "t007")
    settle(page)
    page.get_by_label("Why").fill("We need the full logs for audits")
    page.get_by_role("button", name="Dismiss").click()
    page.get_by_text("Dismissed by t007: We need the full logs for audits").wait_for()
    assert query("select status, status_by from insights.recommendations where recommendation_id = %s",
                 rec_id) == [("dismissed", "t007")]

    page.get_by_label("Tenant").fill(tenant)
    page.get_by_label("Month (YYYY-MM)").fill("2026-10")
    page.get_by_label("Changes, one per line").fill(change)
    page.get_by_role("button", name="Re-price").click()
    settle(page)
    assert metrics(page)["The change saves a month"] == saving  # the what-if is the recommendation's saving
    shoot(page, "recommendations-whatif")

    page.get_by_label("Tenant").fill("t002")  # another tenant's month: refused, nothing re-priced
    page.get_by_role("button", name="Re-price").click()
    page.get_by_text("t002 is not in your scope").wait_for()


def test_idle_and_shared_cost_shown_apart_still_add_up_to_the_cost_to_serve(dashboard, browser):
    page = sign_in(browser, f"{dashboard}explorer?month=2026-10&ledger=cost", "fin")
    billed, cost = ledger()
    assert_headline(page, billed, cost)
    page.get_by_text("separate", exact=True).click()
    page.wait_for_url(lambda url: "idle=separate" in url)
    assert_headline(page, billed, cost)  # moved between rows, not lost
    shown = bars(page)
    (idle,) = query("select coalesce(sum(allocated_cost), 0) from intermediate.int_cost_allocations_daily"
                    " where cost_type = 'idle' and tenant_id is not null and cost_day >= %s and cost_day < %s",
                    OCTOBER, dt.date(2026, 11, 1))[0]
    assert shown["(idle capacity)"]["Cost to serve"] == idle
    assert idle > 0
    shoot(page, "explorer-idle-separate")
    page.go_back()  # the control follows the URL back; it does not push its old value again
    settle(page)
    assert "idle=" not in page.url
    assert "(idle capacity)" not in bars(page)


def test_every_page_draws_and_is_saved_as_a_screenshot(dashboard, browser):
    page = sign_in(browser, dashboard, "fin")
    for path, title in (("explorer", "Cost explorer"), ("budgets", "Forecast & budgets"),
                        ("anomalies", "Anomalies"), ("recommendations", "Ways to pay less"), ("invoices", "Invoices"),
                        ("pipeline", "Pipeline health")):
        page.get_by_role("link", name=title).first.click()
        page.wait_for_url(lambda url, path=path: f"/{path}" in url)
        page.get_by_role("heading", name=title).first.wait_for()
        settle(page)
        assert page.locator("[data-testid=stException]").count() == 0, title
        shoot(page, path)
    page.get_by_role("link", name="Overview").first.click()  # the default page, at /
    page.get_by_role("heading", name="Overview").first.wait_for()
    settle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    shoot(page, "overview")
