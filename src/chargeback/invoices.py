"""Invoices: one PDF per tenant and month, rendered from the marts and recorded in the warehouse.

The marts (``marts.fct_invoices``, ``marts.fct_invoice_lines``, ``marts.dim_tenants``) hold
every figure; this module only presents them. Money stays ``Decimal`` from the database to
the page and is printed with :func:`chargeback.money.format_money`; a printed total is the
mart's total, never a sum recomputed here (the renderer only checks that the two agree).

Invoice numbers are gapless per issuer. :func:`render_month` reserves the month's new
numbers from ``pipeline.invoice_counters`` and records the invoices in ``pipeline.invoices``
in one transaction, so a failed run consumes no number, and a re-rendered tenant and period
keeps the number it already has.

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

from chargeback import warehouse
from chargeback.money import format_money, round_money
from chargeback.settings import Settings, get_settings

log = logging.getLogger(__name__)

TEMPLATE = "invoice.html"
_PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_STATUS_LABELS = {"draft": "DRAFT", "final": "FINAL"}


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


@dataclasses.dataclass(frozen=True)
class Invoice:
    """The header of one invoice: a row of ``marts.fct_invoices`` plus its number and dates."""

    invoice_number: str
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


@dataclasses.dataclass(frozen=True)
class InvoiceRecord:
    """A rendered invoice as recorded in ``pipeline.invoices``."""

    invoice_number: str
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
    return {
        "issuer": invoice.issuer,
        "tenant": tenant,
        "invoice": {
            "number": invoice.invoice_number,
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
                "discount": f"−{format_cents(line.discount_amount)}" if line.discount_amount else "—",
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


def _list_amount(line: InvoiceLine) -> Decimal:
    return line.amount if line.list_amount is None else line.list_amount


def _summary(invoice: Invoice) -> list[dict[str, str]]:
    """The rows above the total: usage at list prices, discount, true-up, uplift (when the mart gave them)."""
    if invoice.list_subtotal is None:
        return []
    rows = [("Usage at list prices", format_money(invoice.list_subtotal, invoice.currency))]
    if invoice.discount_total:
        rows.append(("Discount", f"−{format_money(invoice.discount_total, invoice.currency)}"))
    if invoice.commitment_true_up:
        rows.append(("Commitment true-up", format_money(invoice.commitment_true_up, invoice.currency)))
    if invoice.overage_uplift:
        rows.append(("Overage uplift", format_money(invoice.overage_uplift, invoice.currency)))
    return [{"label": label, "amount": amount} for label, amount in rows]


def check_invoice(invoice: Invoice, lines: Sequence[InvoiceLine], tenant: Tenant) -> None:
    """Refuse to print an invoice whose figures disagree with each other."""
    where = f"invoice {invoice.invoice_number} (tenant {invoice.tenant_id})"
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


def _render_job(job: _Job) -> bytes:
    """Runs in a worker process: plain data in, PDF bytes out."""
    return render_invoice_pdf(job.invoice, job.lines, job.tenant, reports_dir=job.reports_dir)


def render_month(period: str, *, workers: int = 2, settings: Settings | None = None,
                 issue_date: dt.date | None = None, issuer: Issuer = DEFAULT_ISSUER) -> list[InvoiceRecord]:
    """Render and record the invoices of ``period`` (``'YYYY-MM'``) as drafts, one PDF per tenant.

    PDFs go to ``<reports_out>/<YYYY-MM>/<tenant_id>.pdf``. ``issue_date`` defaults to today (UTC);
    an orchestrated run should pass its own date. ``workers`` processes render in parallel;
    ``workers=1`` renders in this process. Raises :class:`InvoiceError` when the marts hold no
    invoice for the period, when figures disagree, or when a tenant's invoice is no longer a draft.

    Worker processes start by forkserver (else spawn) and import the caller's main module:
    a script calling this needs the usual ``if __name__ == "__main__":`` guard.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    settings = settings or get_settings()
    period_start, period_end = parse_period(period)
    issue_date = issue_date or dt.datetime.now(dt.UTC).date()

    warehouse.ensure_schema(settings)
    headers, lines_by_tenant, tenants = _read_month(period_start, settings)
    if not headers:
        raise InvoiceError(
            f"no invoices for {period} in marts.fct_invoices: the month has no billed usage, "
            "or the transform has not run for it"
        )

    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    out_dir = f"{out_root.rstrip('/')}/{period}"
    reports_dir = str(settings.reports_dir.resolve())

    drafts = _assemble(period, headers, lines_by_tenant, tenants, issue_date, issuer, reports_dir)

    with warehouse.connect(settings) as conn:
        numbers, last_number = _reserve_numbers(conn, issuer, period_start, [job.tenant.tenant_id for job in drafts])
        jobs = [dataclasses.replace(job, invoice=dataclasses.replace(job.invoice,
                                                                     invoice_number=numbers[job.tenant.tenant_id]))
                for job in drafts]
        written = _render_and_write(jobs, fs, out_dir, workers)
        records = [
            InvoiceRecord(
                invoice_number=job.invoice.invoice_number,
                issuer=issuer.key,
                tenant_id=job.invoice.tenant_id,
                period_start=period_start,
                period_end=period_end,
                issue_date=issue_date,
                currency=job.invoice.currency,
                total=job.invoice.total,
                pdf_uri=_pdf_uri(settings.reports_out, period, job.invoice.tenant_id),
                pdf_sha256=written[job.invoice.tenant_id][1],
                status=job.invoice.status,
            )
            for job in jobs
        ]
        _record(conn, records, issuer, last_number)
    log.info("rendered %d invoices for %s into %s", len(records), period, out_dir)
    return records


def _assemble(period: str, headers: Sequence[Mapping[str, Any]], lines_by_tenant: Mapping[str, list[InvoiceLine]],
              tenants: Mapping[str, Tenant], issue_date: dt.date, issuer: Issuer, reports_dir: str) -> list[_Job]:
    """One unnumbered invoice per header, checked against its lines and tenant."""
    period_start, period_end = parse_period(period)
    drafts: list[_Job] = []
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
            invoice_number=f"{period}/{tenant_id} (not yet numbered)",
            tenant_id=tenant_id,
            period_start=period_start,
            period_end=period_end,
            issue_date=issue_date,
            currency=header["currency"],
            total=header["total"],
            price_book=", ".join(books),
            issuer=issuer,
            list_subtotal=header["list_subtotal"],
            discount_total=header["discount_total"],
            commitment_true_up=header["commitment_true_up"],
            overage_uplift=header["overage_uplift"],
        )
        check_invoice(invoice, lines, tenants[tenant_id])  # before taking a number or starting a process
        drafts.append(_Job(invoice, tuple(lines), tenants[tenant_id], reports_dir))
    return drafts


def _pdf_uri(reports_out: str, period: str, tenant_id: str) -> str:
    """Where the PDF is, in the form ``reports_out`` is configured in (any fsspec URL opens it).

    An absolute path for a local ``reports_out``, else a URL under it: ``s3://bucket/2026-10/t001.pdf``.
    """
    if "://" not in reports_out and "::" not in reports_out:
        return str((Path(reports_out) / period / f"{tenant_id}.pdf").resolve())
    return f"{reports_out.rstrip('/')}/{period}/{tenant_id}.pdf"


def _read_month(period_start: dt.date, settings: Settings) -> tuple[
        list[dict[str, Any]], dict[str, list[InvoiceLine]], dict[str, Tenant]]:
    """The month's invoice headers, lines and tenants: one query each, one consistent snapshot."""
    try:
        with warehouse.connect(settings) as conn:
            conn.execute("set transaction isolation level repeatable read, read only")
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
                    " list_amount, discount_amount, amount, currency, price_book, pricing_model"
                    " from marts.fct_invoice_lines"
                    " where invoice_month = %s order by tenant_id, line_no",
                    (period_start,),
                ).fetchall()
                tenant_rows = cur.execute(
                    "select tenant_id, tenant_name, organisation, business_unit, team, price_book, billing_email"
                    " from marts.dim_tenants where tenant_id = any(%s)",
                    ([h["tenant_id"] for h in headers],),
                ).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise InvoiceError(f"the marts are missing ({exc.diag.message_primary}); run the transform first") from exc
    lines: dict[str, list[InvoiceLine]] = {}
    for row in line_rows:
        lines.setdefault(row.pop("tenant_id"), []).append(InvoiceLine(**row))
    tenants = {row["tenant_id"]: Tenant(**row) for row in tenant_rows}
    return headers, lines, tenants


def _reserve_numbers(conn: psycopg.Connection, issuer: Issuer, period_start: dt.date,
                     tenant_ids: Sequence[str]) -> tuple[dict[str, str], int]:
    """Numbers for the month's invoices: existing ones kept, new ones following the counter.

    Locks the issuer's counter row until the caller's transaction ends, so concurrent runs
    take turns and a rolled-back run leaves the counter where it was (no gaps).
    """
    conn.execute(
        "insert into pipeline.invoice_counters (issuer, last_number) values (%s, 0) on conflict (issuer) do nothing",
        (issuer.key,),
    )
    (last_number,) = conn.execute(
        "select last_number from pipeline.invoice_counters where issuer = %s for update", (issuer.key,)
    ).fetchone()
    existing = {
        tenant_id: (number, status)
        for tenant_id, number, status in conn.execute(
            "select tenant_id, invoice_number, status from pipeline.invoices"
            " where period_start = %s and tenant_id = any(%s) for update",
            (period_start, list(tenant_ids)),
        )
    }
    numbers: dict[str, str] = {}
    for tenant_id in sorted(tenant_ids):
        if tenant_id in existing:
            number, status = existing[tenant_id]
            if status != "draft":
                raise InvoiceError(
                    f"invoice {number} of tenant {tenant_id} for {period_start:%Y-%m} is {status}; "
                    "only drafts are re-rendered"
                )
            numbers[tenant_id] = number
        else:
            last_number += 1
            numbers[tenant_id] = invoice_number(issuer, period_start, last_number)
    return numbers, last_number


def _record(conn: psycopg.Connection, records: Sequence[InvoiceRecord], issuer: Issuer, last_number: int) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "insert into pipeline.invoices (invoice_number, issuer, tenant_id, period_start, period_end, issue_date,"
            " currency, total, pdf_uri, pdf_sha256, status)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict (tenant_id, period_start) do update set"
            " period_end = excluded.period_end, issue_date = excluded.issue_date, currency = excluded.currency,"
            " total = excluded.total, pdf_uri = excluded.pdf_uri, pdf_sha256 = excluded.pdf_sha256,"
            " status = excluded.status, rendered_at = now()",
            [(r.invoice_number, r.issuer, r.tenant_id, r.period_start, r.period_end, r.issue_date, r.currency,
              r.total, r.pdf_uri, r.pdf_sha256, r.status) for r in records],
        )
        cur.execute("update pipeline.invoice_counters set last_number = %s where issuer = %s",
                    (last_number, issuer.key))


def _render_and_write(jobs: Sequence[_Job], fs: fsspec.AbstractFileSystem, out_dir: str,
                      workers: int) -> dict[str, tuple[str, str]]:
    """Render every job and put its PDF in place: ``{tenant_id: (path, sha256)}``.

    Each PDF is first written to a temporary name beside its target; only when all are
    rendered and written are they moved into place, so a failure leaves no half-written
    file and no mix of old and new PDFs for the month.
    """
    fs.makedirs(out_dir, exist_ok=True)
    temps: dict[str, tuple[str, str]] = {}
    try:
        for tenant_id, pdf in _render_all(jobs, workers):
            temp = f"{out_dir}/.{tenant_id}.{uuid.uuid4().hex}.pdf.tmp"
            temps[tenant_id] = (temp, hashlib.sha256(pdf).hexdigest())
            fs.pipe_file(temp, pdf)
        placed: dict[str, tuple[str, str]] = {}
        for tenant_id, (temp, digest) in temps.items():
            target = f"{out_dir}/{tenant_id}.pdf"
            fs.mv(temp, target)
            placed[tenant_id] = (target, digest)
        return placed
    except BaseException:
        for temp, _ in temps.values():
            try:
                if fs.exists(temp):
                    fs.rm(temp)
            except OSError:
                log.warning("could not remove temporary file %s", temp)
        raise


def _render_all(jobs: Sequence[_Job], workers: int) -> Iterator[tuple[str, bytes]]:
    """``(tenant_id, pdf)`` as they finish; ``workers`` processes, one document each at a time."""
    if workers == 1:
        for job in jobs:
            yield job.tenant.tenant_id, _render_job(job)
        return
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_mp_context())
    try:
        futures = {pool.submit(_render_job, job): job.tenant.tenant_id for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            try:
                pdf = future.result()
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise InvoiceError(f"a renderer process died while rendering tenant {futures[future]}") from exc
            yield futures[future], pdf
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
