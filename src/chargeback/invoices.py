"""Invoices: one PDF per tenant and month, rendered from the marts and recorded in the warehouse.

The marts (``marts.fct_invoices``, ``marts.fct_invoice_lines``, ``marts.dim_tenants``) hold
every figure; this module only presents them. Money stays ``Decimal`` from the database to
the page and is printed with :func:`chargeback.money.format_money`; a printed total is the
mart's total, never a sum recomputed here (the renderer only checks that the two agree).

A month's invoices are drafts until the month is closed (:mod:`chargeback.close`):
:func:`render_month` renders and records them with no number ("numbered when issued"),
replacing the previous drafts. :func:`finalize_month` re-renders them from the current
marts as final documents and, in one transaction, takes their numbers from
``pipeline.invoice_counters`` (in tenant order), freezes their lines in
``pipeline.invoice_lines`` and marks them final; a failure anywhere leaves the drafts and
the counter as they were. Only issued documents consume numbers, so numbers are gapless
per issuer. Usage that changes a final month later is billed by a credit or debit note
(:func:`issue_corrections`) numbered from the same counter; the final invoice never
changes (the database refuses it, see ``sql/schema.sql``).

The HTML template and its CSS live in ``reports/templates``, the fonts in ``reports/fonts``.
WeasyPrint reads them through :class:`ReportsURLFetcher`, which serves files under
``reports/`` and nothing else: a rendering never reaches the network.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import multiprocessing
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

import fsspec
import jinja2
import psycopg
import weasyprint
from psycopg.rows import dict_row
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from chargeback import events, warehouse
from chargeback.money import format_money, round_money
from chargeback.settings import Settings, get_settings

log = logging.getLogger(__name__)

TEMPLATE = "invoice.html"
_PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_STATUS_LABELS = {"draft": "DRAFT", "final": "FINAL"}
DOCUMENT_TYPES = ("invoice", "credit_note", "debit_note")
_TITLES = {"invoice": "INVOICE", "credit_note": "CREDIT NOTE", "debit_note": "DEBIT NOTE"}
DRAFT_NUMBER = "Draft — numbered when issued"


class InvoiceError(RuntimeError):
    """Invoices cannot be rendered or recorded; the message says which period or tenant, and why."""


class URLRefusedError(FatalURLFetchingError):
    """The renderer asked for a resource outside ``reports/`` (network, other paths).

    A :class:`weasyprint.urls.FatalURLFetchingError`, so WeasyPrint stops instead of
    rendering without the resource; :func:`render_invoice_pdf` turns it into an
    :class:`InvoiceError`.
    """


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Issuer:
    """Who issues the invoices. Numbers are gapless per ``key``."""

    key: str = "chargeback"
    name: str = "Chargeback — Log Platform"
    number_prefix: str = "CB"
    lines: tuple[str, ...] = ("Shared log platform · internal chargeback",)


DEFAULT_ISSUER = Issuer()


@dataclasses.dataclass(frozen=True)
class Tenant:
    """A row of ``marts.dim_tenants``."""

    tenant_id: str
    tenant_name: str
    organisation: str
    business_unit: str
    team: str
    price_book: str
    billing_email: str | None = None


LINE_TYPES = ("usage", "free_allowance", "commitment_true_up", "overage_uplift")


@dataclasses.dataclass(frozen=True)
class InvoiceLine:
    """A row of ``marts.fct_invoice_lines``: a tier, free allowance or package of a meter, or a
    contract line (commitment true-up, overage uplift; no meter).

    ``list_amount`` is the amount before the tenant's discount (``None``: no discount, the
    amount itself); ``amount = list_amount - discount_amount``.
    """

    meter: str | None
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal | None
    """None on a commitment true-up (one month at its amount)."""
    amount: Decimal
    currency: str
    price_book: str | None
    pricing_model: str | None = None
    line_no: int | None = None
    line_type: str = "usage"
    tier: int | None = None
    list_amount: Decimal | None = None
    discount_amount: Decimal = Decimal(0)
    usage_quantity: Decimal | None = None
    """The metered quantity in ``usage_unit`` (``quantity`` is what the unit price applies to:
    packages for a package line); kept on issued lines, corrections compare it."""
    usage_unit: str | None = None


@dataclasses.dataclass(frozen=True)
class Invoice:
    """The header of one document: a row of ``marts.fct_invoices`` plus its number and dates
    (or a credit/debit note's differences, ``corrects`` naming the invoice)."""

    invoice_number: str | None
    """``None`` on a draft: numbers are taken when a document is issued."""
    tenant_id: str
    period_start: dt.date
    period_end: dt.date
    """Last day of the billing period (inclusive)."""
    issue_date: dt.date
    currency: str
    total: Decimal
    price_book: str
    status: str = "draft"
    issuer: Issuer = DEFAULT_ISSUER
    list_subtotal: Decimal | None = None
    """Usage and free-allowance lines at list prices; ``None`` prints no breakdown."""
    discount_total: Decimal | None = None
    commitment_true_up: Decimal | None = None
    overage_uplift: Decimal | None = None
    document_type: str = "invoice"
    corrects: str | None = None
    """A note's original invoice number."""
    notes: tuple[str, ...] = ()
    """Paragraphs printed above the fine print (an incomplete month's override)."""
    usage_as_of: dt.datetime | None = None
    """A final document's usage as Chargeback knew it at this instant (printed in the footer)."""


@dataclasses.dataclass(frozen=True)
class InvoiceRecord:
    """A rendered document as recorded in ``pipeline.invoices``."""

    invoice_number: str | None
    issuer: str
    tenant_id: str
    period_start: dt.date
    period_end: dt.date
    issue_date: dt.date
    currency: str
    total: Decimal
    pdf_uri: str
    pdf_sha256: str
    status: str
    document_type: str = "invoice"
    corrects: str | None = None
    usage_as_of: dt.datetime | None = None


_T = TypeVar("_T")


def _coerce(cls: type[_T], value: _T | Mapping[str, Any]) -> _T:
    """Accept the dataclass itself or a mapping with (at least) its fields."""
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in value.items() if k in names})


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"{what} must not be a float; pass Decimal or str")
    return Decimal(value)


# --------------------------------------------------------------------------- formatting


def format_date(day: dt.date) -> str:
    """``2026-10-01 -> "1 October 2026"`` (English month names whatever the locale)."""
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def format_quantity(quantity: Decimal) -> str:
    """Usage with three decimals and thousands separators: ``1234.5 -> "1,234.500"``."""
    return f"{_decimal(quantity, 'quantity'):,.3f}"


def format_unit_price(price: Decimal, currency: str | None = None) -> str:
    """A unit price exactly as priced, with at least two decimals: ``0.000400 -> "0.0004 USD"``
    (no currency code without ``currency``).

    Unit prices carry up to six decimals; printing them through the cent rounding of
    :func:`format_money` would show ``0.00`` for a price of ``0.0004``.
    """
    price = _decimal(price, "unit price").normalize()
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        price = price.quantize(Decimal("0.01"))
    return f"{price:,f} {currency}" if currency else f"{price:,f}"


def format_cents(amount: Decimal) -> str:
    """An amount of a line, in the invoice's currency: ``Decimal("1234.5") -> "1,234.50"``."""
    return f"{round_money(_decimal(amount, 'amount')):,.2f}"


def invoice_number(issuer: Issuer, period_start: dt.date, sequence: int) -> str:
    """``CB-2026-000123``: issuer prefix, year of the billing period, gapless sequence."""
    return f"{issuer.number_prefix}-{period_start.year}-{sequence:06d}"


def parse_period(period: str) -> tuple[dt.date, dt.date]:
    """``'2026-10' -> (2026-10-01, 2026-10-31)``: first and last day of the month."""
    match = _PERIOD_RE.match(period or "")
    if not match:
        raise InvoiceError(f"invoice period must look like YYYY-MM, got {period!r}")
    year, month = int(match[1]), int(match[2])
    return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])


# --------------------------------------------------------------------------- rendering


class ReportsURLFetcher(URLFetcher):
    """A WeasyPrint URL fetcher that serves files under ``root`` and refuses everything else.

    Only ``file:`` URLs whose resolved path lies inside ``root`` are read (so ``..`` and
    symlinks cannot escape); ``http(s):``, ``data:``, other paths and missing files raise
    :class:`URLRefusedError`, which stops the rendering.
    """

    def __init__(self, root: Path | str) -> None:
        super().__init__(fail_on_errors=True)
        self.root = Path(root).resolve()

    def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> URLFetcherResponse:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise URLRefusedError(
                f"invoice renderer refused {url!r}: only files under {self.root} may be loaded "
                "(no network access at render time)"
            )
        path = Path(url2pathname(parts.path)).resolve()
        if not path.is_relative_to(self.root):
            raise URLRefusedError(f"invoice renderer refused {url!r}: {path} is outside {self.root}")
        if not path.is_file():
            raise URLRefusedError(f"invoice renderer cannot load {url!r}: {path} does not exist")
        return URLFetcherResponse(path.as_uri(), path.read_bytes(), headers=_content_type(path))


def _content_type(path: Path) -> dict[str, str]:
    types = {".css": "text/css; charset=utf-8", ".ttf": "font/ttf", ".otf": "font/otf",
             ".woff": "font/woff", ".woff2": "font/woff2", ".png": "image/png",
             ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
    return {"Content-Type": types.get(path.suffix.lower(), "application/octet-stream")}


@functools.cache
def _template_environment(templates_dir: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def invoice_context(invoice: Invoice, lines: Sequence[InvoiceLine], tenant: Tenant) -> dict[str, Any]:
    """What the template sees: every value already formatted as printed."""
    status = invoice.status
    label = _STATUS_LABELS.get(status, status.upper())
    title = _TITLES.get(invoice.document_type, "INVOICE")
    return {
        "issuer": invoice.issuer,
        "tenant": tenant,
        "invoice": {
            "number": invoice.invoice_number or DRAFT_NUMBER,
            "numbered": invoice.invoice_number is not None,
            "title": title,
            "kind": title.capitalize() if invoice.document_type != "invoice" else "Invoice",
            "is_note": invoice.document_type != "invoice",
            "corrects": (f"Corrects invoice {invoice.corrects} of "
                         f"{_MONTHS[invoice.period_start.month - 1]} {invoice.period_start.year}"
                         if invoice.corrects else ""),
            "notes": list(invoice.notes),
            "usage_known": (f"usage known at {invoice.usage_as_of.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
                            if invoice.usage_as_of else ""),
            "issue_date": format_date(invoice.issue_date),
            "issue_date_iso": invoice.issue_date.isoformat(),
            "period": f"{format_date(invoice.period_start)} – {format_date(invoice.period_end)}",
            "period_from": format_date(invoice.period_start),
            "period_to": format_date(invoice.period_end),
            "currency": invoice.currency,
            "price_book": invoice.price_book,
            "total": format_money(invoice.total, invoice.currency),
            "status": status,
            "status_label": label,
            "status_note": "DRAFT — not for payment" if status == "draft" else label,
            "watermark": label if status != "final" else "",
        },
        "lines": [
            {
                "meter": line.meter or "",
                "kind": line.line_type,
                "description": line.description,
                "quantity": _printed_quantity(line),
                "unit": line.unit,
                "unit_price": _printed_unit_price(line),
                "list_amount": format_cents(_list_amount(line)),
                "discount": _deduction(line.discount_amount) if line.discount_amount else "—",
                "amount": format_cents(line.amount),
            }
            for line in lines
        ],
        "summary": _summary(invoice),
    }


def _printed_quantity(line: InvoiceLine) -> str:
    """Usage with three decimals; an uplift's base (usage above the commitment) in cents."""
    return format_cents(line.quantity) if line.line_type == "overage_uplift" else format_quantity(line.quantity)


def _printed_unit_price(line: InvoiceLine) -> str:
    """The price as priced; an uplift's rate as a percentage (``0.05 -> "5%"``); a dash for none."""
    if line.unit_price is None:
        return "—"
    if line.line_type == "overage_uplift":
        return f"{(_decimal(line.unit_price, 'unit price') * 100).normalize():f}%"
    return format_unit_price(line.unit_price)


def _deduction(discount: Decimal, currency: str | None = None) -> str:
    """A discount as it acts on the amount: ``3.50 -> "−3.50"``; a credit note's negative
    difference of a discount adds back, ``-1.75 -> "+1.75"``. With ``currency``: ``"−3.50 USD"``."""
    text = format_money(abs(discount), currency) if currency else format_cents(abs(discount))
    return ("+" if discount < 0 else "−") + text


def _list_amount(line: InvoiceLine) -> Decimal:
    return line.amount if line.list_amount is None else line.list_amount


def _summary(invoice: Invoice) -> list[dict[str, str]]:
    """The rows above the total: usage at list prices, discount, true-up, uplift (when the mart gave them)."""
    if invoice.list_subtotal is None:
        return []
    rows = [("Usage at list prices", format_money(invoice.list_subtotal, invoice.currency))]
    if invoice.discount_total:
        rows.append(("Discount", _deduction(invoice.discount_total, invoice.currency)))
    if invoice.commitment_true_up:
        rows.append(("Commitment true-up", format_money(invoice.commitment_true_up, invoice.currency)))
    if invoice.overage_uplift:
        rows.append(("Overage uplift", format_money(invoice.overage_uplift, invoice.currency)))
    return [{"label": label, "amount": amount} for label, amount in rows]


def check_invoice(invoice: Invoice, lines: Sequence[InvoiceLine], tenant: Tenant) -> None:
    """Refuse to print an invoice whose figures disagree with each other."""
    number = invoice.invoice_number or f"draft of {invoice.period_start:%Y-%m}"
    where = f"{invoice.document_type.replace('_', ' ')} {number} (tenant {invoice.tenant_id})"
    if tenant.tenant_id != invoice.tenant_id:
        raise InvoiceError(f"{where}: bill-to tenant is {tenant.tenant_id}")
    if not lines:
        raise InvoiceError(f"{where}: has no lines")
    total = _decimal(invoice.total, "total")
    if total != round_money(total):
        raise InvoiceError(f"{where}: total {total} is not in cents")
    for n, line in enumerate(lines, 1):
        name = f"line {line.line_no or n} ({line.meter or line.line_type})"
        if line.currency != invoice.currency:
            raise InvoiceError(f"{where}: {name} is in {line.currency}, invoice in {invoice.currency}")
        if line.line_type not in LINE_TYPES:
            raise InvoiceError(f"{where}: {name} has an unknown line type {line.line_type!r}")
        amounts = {"amount": line.amount, "list amount": _list_amount(line), "discount": line.discount_amount}
        for what, value in amounts.items():
            value = _decimal(value, what)
            if value != round_money(value):
                raise InvoiceError(f"{where}: {what} {value} of {name} is not in cents")
        if amounts["list amount"] - amounts["discount"] != amounts["amount"]:
            raise InvoiceError(
                f"{where}: {name}: amount {line.amount} is not list amount {amounts['list amount']}"
                f" less discount {line.discount_amount}"
            )
    line_sum = sum((_decimal(line.amount, "amount") for line in lines), Decimal(0))
    if line_sum != total:
        raise InvoiceError(f"{where}: total {total} differs from the sum of its lines {line_sum}")
    usage = [line for line in lines if line.line_type in ("usage", "free_allowance")]
    parts = {
        "list subtotal": (invoice.list_subtotal, sum((_list_amount(line) for line in usage), Decimal(0))),
        "discount total": (invoice.discount_total, sum((line.discount_amount for line in lines), Decimal(0))),
        "commitment true-up": (invoice.commitment_true_up, _sum_of(lines, "commitment_true_up")),
        "overage uplift": (invoice.overage_uplift, _sum_of(lines, "overage_uplift")),
    }
    for what, (printed, from_lines) in parts.items():
        if printed is not None and _decimal(printed, what) != from_lines:
            raise InvoiceError(f"{where}: {what} {printed} differs from the sum of its lines {from_lines}")


def _sum_of(lines: Sequence[InvoiceLine], line_type: str) -> Decimal:
    return sum((line.amount for line in lines if line.line_type == line_type), Decimal(0))


def render_invoice_html(invoice: Invoice | Mapping[str, Any], lines: Sequence[InvoiceLine | Mapping[str, Any]],
                        tenant: Tenant | Mapping[str, Any], *, reports_dir: Path | str | None = None) -> str:
    """The invoice as HTML (what :func:`render_invoice_pdf` lays out)."""
    invoice, tenant = _coerce(Invoice, invoice), _coerce(Tenant, tenant)
    lines = [_coerce(InvoiceLine, line) for line in lines]
    check_invoice(invoice, lines, tenant)
    templates = Path(reports_dir or get_settings().reports_dir) / "templates"
    try:
        template = _template_environment(str(templates)).get_template(TEMPLATE)
    except jinja2.TemplateNotFound:
        raise InvoiceError(f"invoice template {templates / TEMPLATE} does not exist") from None
    return template.render(invoice_context(invoice, lines, tenant))


def render_invoice_pdf(invoice: Invoice | Mapping[str, Any], lines: Sequence[InvoiceLine | Mapping[str, Any]],
                       tenant: Tenant | Mapping[str, Any], *, reports_dir: Path | str | None = None) -> bytes:
    """Render one invoice to PDF bytes. Pure: reads only the template, CSS and fonts.

    Same inputs give the same bytes with the same WeasyPrint and font subsetter: the PDF's
    creation date and its font subsets' timestamps are the issue date, not the clock.
    """
    invoice = _coerce(Invoice, invoice)
    reports_dir = Path(reports_dir or get_settings().reports_dir).resolve()
    html = render_invoice_html(invoice, lines, tenant, reports_dir=reports_dir)
    with _source_date(invoice.issue_date):
        return html_to_pdf(html, reports_dir=reports_dir, base_url=reports_dir / "templates" / TEMPLATE)


_source_date_lock = threading.Lock()


@contextlib.contextmanager
def _source_date(day: dt.date) -> Iterator[None]:
    """Pin the timestamp fontTools writes into each embedded font subset to ``day``.

    fontTools stamps a subset font with the current time unless ``SOURCE_DATE_EPOCH``
    (the reproducible-builds convention) is set; pinning it makes a PDF depend on the
    invoice only, so its sha256 is stable across re-renders of unchanged data.
    """
    epoch = str(calendar.timegm(day.timetuple()))
    with _source_date_lock:
        saved = os.environ.get("SOURCE_DATE_EPOCH")
        os.environ["SOURCE_DATE_EPOCH"] = epoch
        try:
            yield
        finally:
            if saved is None:
                del os.environ["SOURCE_DATE_EPOCH"]
            else:
                os.environ["SOURCE_DATE_EPOCH"] = saved


def html_to_pdf(html: str, *, reports_dir: Path | str, base_url: Path | str) -> bytes:
    """Lay out ``html`` with WeasyPrint, loading resources only through :class:`ReportsURLFetcher`."""
    fetcher = ReportsURLFetcher(reports_dir)
    try:
        document = weasyprint.HTML(string=html, base_url=str(base_url), url_fetcher=fetcher)
        return document.write_pdf(pdf_identifier=True)  # /ID derived from the content: reproducible
    except URLRefusedError as exc:
        raise InvoiceError(str(exc)) from None
    except FatalURLFetchingError as exc:
        raise InvoiceError(f"{exc}: {exc.__cause__}") from None


# --------------------------------------------------------------------------- the month


@dataclasses.dataclass(frozen=True)
class _Job:
    invoice: Invoice
    lines: tuple[InvoiceLine, ...]
    tenant: Tenant
    reports_dir: str
    name: str = ""
    """The PDF's path under the month's directory, without ``.pdf`` (default: the tenant)."""

    @property
    def key(self) -> str:
        return self.name or self.tenant.tenant_id


def _render_job(job: _Job) -> bytes:
    """Runs in a worker process: plain data in, PDF bytes out."""
    return render_invoice_pdf(job.invoice, job.lines, job.tenant, reports_dir=job.reports_dir)


def render_month(period: str, *, workers: int = 2, settings: Settings | None = None,
                 issue_date: dt.date | None = None, issuer: Issuer = DEFAULT_ISSUER) -> list[InvoiceRecord]:
    """Render and record the invoices of ``period`` (``'YYYY-MM'``) as drafts, one PDF per tenant.

    Drafts carry no number (numbers are taken when the month is finalized) and replace the
    month's previous drafts, rows and files: PDFs go to ``<reports_out>/<YYYY-MM>/drafts/<tenant_id>.pdf``.
    ``issue_date`` (printed as the expected issue date) defaults to today (UTC). ``workers``
    processes render in parallel; ``workers=1`` renders in this process. Raises
    :class:`InvoiceError` when the marts hold no invoice for the period, when figures
    disagree, or when the month is already final.

    Worker processes start by forkserver (else spawn) and import the caller's main module:
    a script calling this needs the usual ``if __name__ == "__main__":`` guard.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    settings = settings or get_settings()
    period_start, _ = parse_period(period)
    issue_date = issue_date or dt.datetime.now(dt.UTC).date()

    warehouse.ensure_schema(settings)
    headers, lines_by_tenant, tenants, _ = _read_month(period_start, settings)
    _require_headers(period, headers)
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    reports_dir = str(settings.reports_dir.resolve())
    jobs = _assemble(period, headers, lines_by_tenant, tenants, issuer, reports_dir, issue_date=issue_date,
                     name=lambda tenant_id: f"drafts/{tenant_id}")

    with warehouse.connect(settings) as conn:
        _lock_issuer(conn, issuer)
        final = conn.execute(
            "select tenant_id, invoice_number from pipeline.invoices where period_start = %s"
            " and document_type = 'invoice' and status = 'final' order by tenant_id limit 1", (period_start,),
        ).fetchone()
        if final:
            line = events.refuse(
                f"invoices of {period}", f"invoice {final[1]} of tenant {final[0]} for {period} is final; "
                "only drafts are re-rendered", "corrections of a closed month are issued as credit or debit "
                "notes by the next close (chargeback close)", where=final[1], settings=settings)
            raise InvoiceError(line)
        written = _render_and_write(jobs, fs, f"{out_root.rstrip('/')}/{period}", workers)
        records = [_record_of(job, issuer, settings.reports_out, period, written) for job in jobs]
        _record_drafts(conn, records, period_start)
    log.info("rendered %d draft invoices for %s", len(records), period)
    return records


def finalize_month(period: str, *, workers: int = 2, settings: Settings | None = None,
                   issue_date: dt.date | None = None, notes: Sequence[str] = (),
                   issuer: Issuer = DEFAULT_ISSUER) -> list[InvoiceRecord]:
    """Issue the month's invoices: re-render them from the current marts as final documents.

    Late usage that reached the marts during the grace period counts. The final PDFs are
    written first (``<reports_out>/<YYYY-MM>/<invoice number>.pdf``); then one transaction
    takes the numbers (tenant order, from the issuer's counter), freezes the lines the
    documents show in ``pipeline.invoice_lines`` and marks the invoices final with their
    issue date, ``usage_as_of`` (when the marts were read) and sha256. If anything fails —
    a PDF that cannot be written (no space), the database — nothing is final, the drafts and
    the counter are as they were, and running it again completes the month. ``notes`` are
    printed on every invoice (an override of the completeness check). A month already final
    is returned as issued.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    settings = settings or get_settings()
    period_start, _ = parse_period(period)
    warehouse.ensure_schema(settings)
    headers, lines_by_tenant, tenants, usage_as_of = _read_month(period_start, settings)
    _require_headers(period, headers)
    issue_date = issue_date or usage_as_of.date()
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    out_dir = f"{out_root.rstrip('/')}/{period}"
    reports_dir = str(settings.reports_dir.resolve())

    with warehouse.connect(settings) as conn:
        last_number = _lock_issuer(conn, issuer)
        issued = final_documents(conn, period_start, document_type="invoice")
        late = {h["tenant_id"] for h in headers} - {r.tenant_id for r in issued}
        if issued and not late:
            log.info("the invoices of %s are final already (%d)", period, len(issued))
            return issued
        if issued:  # tenants first billed after the month was issued: their own invoices, issued now
            headers = [h for h in headers if h["tenant_id"] in late]
            log.info("%s is final already; issuing the invoices of tenants billed since: %s", period, sorted(late))
        tenant_ids = sorted(h["tenant_id"] for h in headers)
        numbers = {t: invoice_number(issuer, period_start, last_number + n) for n, t in enumerate(tenant_ids, 1)}
        jobs = _assemble(period, headers, lines_by_tenant, tenants, issuer, reports_dir, issue_date=issue_date,
                         status="final", numbers=numbers, notes=tuple(notes), usage_as_of=usage_as_of,
                         name=lambda tenant_id: numbers[tenant_id])
        written = _render_and_write(jobs, fs, out_dir, workers)
        records = [_record_of(job, issuer, settings.reports_out, period, written) for job in jobs]
        for job, record in zip(jobs, records, strict=True):
            _record_final(conn, record, job.lines, close_period=period_start)
        conn.execute("update pipeline.invoice_counters set last_number = %s where issuer = %s",
                     (last_number + len(jobs), issuer.key))
        conn.execute("update pipeline.month_closes set finalized_at = now() where period = %s"
                     " and finalized_at is null", (period_start,))
    for job in jobs:  # the drafts are superseded; a leftover is harmless, so failures only warn
        draft = f"{out_dir}/drafts/{job.tenant.tenant_id}.pdf"
        with contextlib.suppress(OSError):
            if fs.exists(draft):
                fs.rm(draft)
    log.info("finalized %d invoices for %s: %s to %s", len(records), period,
             records[0].invoice_number, records[-1].invoice_number)
    return sorted([*issued, *records], key=lambda r: r.invoice_number)


def months_with_unissued_tenants(close_period: str, *, settings: Settings | None = None,
                                 issuer: Issuer = DEFAULT_ISSUER) -> list[str]:
    """Final months before ``close_period`` where the marts now bill a tenant that has no invoice.

    A tenant whose first usage of a month arrived after the month was issued has nothing to
    correct: :func:`finalize_month` issues its own invoice.
    """
    with warehouse.connect(settings) as conn:
        try:
            rows = conn.execute(
                """
                select distinct to_char(f.invoice_month, 'YYYY-MM') from marts.fct_invoices as f
                where f.invoice_month < %(close)s
                  and exists (select from pipeline.invoices as i
                              where i.period_start = f.invoice_month and i.document_type = 'invoice'
                                and i.status = 'final' and i.issuer = %(issuer)s)
                  and not exists (select from pipeline.invoices as i
                                  where i.period_start = f.invoice_month and i.tenant_id = f.tenant_id
                                    and i.document_type = 'invoice' and i.status = 'final')
                order by 1
                """,
                {"close": parse_period(close_period)[0], "issuer": issuer.key},
            ).fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise InvoiceError(f"the marts are missing ({exc.diag.message_primary}); run the transform first") from exc
    return [month for (month,) in rows]


_LINE_LABELS = {"usage": "Usage", "free_allowance": "Free allowance", "commitment_true_up": "Commitment true-up",
                "overage_uplift": "Overage uplift"}

# Per final invoice of a month before the closing one, per line type and meter: what the
# marts say now minus what has been issued (the invoice's lines and its notes' lines).
_CORRECTIONS_SQL = """
    with originals as (
        select document_id, invoice_number, tenant_id, period_start
        from pipeline.invoices
        where document_type = 'invoice' and status = 'final' and issuer = %(issuer)s
          and period_start < %(close)s
    ),
    issued as (
        select o.invoice_number, l.line_type, coalesce(l.meter, '') as meter, max(l.unit) as unit,
               sum(l.quantity) as quantity, sum(l.list_amount) as list_amount,
               sum(l.discount_amount) as discount_amount, sum(l.amount) as amount
        from originals as o
        join pipeline.invoices as d
            on d.document_id = o.document_id or (d.corrects = o.invoice_number and d.status = 'final')
        join pipeline.invoice_lines as l on l.document_id = d.document_id
        group by 1, 2, 3
    ),
    current_lines as (
        select o.invoice_number, m.line_type, coalesce(m.meter, '') as meter, max(m.unit) as unit,
               sum(m.quantity) as quantity, sum(m.list_amount) as list_amount,
               sum(m.discount_amount) as discount_amount, sum(m.amount) as amount
        from originals as o
        join marts.fct_invoice_lines as m on m.tenant_id = o.tenant_id and m.invoice_month = o.period_start
        group by 1, 2, 3
    ),
    differences as (
        select coalesce(c.invoice_number, i.invoice_number) as invoice_number,
               coalesce(c.line_type, i.line_type) as line_type,
               nullif(coalesce(c.meter, i.meter), '') as meter,
               coalesce(c.unit, i.unit) as unit,
               coalesce(c.quantity, 0) - coalesce(i.quantity, 0) as quantity,
               coalesce(c.list_amount, 0) - coalesce(i.list_amount, 0) as list_amount,
               coalesce(c.discount_amount, 0) - coalesce(i.discount_amount, 0) as discount_amount,
               coalesce(c.amount, 0) - coalesce(i.amount, 0) as amount
        from current_lines as c
        full join issued as i
            on c.invoice_number = i.invoice_number and c.line_type = i.line_type and c.meter = i.meter
    )
    select d.invoice_number, o.tenant_id, o.period_start, d.line_type, d.meter, d.unit,
           d.quantity, d.list_amount, d.discount_amount, d.amount
    from differences as d
    join originals as o using (invoice_number)
    where d.quantity <> 0 or d.list_amount <> 0 or d.discount_amount <> 0 or d.amount <> 0
    order by d.invoice_number, d.line_type in ('commitment_true_up', 'overage_uplift'), d.meter collate "C",
             d.line_type
"""


def issue_corrections(close_period: str, *, settings: Settings | None = None, issue_date: dt.date | None = None,
                      issuer: Issuer = DEFAULT_ISSUER) -> list[InvoiceRecord]:
    """Issue a credit or debit note for every final invoice of a month before ``close_period``
    whose month the marts now bill differently from what was issued.

    An issued invoice never changes: the difference, per line type and meter (quantity and
    amounts), becomes a note of its own, final at once, ``corrects`` naming the invoice,
    numbered from the same gapless counter, its PDF at ``<reports_out>/<month>/<number>.pdf``.
    A credit note when the total falls, a debit note when it rises. Notes already issued
    count as issued, so running it again issues nothing new. Differences in quantity only
    (money unchanged) issue no note.
    """
    settings = settings or get_settings()
    close_start, _ = parse_period(close_period)
    warehouse.ensure_schema(settings)
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    reports_dir = str(settings.reports_dir.resolve())
    with warehouse.connect(settings) as conn:
        last_number = _lock_issuer(conn, issuer)
        (usage_as_of,) = conn.execute("select statement_timestamp()").fetchone()
        try:
            rows = conn.execute(_CORRECTIONS_SQL, {"issuer": issuer.key, "close": close_start}).fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise InvoiceError(f"the marts are missing ({exc.diag.message_primary}); run the transform first") from exc
        by_invoice: dict[str, list[tuple]] = {}
        for row in rows:
            by_invoice.setdefault(row[0], []).append(row)
        due = {number: diffs for number, diffs in by_invoice.items() if any(any(r[7:10]) for r in diffs)}
        if not due:
            return []
        originals = {row[0]: row for row in conn.execute(
            "select invoice_number, tenant_id, period_start, period_end, currency from pipeline.invoices"
            " where invoice_number = any(%s)", (list(due),))}
        tenants = _read_tenants(conn, sorted({o[1] for o in originals.values()}))
        issue_date = issue_date or usage_as_of.date()
        jobs: list[_Job] = []
        for n, number in enumerate(sorted(due), 1):
            _, tenant_id, period_start, period_end, currency = originals[number]
            lines = tuple(
                InvoiceLine(meter=meter, description=f"{_LINE_LABELS.get(line_type, line_type)} — difference to "
                            f"invoice {number}", quantity=quantity, unit=unit or "", unit_price=None, amount=amount,
                            currency=currency, price_book=None, line_no=k, line_type=line_type,
                            list_amount=list_amount, discount_amount=discount_amount,
                            usage_quantity=quantity, usage_unit=unit)
                for k, (_, _, _, line_type, meter, unit, quantity, list_amount, discount_amount, amount)
                in enumerate(due[number], 1)
            )
            total = sum((line.amount for line in lines), Decimal(0))
            note_number = invoice_number(issuer, close_start, last_number + n)
            invoice = Invoice(
                invoice_number=note_number, tenant_id=tenant_id, period_start=period_start, period_end=period_end,
                issue_date=issue_date, currency=currency, total=total, price_book=tenants[tenant_id].price_book,
                status="final", issuer=issuer, document_type="credit_note" if total < 0 else "debit_note",
                corrects=number, usage_as_of=usage_as_of)
            check_invoice(invoice, lines, tenants[tenant_id])
            jobs.append(_Job(invoice, lines, tenants[tenant_id], reports_dir,
                             name=f"{period_start:%Y-%m}/{note_number}"))
        written = _render_and_write(jobs, fs, out_root.rstrip("/"), 1)
        records = [_record_of(job, issuer, settings.reports_out, "", written) for job in jobs]
        for job, record in zip(jobs, records, strict=True):
            _record_final(conn, record, job.lines, close_period=close_start)
        conn.execute("update pipeline.invoice_counters set last_number = %s where issuer = %s",
                     (last_number + len(jobs), issuer.key))
    for record in records:
        log.info("issued %s %s correcting %s: %s %s", record.document_type.replace("_", " "),
                 record.invoice_number, record.corrects, record.total, record.currency)
    return records


def verify(period: str | None = None, *, settings: Settings | None = None) -> int:
    """Re-hash every final document's PDF (of ``period``, else all) and compare with ``pdf_sha256``.

    Each missing or changed file is a refusal line naming the document and the file; then
    :class:`InvoiceError` carries them all. Returns how many documents matched.
    """
    settings = settings or get_settings()
    warehouse.ensure_schema(settings)
    query = ("select invoice_number, pdf_uri, pdf_sha256 from pipeline.invoices where status = 'final'"
             + (" and period_start = %s" if period else "") + " order by invoice_number")
    with warehouse.connect(settings) as conn:
        rows = conn.execute(query, (parse_period(period)[0],) if period else ()).fetchall()
    problems: list[str] = []
    for number, uri, expected in rows:
        try:
            with fsspec.open(uri, "rb") as f:
                actual = hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            why = f"its PDF {uri} is missing"
        else:
            if actual == expected:
                continue
            why = f"its PDF {uri} has sha256 {actual}, but {expected} was recorded when it was issued"
        problems.append(events.refuse(
            f"issued document {number}", why, "restore the issued file from backup; never re-render a final "
            "document", where=uri, settings=settings))
    if problems:
        raise InvoiceError("\n".join(problems))
    return len(rows)


def final_documents(conn: psycopg.Connection, period_start: dt.date, *,
                    document_type: str | None = None) -> list[InvoiceRecord]:
    """The final documents of a billing month (invoices and the notes correcting them)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select invoice_number, issuer, tenant_id, period_start, period_end, issue_date, currency, total,"
            " pdf_uri, pdf_sha256, status, document_type, corrects, usage_as_of from pipeline.invoices"
            " where period_start = %s and status = 'final' and (%s::text is null or document_type = %s)"
            " order by invoice_number",
            (period_start, document_type, document_type),
        ).fetchall()
    return [InvoiceRecord(**row) for row in rows]


def _require_headers(period: str, headers: Sequence[Mapping[str, Any]]) -> None:
    if not headers:
        raise InvoiceError(
            f"no invoices for {period} in marts.fct_invoices: the month has no billed usage, "
            "or the transform has not run for it"
        )


def _lock_issuer(conn: psycopg.Connection, issuer: Issuer) -> int:
    """Lock the issuer's counter row until the caller's transaction ends; its last number.

    Every run that records documents of the issuer takes this lock first, so concurrent
    runs take turns and a rolled-back run leaves the counter where it was (no gaps).
    """
    conn.execute(
        "insert into pipeline.invoice_counters (issuer, last_number) values (%s, 0) on conflict (issuer) do nothing",
        (issuer.key,),
    )
    (last_number,) = conn.execute(
        "select last_number from pipeline.invoice_counters where issuer = %s for update", (issuer.key,)
    ).fetchone()
    return last_number


def _assemble(period: str, headers: Sequence[Mapping[str, Any]], lines_by_tenant: Mapping[str, list[InvoiceLine]],
              tenants: Mapping[str, Tenant], issuer: Issuer, reports_dir: str, *, issue_date: dt.date,
              status: str = "draft", numbers: Mapping[str, str] | None = None, notes: tuple[str, ...] = (),
              usage_as_of: dt.datetime | None = None, name=None) -> list[_Job]:
    """One invoice per header, checked against its lines and tenant (before any process starts)."""
    period_start, period_end = parse_period(period)
    jobs: list[_Job] = []
    for header in headers:
        tenant_id = header["tenant_id"]
        lines = lines_by_tenant.get(tenant_id, [])
        if tenant_id not in tenants:
            raise InvoiceError(f"{period}: tenant {tenant_id} is invoiced but missing from marts.dim_tenants")
        if header["line_count"] is not None and header["line_count"] != len(lines):
            raise InvoiceError(
                f"{period}: tenant {tenant_id} has line_count {header['line_count']} in marts.fct_invoices "
                f"but {len(lines)} rows in marts.fct_invoice_lines"
            )
        books = sorted({line.price_book for line in lines if line.price_book}) or [tenants[tenant_id].price_book]
        invoice = Invoice(
            invoice_number=(numbers or {}).get(tenant_id),
            tenant_id=tenant_id,
            period_start=period_start,
            period_end=period_end,
            issue_date=issue_date,
            currency=header["currency"],
            total=header["total"],
            price_book=", ".join(books),
            status=status,
            issuer=issuer,
            list_subtotal=header["list_subtotal"],
            discount_total=header["discount_total"],
            commitment_true_up=header["commitment_true_up"],
            overage_uplift=header["overage_uplift"],
            notes=notes,
            usage_as_of=usage_as_of,
        )
        check_invoice(invoice, lines, tenants[tenant_id])
        jobs.append(_Job(invoice, tuple(lines), tenants[tenant_id], reports_dir,
                         name=name(tenant_id) if name else ""))
    return jobs


def _record_of(job: _Job, issuer: Issuer, reports_out: str, period: str,
               written: Mapping[str, tuple[str, str]]) -> InvoiceRecord:
    invoice = job.invoice
    return InvoiceRecord(
        invoice_number=invoice.invoice_number,
        issuer=issuer.key,
        tenant_id=invoice.tenant_id,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        issue_date=invoice.issue_date,
        currency=invoice.currency,
        total=invoice.total,
        pdf_uri=_pdf_uri(reports_out, f"{period}/{job.key}" if period else job.key),
        pdf_sha256=written[job.key][1],
        status=invoice.status,
        document_type=invoice.document_type,
        corrects=invoice.corrects,
        usage_as_of=invoice.usage_as_of,
    )


def _pdf_uri(reports_out: str, name: str) -> str:
    """Where the PDF ``<name>.pdf`` is, in the form ``reports_out`` is configured in (any fsspec URL opens it).

    An absolute path for a local ``reports_out``, else a URL under it: ``s3://bucket/2026-10/CB-2026-000001.pdf``.
    """
    if "://" not in reports_out and "::" not in reports_out:
        return str((Path(reports_out) / f"{name}.pdf").resolve())
    return f"{reports_out.rstrip('/')}/{name}.pdf"


def _read_month(period_start: dt.date, settings: Settings) -> tuple[
        list[dict[str, Any]], dict[str, list[InvoiceLine]], dict[str, Tenant], dt.datetime]:
    """The month's invoice headers, lines and tenants: one query each, one consistent snapshot,
    and the instant of that snapshot (what "usage known at" means on an issued invoice)."""
    try:
        with warehouse.connect(settings) as conn:
            conn.execute("set transaction isolation level repeatable read, read only")
            (as_of,) = conn.execute("select statement_timestamp()").fetchone()  # the snapshot is taken here
            with conn.cursor(row_factory=dict_row) as cur:
                headers = cur.execute(
                    "select tenant_id, total, currency, line_count, list_subtotal, discount_total,"
                    " commitment_true_up, overage_uplift from marts.fct_invoices"
                    " where invoice_month = %s order by tenant_id",
                    (period_start,),
                ).fetchall()
                line_rows = cur.execute(
                    # what the unit price applies to: a package line prints its packages ("36 x 100 alerts")
                    "select tenant_id, line_no, line_type, meter, description, tier,"
                    " pricing_quantity as quantity, pricing_unit as unit, unit_price,"
                    " list_amount, discount_amount, amount, currency, price_book, pricing_model,"
                    " quantity as usage_quantity, unit as usage_unit"
                    " from marts.fct_invoice_lines"
                    " where invoice_month = %s order by tenant_id, line_no",
                    (period_start,),
                ).fetchall()
            tenants = _read_tenants(conn, [h["tenant_id"] for h in headers])
    except psycopg.errors.UndefinedTable as exc:
        raise InvoiceError(f"the marts are missing ({exc.diag.message_primary}); run the transform first") from exc
    lines: dict[str, list[InvoiceLine]] = {}
    for row in line_rows:
        lines.setdefault(row.pop("tenant_id"), []).append(InvoiceLine(**row))
    return headers, lines, tenants, as_of


def _read_tenants(conn: psycopg.Connection, tenant_ids: Sequence[str]) -> dict[str, Tenant]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select tenant_id, tenant_name, organisation, business_unit, team, price_book, billing_email"
            " from marts.dim_tenants where tenant_id = any(%s)", (list(tenant_ids),),
        ).fetchall()
    return {row["tenant_id"]: Tenant(**row) for row in rows}


def _record_drafts(conn: psycopg.Connection, records: Sequence[InvoiceRecord], period_start: dt.date) -> None:
    """The month's drafts, replacing the previous ones (a tenant no longer invoiced loses its draft)."""
    with conn.cursor() as cur:
        cur.executemany(
            "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
            " issue_date, currency, total, pdf_uri, pdf_sha256, status)"
            " values ('invoice', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'draft')"
            " on conflict (tenant_id, period_start) where document_type = 'invoice' do update set"
            " period_end = excluded.period_end, issue_date = excluded.issue_date, currency = excluded.currency,"
            " total = excluded.total, pdf_uri = excluded.pdf_uri, pdf_sha256 = excluded.pdf_sha256,"
            " rendered_at = now()",
            [(r.issuer, r.tenant_id, r.period_start, r.period_end, r.period_start, r.issue_date, r.currency,
              r.total, r.pdf_uri, r.pdf_sha256) for r in records],
        )
        cur.execute(
            "delete from pipeline.invoices where period_start = %s and document_type = 'invoice'"
            " and status = 'draft' and tenant_id <> all(%s)",
            (period_start, [r.tenant_id for r in records]),
        )


def _record_final(conn: psycopg.Connection, record: InvoiceRecord, lines: Sequence[InvoiceLine], *,
                  close_period: dt.date) -> None:
    """Record one issued document: its row (as a draft), its frozen lines, then final.

    Lines go in while the row is still a draft: the triggers refuse any line of a final document.
    """
    values = (record.document_type, record.issuer, record.tenant_id, record.period_start, record.period_end,
              close_period, record.corrects, record.issue_date, record.currency, record.total, record.pdf_uri,
              record.pdf_sha256)
    if record.document_type == "invoice":
        (document_id,) = conn.execute(
            "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
            " corrects, issue_date, currency, total, pdf_uri, pdf_sha256, status)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'draft')"
            " on conflict (tenant_id, period_start) where document_type = 'invoice' do update set"
            " period_end = excluded.period_end, issue_date = excluded.issue_date, currency = excluded.currency,"
            " total = excluded.total, pdf_uri = excluded.pdf_uri, pdf_sha256 = excluded.pdf_sha256,"
            " rendered_at = now() returning document_id", values).fetchone()
    else:
        (document_id,) = conn.execute(
            "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
            " corrects, issue_date, currency, total, pdf_uri, pdf_sha256, status)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'draft') returning document_id",
            values).fetchone()
    with conn.cursor() as cur:
        cur.executemany(
            "insert into pipeline.invoice_lines (document_id, line_no, line_type, meter, description, tier,"
            " quantity, unit, pricing_quantity, pricing_unit, unit_price, list_amount, discount_amount, amount,"
            " currency, price_book, pricing_model)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(document_id, line.line_no or n, line.line_type, line.meter, line.description, line.tier,
              line.quantity if line.usage_quantity is None else line.usage_quantity,
              line.unit if line.usage_unit is None else line.usage_unit,
              line.quantity, line.unit, line.unit_price, _list_amount(line), line.discount_amount, line.amount,
              line.currency, line.price_book, line.pricing_model)
             for n, line in enumerate(lines, 1)],
        )
    conn.execute(
        "update pipeline.invoices set invoice_number = %s, status = 'final', finalized_at = now(),"
        " usage_as_of = %s where document_id = %s",
        (record.invoice_number, record.usage_as_of, document_id),
    )


def _render_and_write(jobs: Sequence[_Job], fs: fsspec.AbstractFileSystem, out_dir: str,
                      workers: int) -> dict[str, tuple[str, str]]:
    """Render every job and put its PDF in place: ``{job.key: (path, sha256)}``.

    Each PDF is first written to a temporary name beside its target; only when all are
    rendered and written are they moved into place, so a failure leaves no half-written
    file and no mix of old and new PDFs for the month.
    """
    temps: dict[str, tuple[str, str, str]] = {}
    try:
        for key, pdf in _render_all(jobs, workers):
            target = f"{out_dir}/{key}.pdf"
            folder = target.rsplit("/", 1)[0]
            fs.makedirs(folder, exist_ok=True)
            temp = f"{folder}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
            temps[key] = (temp, target, hashlib.sha256(pdf).hexdigest())
            fs.pipe_file(temp, pdf)
        placed: dict[str, tuple[str, str]] = {}
        for key, (temp, target, digest) in temps.items():
            fs.mv(temp, target)
            placed[key] = (target, digest)
        return placed
    except BaseException:
        for temp, _, _ in temps.values():
            try:
                if fs.exists(temp):
                    fs.rm(temp)
            except OSError:
                log.warning("could not remove temporary file %s", temp)
        raise


def _render_all(jobs: Sequence[_Job], workers: int) -> Iterator[tuple[str, bytes]]:
    """``(job.key, pdf)`` as they finish; ``workers`` processes, one document each at a time."""
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield job.key, _render_job(job)
        return
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_mp_context())
    try:
        futures = {pool.submit(_render_job, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            try:
                pdf = future.result()
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise InvoiceError(f"a renderer process died while rendering tenant {job.tenant.tenant_id}") from exc
            yield job.key, pdf
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver (workers fork from a clean server with WeasyPrint preloaded), else spawn.

    Never plain fork: the parent holds database connections and maybe threads.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")
