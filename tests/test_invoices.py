"""Invoices: rendered from the marts, read back from the PDF, checked to the cent.

Run with ``CHARGEBACK_TEST_DATABASE=cb_test_pdf`` to keep out of colleagues' databases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import logging
import re
import threading
from decimal import Decimal
from pathlib import Path

import fsspec
import pypdf
import pytest

from chargeback.billing import document, formatting, invoices, render
from chargeback.billing.document import Invoice, InvoiceError, InvoiceLine, Tenant
from chargeback.engine import transform
from chargeback.platform import warehouse
from chargeback.platform.money import round_money
from chargeback.platform.periods import Period

D = Decimal
ROOT = Path(__file__).resolve().parents[1]


def pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def flat(text: str) -> str:
    """The text on one line, as it reads: table cells wrap wherever the layout wants."""
    return re.sub(r"(?<=\w-) (?=\w)", "", " ".join(text.split()))


def cents(amount: Decimal) -> str:
    """How a total must read on the page: ``Decimal('1234.5') -> '1,234.50'``."""
    return f"{amount:,.2f}"


# --------------------------------------------------------------------------- pure rendering

TENANT = Tenant("t001", "Globex Cloud risk-staging", "Globex", "Cloud", "risk", "enterprise",
                "finance+risk@globex.example")
LINES = [
    InvoiceLine("ingested_gb", "Log data ingested", D("12345.678912"), "GB", D("0.420000"), D("5185.19"),
                "USD", "enterprise", "per_unit"),
    InvoiceLine("query_cpu_seconds", "Query engine CPU time", D("2345678.5"), "s", D("0.000300"), D("703.70"),
                "USD", "enterprise", "per_unit"),
    InvoiceLine("stored_gb", "Log data retained in storage", D("45210.333"), "GB", D("0.025000"), D("1130.26"),
                "USD", "enterprise", "per_unit"),
]
INVOICE = Invoice("CB-2026-000123", "t001", dt.date(2026, 10, 1), dt.date(2026, 10, 31), dt.date(2026, 11, 2),
                  "USD", D("7019.15"), "enterprise")


def test_fixed_columns_are_as_wide_as_their_widest_value_and_the_last_two_hold_the_total():
    """The lines table's fixed layout (render.LINE_COLUMNS): widths in ch from the printed values,
    never narrower than the headings; the total, in larger bold type, spans the last two."""
    rows = [{"quantity": "123,456,789.500", "unit": "GB-month", "unit_price": "0.0003", "list_amount": "1.00",
             "discount": "\u2014", "amount": "1.00"}]
    # 15 digits and separators; 8 letters at 1.2; the headings' minimums; then the total:
    # "1,234,567.89 USD" is (12 + 4 x 1.2) x 1.5 = 25.2 ch, so the last column grows by
    # 25.2 - (9.5 + 8.5 + 1.7) = 5.5
    assert render.column_widths(rows, ["744.95 USD", "1,234,567.89 USD"]) == pytest.approx(
        [15.0, 9.6, 6.5, 8.5, 9.5, 14.0])
    assert render.column_widths(rows, ["1.00 USD"]) == pytest.approx([15.0, 9.6, 6.5, 8.5, 9.5, 8.5])


def test_quantities_print_three_decimals_with_thousands_separators():
    assert formatting.format_quantity(D("2345678.5")) == "2,345,678.500"
    assert formatting.format_quantity(D("12345.678912")) == "12,345.679"
    assert formatting.format_quantity(D("0")) == "0.000"


def test_unit_prices_print_exactly_with_at_least_two_decimals():
    assert formatting.format_unit_price(D("0.000300"), "USD") == "0.0003 USD"
    assert formatting.format_unit_price(D("0.500000"), "USD") == "0.50 USD"
    assert formatting.format_unit_price(D("1200"), "EUR") == "1,200.00 EUR"


def test_period_must_be_a_month():
    feb = Period.parse("2024-02")
    assert (feb.first_day, feb.last_day) == (dt.date(2024, 2, 1), dt.date(2024, 2, 29))
    assert feb.window == (dt.datetime(2024, 2, 1, tzinfo=dt.UTC), dt.datetime(2024, 3, 1, tzinfo=dt.UTC))
    assert str(feb) == "2024-02"
    for bad in ("2026-13", "2026-1", "October", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            Period.parse(bad)


def test_invoice_pdf_shows_bill_to_period_number_and_total_to_the_cent():
    text = pdf_text(render.render_invoice_pdf(INVOICE, LINES, TENANT))
    for expected in ("Globex Cloud risk-staging", "t001", "Globex", "Cloud", "risk",
                     "finance+risk@globex.example", "CB-2026-000123", "2 November 2026",
                     "1 October 2026 – 31 October 2026", "enterprise", "INVOICE", "DRAFT",
                     "Log data ingested", "12,345.679", "2,345,678.500 s 0.0003 703.70 — 703.70",
                     "5,185.19", "Total 7,019.15 USD", "Page 1 of 1", "Chargeback — Log Platform",
                     "LIST AMOUNT", "DISCOUNT", "AMOUNT USD"):
        assert expected in text, expected


# A month with every kind of line: packages, a free allowance, two tiers across a price
# change, a retention class, a discount on each usage line, and an overage uplift.
PRICED_LINES = [
    InvoiceLine("alerts_fired", "Alert rules that fired — 250 alerts in packages of 100", D("3"), "100 alerts",
                D("1.00"), D("2.85"), "USD", "standard", "package", 1, "usage", None, D("3.00"), D("0.15")),
    InvoiceLine("ingested_gb", "Log data ingested — free allowance of 5 GB a month (prices from 2026-10-01)", D("5"),
                "GB", D("0"), D("0.00"), "USD", "standard", "graduated", 2, "free_allowance", None, D("0.00"),
                D("0.00")),
    InvoiceLine("ingested_gb", "Log data ingested — tier 1: up to 1,000 GB (prices from 2026-10-01)", D("695"), "GB",
                D("0.5"), D("330.12"), "USD", "standard", "graduated", 3, "usage", 1, D("347.50"), D("17.38")),
    InvoiceLine("ingested_gb", "Log data ingested — tier 2: 1,000 to 10,000 GB (prices from 2026-10-15)", D("395"),
                "GB", D("0.36"), D("135.09"), "USD", "standard", "graduated", 4, "usage", 2, D("142.20"), D("7.11")),
    InvoiceLine("stored_gb", "Log data retained in storage — 365-day retention", D("10"), "GB-month", D("0.08"),
                D("0.76"), "USD", "standard", "retention", 5, "usage", 4, D("0.80"), D("0.04")),
    InvoiceLine(None, "Overage uplift of 10% on 468.82 USD of usage above the commitment of 0.00 USD",
                D("468.82"), "USD", D("0.1"), D("46.88"), "USD", "standard", None, 6, "overage_uplift", None,
                D("46.88"), D("0")),
]
PRICED_INVOICE = dataclasses.replace(
    INVOICE, total=D("515.70"), price_book="standard", list_subtotal=D("493.50"), discount_total=D("24.68"),
    commitment_true_up=D("0"), overage_uplift=D("46.88"))


def test_invoice_pdf_shows_tiers_allowance_discount_and_contract_lines():
    text = flat(pdf_text(render.render_invoice_pdf(PRICED_INVOICE, PRICED_LINES, TENANT)))
    for expected in (
        "250 alerts in packages of 100", "3.000 100 alerts 1.00 3.00 −0.15 2.85",
        "free allowance of 5 GB a month", "5.000 GB 0.00 0.00 — 0.00",
        "tier 1: up to 1,000 GB", "695.000 GB 0.50 347.50 −17.38 330.12",
        "tier 2: 1,000 to 10,000 GB (prices from 2026-10-15)", "395.000 GB 0.36 142.20 −7.11 135.09",
        "365-day retention", "10.000 GB-month 0.08 0.80 −0.04 0.76",
        "Overage uplift of 10%", "468.82 USD 10% 46.88 — 46.88",
        "Usage at list prices 493.50 USD", "Discount −24.68 USD", "Overage uplift 46.88 USD",
        "Total 515.70 USD",
    ):
        assert expected in text, expected


def test_line_whose_amount_is_not_list_less_discount_is_refused():
    lines = [dataclasses.replace(PRICED_LINES[0], amount=D("2.86")), *PRICED_LINES[1:]]
    invoice = dataclasses.replace(PRICED_INVOICE, total=D("515.71"))
    with pytest.raises(InvoiceError, match=r"line 1 \(alerts_fired\): amount 2.86 is not list amount 3.00 less"):
        render.render_invoice_pdf(invoice, lines, TENANT)


def test_subtotal_that_disagrees_with_the_lines_is_refused():
    for field, value, what in (("list_subtotal", D("493.51"), "list subtotal"),
                               ("discount_total", D("24.67"), "discount total"),
                               ("overage_uplift", D("0"), "overage uplift"),
                               ("commitment_true_up", D("1.00"), "commitment true-up")):
        with pytest.raises(InvoiceError, match=f"{what} {value} differs from the sum of its lines"):
            render.render_invoice_pdf(dataclasses.replace(PRICED_INVOICE, **{field: value}), PRICED_LINES, TENANT)


def test_invoice_accepts_plain_mappings():
    pdf = render.render_invoice_pdf(dataclasses.asdict(INVOICE) | {"issuer": document.DEFAULT_ISSUER},
                                      [dataclasses.asdict(line) for line in LINES], dataclasses.asdict(TENANT))
    assert "7,019.15 USD" in pdf_text(pdf)


def test_same_invoice_renders_to_identical_bytes():
    assert render.render_invoice_pdf(INVOICE, LINES, TENANT) == render.render_invoice_pdf(INVOICE, LINES, TENANT)


def test_template_escapes_what_the_data_says():
    tenant = dataclasses.replace(TENANT, tenant_name='Acme <b>"Bold"</b> & Sons <img src="http://example.com/x.png">')
    html = render.render_invoice_html(INVOICE, LINES, tenant)
    assert "<b>" not in html
    assert "&lt;b&gt;&#34;Bold&#34;&lt;/b&gt; &amp; Sons &lt;img" in html
    assert 'Acme <b>"Bold"</b> & Sons' in pdf_text(render.render_invoice_pdf(INVOICE, LINES, tenant))


def test_long_invoice_repeats_table_header_and_prints_total_once():
    lines = [InvoiceLine(f"m{i:02d}", f"Meter {i}", D(i), "GB", D("0.5"), round_money(D(i) * D("0.5")), "USD", "std")
             for i in range(1, 61)]
    invoice = dataclasses.replace(INVOICE, total=sum((line.amount for line in lines), D(0)))
    reader = pypdf.PdfReader(io.BytesIO(render.render_invoice_pdf(invoice, lines, TENANT)))
    pages = [page.extract_text() for page in reader.pages]
    assert len(pages) > 1
    assert all("UNIT PRICE" in page for page in pages)
    assert [f"Page {n} of {len(pages)}" in page for n, page in enumerate(pages, 1)] == [True] * len(pages)
    assert [("Total " + cents(invoice.total)) in page for page in pages] == [False] * (len(pages) - 1) + [True]


def test_pdf_embeds_the_shipped_fonts_only():
    reader = pypdf.PdfReader(io.BytesIO(render.render_invoice_pdf(INVOICE, LINES, TENANT)))
    fonts = {font["/BaseFont"].split("+", 1)[-1]
             for page in reader.pages for font in page["/Resources"]["/Font"].values()}
    assert fonts == {"Chargeback-Sans", "Chargeback-Sans-Bold"}


def test_rendering_logs_no_warnings(caplog):
    """Every CSS rule is understood and every resource loads (WeasyPrint only logs those)."""
    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        render.render_invoice_pdf(INVOICE, LINES, TENANT)
    # The host's missing HarfBuzz-Subset library (fontTools subsets instead) is not ours to fix.
    assert [r.getMessage() for r in caplog.records if "HarfBuzz-Subset" not in r.getMessage()] == []


def test_total_that_disagrees_with_its_lines_is_refused():
    with pytest.raises(InvoiceError, match="differs from the sum of its lines"):
        render.render_invoice_pdf(dataclasses.replace(INVOICE, total=D("7019.16")), LINES, TENANT)


def test_float_money_is_refused():
    with pytest.raises(TypeError, match="float"):
        render.render_invoice_pdf(dataclasses.replace(INVOICE, total=7019.15), LINES, TENANT)


def test_url_fetcher_refuses_network_and_paths_outside_reports():
    fetcher = render.ReportsURLFetcher(ROOT / "reports")
    css = fetcher.fetch((ROOT / "reports" / "templates" / "invoice.css").as_uri())
    assert b"@font-face" in css.read()
    for url in ("http://example.com/logo.png", "https://example.com/font.ttf", "ftp://example.com/x",
                "data:text/css,body{}", "file:///etc/passwd", (ROOT / "pyproject.toml").as_uri(),
                (ROOT / "reports" / "templates" / ".." / ".." / "pyproject.toml").as_uri(),
                "file://otherhost/reports/templates/invoice.css"):
        with pytest.raises(render.URLRefusedError, match="refused"):
            fetcher.fetch(url)


def test_renderer_stops_on_an_http_url():
    html = '<html><body><p>x</p><img src="http://example.com/logo.png"></body></html>'
    with pytest.raises(InvoiceError, match=r"refused 'http://example.com/logo.png'.*no network"):
        render.html_to_pdf(html, reports_dir=ROOT / "reports", base_url=ROOT / "reports" / "templates" / "x.html")
    css = '<html><head><style>@import url("https://example.com/x.css");</style></head><body>x</body></html>'
    with pytest.raises(InvoiceError, match=r"refused 'https://example\.com/x\.css'"):
        render.html_to_pdf(css, reports_dir=ROOT / "reports", base_url=ROOT / "reports" / "templates" / "x.html")


def test_missing_font_stops_the_rendering_instead_of_falling_back(tmp_path):
    reports = tmp_path / "reports"
    (reports / "templates").mkdir(parents=True)
    for name in ("invoice.html", "invoice.css"):
        (reports / "templates" / name).write_text((ROOT / "reports" / "templates" / name).read_text())
    with pytest.raises(InvoiceError, match=r"DejaVuSans.*does not exist"):
        render.render_invoice_pdf(INVOICE, LINES, TENANT, reports_dir=reports)


# --------------------------------------------------------------------------- the month, from the warehouse

SNAPSHOT_TENANTS = ("t001", "t002", "t003")
# Invoiced every month: the tenants with usage, and those whose terms (config/tenants.yml)
# carry a monthly commitment, owed even without usage (t007, t008).
BILLED_TENANTS = ("t001", "t002", "t003", "t007", "t008")


def _snapshots(period_start: dt.date, hours: int = 6) -> list[tuple]:
    """Hand-made usage: a few hours of every meter for three tenants, odd decimals included."""
    rows = []
    start = dt.datetime(period_start.year, period_start.month, period_start.day, tzinfo=dt.UTC)
    meters = {"ingested_gb": ("GB", "counter", D("1234.5678")), "stored_gb": ("GB", "gauge", D("150012.5")),
              "scanned_gb": ("GB", "counter", D("25050.5")), "query_cpu_seconds": ("s", "counter", D("360075.25")),
              "alerts_fired": ("alerts", "counter", D("3"))}
    for t, tenant_id in enumerate(SNAPSHOT_TENANTS, 1):
        for h in range(hours):
            hour = start + dt.timedelta(hours=h)
            for meter, (unit, kind, base) in meters.items():
                odd = D(h) if meter == "alerts_fired" else (D(h) / D(7)).quantize(D("0.000001"))
                value = base * t + odd
                rows.append((f"{period_start:%Y%m}-{tenant_id}-{meter}-{h}", tenant_id, meter, value, unit, hour,
                             hour + dt.timedelta(minutes=5), kind, "test_invoices.py", len(rows) + 1, 0))
    return rows


def _build_marts(period_start: dt.date) -> None:
    """Publish the month's hand-made snapshots and run the real dbt transform over that month."""
    rows = _snapshots(period_start)
    with warehouse.connect() as conn:
        conn.cursor().executemany(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict (tenant_id, snapshot_id) do nothing",
            rows,
        )
    start = dt.datetime(period_start.year, period_start.month, 1, tzinfo=dt.UTC)
    # the invoice marts and what they read; the allocation models are not needed here
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")  # only the tests whose models are all built
        transform.build(start, (start + dt.timedelta(days=32)).replace(day=1),
                        select="+fct_invoices dim_tenants dim_meters")


def _mart_totals(period_start: dt.date) -> dict[str, Decimal]:
    with warehouse.connect() as conn:
        return dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                 (period_start,)).fetchall())


def _db_invoices(period_start: dt.date) -> dict[str, tuple]:
    with warehouse.connect() as conn:
        rows = conn.execute("select tenant_id, invoice_number, total, pdf_uri, pdf_sha256, status, issue_date"
                            " from pipeline.invoices where period_start = %s", (period_start,)).fetchall()
    return {row[0]: row[1:] for row in rows}


def _counter() -> int:
    with warehouse.connect() as conn:
        row = conn.execute("select last_number from pipeline.invoice_counters where issuer = 'chargeback'").fetchone()
    return row[0] if row else 0


def _read_uri(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def october(test_warehouse):
    """October 2030 built from snapshots and rendered once with two worker processes.

    A month far from the ones other test modules bill, so their data cannot mix with ours.
    """
    _build_marts(dt.date(2030, 10, 1))
    records = invoices.render_month("2030-10", workers=2, issue_date=dt.date(2030, 11, 2))
    return records


@pytest.mark.warehouse
def test_month_renders_one_pdf_per_tenant_with_the_mart_total_to_the_cent(october, settings):
    totals = _mart_totals(dt.date(2030, 10, 1))
    assert sorted(r.tenant_id for r in october) == sorted(totals) == list(BILLED_TENANTS)
    assert max(totals.values()) >= 1000  # the thousands separator is on the page too
    for record in october:
        path = Path(settings.reports_out) / "2030-10" / "drafts" / f"{record.tenant_id}.pdf"
        assert record.pdf_uri == str(path)
        text = pdf_text(path.read_bytes())
        assert isinstance(record.total, Decimal)
        assert record.total == totals[record.tenant_id]
        assert f"Total {cents(totals[record.tenant_id])} USD" in text
        assert f"Tenant ID {record.tenant_id}" in text
        assert record.invoice_number is None
        assert "Invoice number Draft — numbered when issued" in text
        assert "DRAFT" in text
        assert "Billing period 1 October 2030 – 31 October 2030" in text
        assert "Issue date 2 November 2030" in text
        tenant_name = {"t001": "Globex Cloud risk-staging", "t002": "Acme Corp Retail pricing-prod",
                       "t003": "Globex Cloud claims-prod", "t007": "Initech Core Banking risk-prod",
                       "t008": "Acme Corp Retail pricing-prod"}[record.tenant_id]
        assert tenant_name in text
    assert sorted(p.name for p in (Path(settings.reports_out) / "2030-10" / "drafts").iterdir()) == [
        f"{t}.pdf" for t in BILLED_TENANTS]  # no temporary files left behind


@pytest.mark.warehouse
def test_commitment_without_usage_is_invoiced_as_a_true_up(october):
    with warehouse.connect() as conn:
        lines = conn.execute("select tenant_id, line_no, line_type, amount from marts.fct_invoice_lines"
                             " where invoice_month = '2030-10-01' and tenant_id in ('t007', 't008')"
                             " order by tenant_id").fetchall()
    # config/tenants.yml: t007 commits to 500.00 a month from 2026-10-01, t008 to 20,000.00
    assert lines == [("t007", 1, "commitment_true_up", D("500.00")), ("t008", 1, "commitment_true_up", D("20000.00"))]
    text = flat(pdf_text(_read_uri(next(r.pdf_uri for r in october if r.tenant_id == "t008"))))
    assert "Minimum monthly commitment of 20,000.00 USD: true-up of usage of 0.00 USD" in text
    assert "1.000 month — 20,000.00 — 20,000.00" in text
    assert "Total 20,000.00 USD" in text


@pytest.mark.warehouse
def test_every_printed_line_amount_is_the_mart_amount(october):
    with warehouse.connect() as conn:
        # the PDF prints what the unit price applies to: units, or a package line's packages
        lines = conn.execute("select tenant_id, line_type, pricing_quantity, pricing_unit, unit_price, list_amount,"
                             " discount_amount, amount from marts.fct_invoice_lines"
                             " where invoice_month = '2030-10-01'").fetchall()
    texts = {r.tenant_id: flat(pdf_text(_read_uri(r.pdf_uri))) for r in october}
    assert len(lines) > len(texts)
    for tenant_id, line_type, quantity, unit, unit_price, list_amount, discount, amount in lines:
        if line_type == "overage_uplift":  # the amount above the commitment, at a percentage
            quantity, unit_price = cents(quantity), f"{(unit_price * 100).normalize():f}%"
        elif line_type == "commitment_true_up":  # one month, no unit price
            quantity, unit_price = formatting.format_quantity(quantity), "—"
        else:
            quantity, unit_price = formatting.format_quantity(quantity), formatting.format_unit_price(unit_price)
        row = " ".join([quantity, unit, unit_price, cents(list_amount), f"−{cents(discount)}" if discount else "—",
                        cents(amount)])
        assert row in texts[tenant_id], row


@pytest.mark.warehouse
def test_recorded_sha256_matches_the_pdf_file(october):
    recorded = _db_invoices(dt.date(2030, 10, 1))
    for record in october:
        number, total, uri, sha, status, issue_date = recorded[record.tenant_id]
        assert (number, total, uri, sha, status, issue_date) == (
            record.invoice_number, record.total, record.pdf_uri, record.pdf_sha256, "draft", dt.date(2030, 11, 2))
        assert hashlib.sha256(_read_uri(uri)).hexdigest() == sha


@pytest.mark.warehouse
def test_rerendered_drafts_replace_the_previous_and_take_no_number(october):
    before = _counter()
    again = invoices.render_month("2030-10", workers=2, issue_date=dt.date(2030, 11, 2))
    assert {r.tenant_id: r.invoice_number for r in again} == dict.fromkeys(BILLED_TENANTS)
    assert {r.tenant_id: r.pdf_sha256 for r in again} == {r.tenant_id: r.pdf_sha256 for r in october}
    assert _counter() == before
    invoices.render_month("2030-10", workers=1, issue_date=dt.date(2030, 11, 5))
    rows = _db_invoices(dt.date(2030, 10, 1))
    assert sorted(rows) == list(BILLED_TENANTS)  # one row per tenant, replaced
    assert rows["t001"][5] == dt.date(2030, 11, 5)
    assert {row[0] for row in rows.values()} == {None}
    assert _counter() == before


@pytest.mark.warehouse
def test_failed_render_takes_no_number_and_leaves_no_file(october, settings, monkeypatch):
    _build_marts(dt.date(2030, 12, 1))
    before = _counter()
    real = render.render_job

    def fail_on_t002(job):
        if job.tenant.tenant_id == "t002":
            raise RuntimeError("renderer crashed")
        return real(job)

    monkeypatch.setattr(render, "render_job", fail_on_t002)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        invoices.render_month("2030-12", workers=1, issue_date=dt.date(2031, 1, 2))
    assert _counter() == before
    assert _db_invoices(dt.date(2030, 12, 1)) == {}
    out = Path(settings.reports_out) / "2030-12"
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.warehouse
def test_invoices_can_go_to_any_fsspec_location(october, settings):
    memory = dataclasses.replace(settings, reports_out="memory://chargeback-invoices")
    records = invoices.render_month("2030-10", workers=2, settings=memory, issue_date=dt.date(2030, 11, 2))
    for record in records:
        assert record.pdf_uri == f"memory://chargeback-invoices/2030-10/drafts/{record.tenant_id}.pdf"
        assert hashlib.sha256(_read_uri(record.pdf_uri)).hexdigest() == record.pdf_sha256
    invoices.render_month("2030-10", workers=2, issue_date=dt.date(2030, 11, 2))  # back to the default location


@pytest.mark.warehouse
def test_month_without_invoices_is_a_clear_error(october):
    with pytest.raises(InvoiceError, match="no invoices for 2019-03"):
        invoices.render_month("2019-03")


@pytest.mark.warehouse
def test_mart_total_that_disagrees_with_its_lines_stops_the_month(october):
    before = _counter()
    with warehouse.connect() as conn:
        conn.execute("update marts.fct_invoices set total = total + 0.01"
                     " where tenant_id = 't002' and invoice_month = '2030-10-01'")
    try:
        with pytest.raises(InvoiceError, match=r"tenant t002\).*differs from the sum of its lines"):
            invoices.render_month("2030-10", workers=2, issue_date=dt.date(2030, 11, 2))
    finally:
        with warehouse.connect() as conn:
            conn.execute("update marts.fct_invoices set total = total - 0.01"
                         " where tenant_id = 't002' and invoice_month = '2030-10-01'")
    assert _counter() == before


@pytest.mark.warehouse
def test_concurrent_draft_runs_of_a_new_month_leave_one_draft_per_tenant(october):
    _build_marts(dt.date(2031, 1, 1))
    before = _counter()
    results: list[list[document.InvoiceRecord]] = []
    errors: list[BaseException] = []

    def run():
        try:
            results.append(invoices.render_month("2031-01", workers=1, issue_date=dt.date(2031, 2, 1)))
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    first, second = ({r.tenant_id: r.pdf_sha256 for r in result} for result in results)
    assert first == second
    assert sorted(_db_invoices(dt.date(2031, 1, 1))) == list(BILLED_TENANTS)
    assert _counter() == before


def test_missing_template_is_a_clear_error(tmp_path):
    with pytest.raises(InvoiceError, match=r"invoice template .*invoice\.html does not exist"):
        render.render_invoice_pdf(INVOICE, LINES, TENANT, reports_dir=tmp_path)
