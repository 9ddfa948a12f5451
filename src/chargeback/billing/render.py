"""Rendering: an invoice's HTML from the template, its PDF from WeasyPrint, many in parallel.

The HTML template and its CSS live in ``reports/templates``, the fonts in ``reports/fonts``.
WeasyPrint reads them through :class:`ReportsURLFetcher`, which serves files under
``reports/templates`` and ``reports/fonts`` and nothing else — not the rendered invoices
in ``reports/out``, no other path, no network. A PDF depends on the
document only (the creation date and font-subset timestamps are the issue date), so a
re-render of unchanged data has the same sha256.
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
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname
from xml.etree import ElementTree

import fsspec
import jinja2
import pydyf
import weasyprint
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse

from chargeback.billing import appendix, attachment
from chargeback.billing.document import (
    DRAFT_NUMBER,
    Invoice,
    InvoiceError,
    InvoiceLine,
    Issuer,
    SourceShare,
    Tenant,
    WayToPayLess,
    check_invoice,
    coerce,
    list_amount_of,
)
from chargeback.billing.formatting import (
    MONTHS,
    deduction,
    format_cents,
    format_date,
    format_quantity,
    printed_quantity,
    printed_unit_price,
    summary_rows,
)
from chargeback.platform.money import format_money
from chargeback.platform.periods import Period
from chargeback.platform.settings import get_settings

log = logging.getLogger(__name__)

TEMPLATE = "invoice.html"
STYLESHEET = "invoice.css"
"""Applied by the renderer, parsed once per process (:func:`_parsed_stylesheet`): the template links no CSS."""
_STATUS_LABELS = {"draft": "DRAFT", "final": "FINAL"}
_TITLES = {"invoice": "INVOICE", "credit_note": "CREDIT NOTE", "debit_note": "DEBIT NOTE"}

# The lines table has a fixed layout (an automatic one measures every cell twice: a sixth of an
# invoice's rendering). Its columns after the description are as wide as their widest printed
# value, in ``ch`` (the width of a digit; other characters counted 1.2 to err wide), and at least
# as wide as the longest word of their heading (uppercase, bold, spaced: ``ch`` below). The
# totals span the last two columns in a larger bold type (TOTALS_SCALE ``ch`` per character),
# so the last column widens until the widest total fits. A value that still does not fit wraps
# (``overflow-wrap: anywhere``); the description takes the rest.
LINE_COLUMNS = (("quantity", 9.5), ("unit", 5.0), ("unit_price", 6.5), ("list_amount", 8.5),
                ("discount", 9.5), ("amount", 8.5))
TOTALS_SCALE = 1.5  # 10.5 pt bold against the lines' 8 pt regular
TOTALS_PADDING_CH = 1.7  # the 3 mm of padding of the second spanned column, in 8 pt digits


class URLRefusedError(FatalURLFetchingError):
    """The renderer asked for a resource outside ``reports/templates`` and ``reports/fonts``
    (network, other paths).

    A :class:`weasyprint.urls.FatalURLFetchingError`, so WeasyPrint stops instead of
    rendering without the resource; :func:`render_invoice_pdf` turns it into an
    :class:`InvoiceError`.
    """


# --------------------------------------------------------------------------- data


RESOURCE_FOLDERS = ("templates", "fonts")
"""The folders of ``reports/`` a rendering may read: the template with its CSS, and the fonts."""


class ReportsURLFetcher(URLFetcher):
    """A WeasyPrint URL fetcher that serves files under ``root``'s ``templates/`` and ``fonts/``
    and refuses everything else.

    Only ``file:`` URLs whose resolved path lies inside one of those folders are read (so
    ``..`` and symlinks cannot escape); ``http(s):``, ``data:``, other paths — among them
    ``reports/out``, where invoices are written — and missing files raise
    :class:`URLRefusedError`, which stops the rendering.
    """

    def __init__(self, root: Path | str) -> None:
        super().__init__(fail_on_errors=True)
        self.root = Path(root).resolve()
        self.folders = tuple(self.root / name for name in RESOURCE_FOLDERS)

    def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> URLFetcherResponse:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise URLRefusedError(
                f"invoice renderer refused {url!r}: only files under {self.root} may be loaded "
                "(no network access at render time)"
            )
        path = Path(url2pathname(parts.path)).resolve()
        if not any(path.is_relative_to(folder) for folder in self.folders):
            raise URLRefusedError(f"invoice renderer refused {url!r}: {path} is outside "
                                  + " and ".join(str(folder) for folder in self.folders))
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


def column_widths(rows: Sequence[Mapping[str, str]], totals: Sequence[str] = ()) -> list[float]:
    """The width in ``ch`` of each of :data:`LINE_COLUMNS` for these printed lines, the last two
    wide enough together for the widest of ``totals`` (the summary's amounts and the total)."""
    def width(text: str) -> float:
        return sum(1.0 if c.isdigit() or c in ",." else 1.2 for c in text)

    widths = [max([heading, *(width(row[key]) for row in rows)]) for key, heading in LINE_COLUMNS]
    short = max((width(text) * TOTALS_SCALE for text in totals), default=0.0) - (
        widths[-2] + widths[-1] + TOTALS_PADDING_CH)
    if short > 0:
        widths[-1] += short
    return widths


def invoice_context(invoice: Invoice, lines: Sequence[InvoiceLine], tenant: Tenant) -> dict[str, Any]:
    """What the template sees: every value already formatted as printed."""
    printed = [
        {
            "meter": line.meter or "",
            "kind": line.line_type,
            "description": line.description,
            "quantity": printed_quantity(line),
            "unit": line.unit,
            "unit_price": printed_unit_price(line),
            "list_amount": format_cents(list_amount_of(line)),
            "discount": deduction(line.discount_amount) if line.discount_amount else "—",
            "amount": format_cents(line.amount),
        }
        for line in lines
    ]
    summary = summary_rows(invoice)
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
                         f"{MONTHS[invoice.period_start.month - 1]} {invoice.period_start.year}"
                         if invoice.corrects else ""),
            "notes": list(invoice.notes),
            "attachment": (attachment.attachment_name(invoice.invoice_number)
                           if status == "final" and invoice.invoice_number else ""),
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
        "lines": printed,
        "columns": [round(width, 1) for width in column_widths(
            printed, [row["amount"] for row in summary] + [format_money(invoice.total, invoice.currency)])],
        "summary": summary,
        "sources": [
            {
                "meter": row.meter,
                "source": row.source if row.source is not None else appendix.other_label(row.other_count),
                "other": row.source is None,
                "usage": f"{format_quantity(row.usage_quantity)} {row.unit}",
                "usage_share": appendix.percent(row.usage_share),
                "amount": format_cents(row.amount),
                "amount_share": appendix.percent(row.amount_share),
            }
            for row in invoice.usage_sources
        ],
        "pay_less": [
            {"title": way.title, "evidence": way.evidence, "saving": format_cents(way.saving),
             "confidence": way.confidence}
            for way in invoice.ways_to_pay_less
        ],
    }


def render_invoice_html(invoice: Invoice | Mapping[str, Any], lines: Sequence[InvoiceLine | Mapping[str, Any]],
                        tenant: Tenant | Mapping[str, Any], *, reports_dir: Path | str | None = None) -> str:
    """The invoice as HTML (what :func:`render_invoice_pdf` lays out)."""
    invoice, tenant = coerce(Invoice, invoice), coerce(Tenant, tenant)
    lines = [coerce(InvoiceLine, line) for line in lines]
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
    An issued document (status ``final``) is a tagged PDF/A-3b that embeds its lines
    (:mod:`chargeback.billing.attachment`); a draft is a plain PDF.
    """
    invoice = coerce(Invoice, invoice)
    reports_dir = Path(reports_dir or get_settings().reports_dir).resolve()
    html = render_invoice_html(invoice, lines, tenant, reports_dir=reports_dir)
    embedded = None
    if invoice.status == "final":
        lines = [coerce(InvoiceLine, line) for line in lines]
        embedded = Embedded(attachment.attachment_name(invoice.invoice_number),
                            attachment.encode(attachment.payload(invoice, lines, coerce(Tenant, tenant))),
                            invoice.usage_as_of)
    with _source_date(invoice.issue_date):  # also one rendering at a time: the stylesheet's fonts are shared
        return html_to_pdf(html, reports_dir=reports_dir, base_url=reports_dir / "templates" / TEMPLATE,
                           embedded=embedded, stylesheet=STYLESHEET)


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


@dataclasses.dataclass(frozen=True)
class Embedded:
    """A file an issued document embeds: its name, bytes and date (the usage instant, not the clock)."""

    name: str
    data: bytes
    when: dt.datetime


PDF_VARIANT = "pdf/a-3b"
"""Issued documents: PDF/A-3b (archivable, embedded files allowed), tagged (``pdf_tags``) and
identified as PDF/UA-1 too (:func:`_identify_as_accessible`). WeasyPrint takes one variant;
its ``pdf/ua-1`` variant is the tags plus that identification, which is what is added here."""


def html_to_pdf(html: str, *, reports_dir: Path | str, base_url: Path | str,
                embedded: Embedded | None = None, stylesheet: str | None = None) -> bytes:
    """Lay out ``html`` with WeasyPrint, loading resources only through :class:`ReportsURLFetcher`.

    With ``embedded``: a tagged PDF/A-3b carrying that file (AFRelationship ``Data``). With
    ``stylesheet`` (a file in ``reports/templates``): that CSS and its fonts, parsed once per
    process and reused by every document after; the caller renders one document at a time.
    """
    fetcher = ReportsURLFetcher(reports_dir)
    options: dict[str, Any] = {}
    if stylesheet is not None:
        css, fonts = _parsed_stylesheet(Path(reports_dir).resolve() / "templates" / stylesheet)
        options.update(stylesheets=[css], font_config=fonts)
    if embedded is not None:
        when = embedded.when.astimezone(dt.UTC)
        options |= {
            "pdf_variant": PDF_VARIANT, "pdf_tags": True, "finisher": _identify_as_accessible,
            "attachments": [weasyprint.Attachment(
                string=embedded.data, name=embedded.name, relationship=attachment.RELATIONSHIP,
                description="The document's lines, totals and price versions as issued "
                            f"(JSON, schema {attachment.SCHEMA})", created=when, modified=when)],
        }
    try:
        document = weasyprint.HTML(string=html, base_url=str(base_url), url_fetcher=fetcher)
        return document.write_pdf(pdf_identifier=True, **options)  # /ID derived from the content: reproducible
    except URLRefusedError as exc:
        raise InvoiceError(str(exc)) from None
    except FatalURLFetchingError as exc:
        raise InvoiceError(f"{exc}: {exc.__cause__}") from None


def _parsed_stylesheet(path: Path) -> tuple[weasyprint.CSS, FontConfiguration]:
    """``path`` parsed, its ``@font-face`` fonts loaded: once per process and version of the file.

    Parsing the CSS and registering its fonts cost a quarter of an invoice's rendering when
    done per document. The file's modification time is part of the key, so a long-running
    worker picks up a changed stylesheet.
    """
    if not path.is_file():
        raise InvoiceError(f"stylesheet {path} does not exist")
    return _stylesheet_at(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _stylesheet_at(path: str, _mtime_ns: int) -> tuple[weasyprint.CSS, FontConfiguration]:
    fonts = FontConfiguration()
    reports_dir = Path(path).parents[1]
    try:
        css = weasyprint.CSS(filename=path, url_fetcher=ReportsURLFetcher(reports_dir), font_config=fonts)
    except FatalURLFetchingError as exc:
        raise InvoiceError(str(exc)) from None
    return css, fonts


def _identify_as_accessible(document: weasyprint.Document, pdf: pydyf.PDF) -> None:
    """WeasyPrint's finisher: declare PDF/UA-1 beside PDF/A-3b in the XMP metadata, ask
    viewers to show the document's title rather than its file name (PDF/UA-1, 7.1), and list
    each embedded file once in the catalog's ``/AF``.

    The metadata stream WeasyPrint wrote for PDF/A-3b is rewritten in place with ``pdfuaid:part``
    added to the description that carries ``pdfaid:part``/``pdfaid:conformance``.
    """
    metadata = pdf.objects[int(pdf.catalog["Metadata"].split()[0])]  # b"<number> 0 R"
    # the XML WeasyPrint just serialised from the document's own metadata, not outside input
    rdf = ElementTree.fromstring(document.metadata.generate_rdf_metadata("a", 3, "B"))  # noqa: S314
    identification = rdf.find(f"{{{_RDF}}}Description")
    identification.set(f"{{{_PDFUAID}}}part", "1")
    metadata.stream = [b"\n".join((  # the packet as WeasyPrint's DocumentMetadata.include_in_pdf writes it
        b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">',
        ElementTree.tostring(rdf, encoding="utf-8", xml_declaration=False),
        b'</x:xmpmeta>\n<?xpacket end="r"?>'))]
    pdf.catalog["ViewerPreferences"] = pydyf.Dictionary({"DisplayDocTitle": "true"})
    # WeasyPrint 70 lists each embedded file twice in /AF (from the name tree and as a Filespec)
    pdf.catalog["AF"] = pydyf.Array(dict.fromkeys(pdf.catalog["AF"]))


_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_PDFUAID = "http://www.aiim.org/pdfua/ns/id/"


# --------------------------------------------------------------------------- the month


@dataclasses.dataclass(frozen=True)
class RenderJob:
    invoice: Invoice
    lines: tuple[InvoiceLine, ...]
    tenant: Tenant
    reports_dir: str
    name: str = ""
    """The PDF's path under the month's directory, without ``.pdf`` (default: the tenant)."""

    @property
    def key(self) -> str:
        return self.name or self.tenant.tenant_id


def assemble(period: str, headers: Sequence[Mapping[str, Any]], lines_by_tenant: Mapping[str, list[InvoiceLine]],
              tenants: Mapping[str, Tenant], issuer: Issuer, reports_dir: str, *, issue_date: dt.date,
              status: str = "draft", numbers: Mapping[str, str] | None = None, notes: tuple[str, ...] = (),
              usage_as_of: dt.datetime | None = None, name=None,
              sources: Mapping[str, tuple[SourceShare, ...]] | None = None,
              pay_less: Mapping[str, tuple[WayToPayLess, ...]] | None = None) -> list[RenderJob]:
    """One invoice per header, checked against its lines and tenant (before any process starts);
    ``sources`` and ``pay_less``: the appendices' rows per tenant (:mod:`chargeback.billing.appendix`)."""
    month = Period.parse(period)
    period_start, period_end = month.first_day, month.last_day
    jobs: list[RenderJob] = []
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
            usage_sources=(sources or {}).get(tenant_id, ()),
            ways_to_pay_less=(pay_less or {}).get(tenant_id, ()),
        )
        check_invoice(invoice, lines, tenants[tenant_id])
        jobs.append(RenderJob(invoice, tuple(lines), tenants[tenant_id], reports_dir,
                         name=name(tenant_id) if name else ""))
    return jobs


def render_job(job: RenderJob) -> bytes:
    """Runs in a worker process: plain data in, PDF bytes out."""
    return render_invoice_pdf(job.invoice, job.lines, job.tenant, reports_dir=job.reports_dir)


def render_and_write(jobs: Sequence[RenderJob], fs: fsspec.AbstractFileSystem, out_dir: str,
                      workers: int) -> dict[str, tuple[str, str]]:
    """Render every job and put its PDF in place: ``{job.key: (path, sha256)}``.

    Each PDF is first written to a temporary name beside its target (:func:`stage`); only when
    all are rendered and written are they moved into place (:func:`place`), so a failure leaves
    no half-written file and no mix of old and new PDFs for the month.
    """
    return place(fs, stage(jobs, fs, out_dir, workers))


def stage(jobs: Sequence[RenderJob], fs: fsspec.AbstractFileSystem, out_dir: str,
          workers: int) -> dict[str, tuple[str, str, str]]:
    """Render every job to a temporary name beside its target: ``{job.key: (temp, target, sha256)}``.

    A failure removes the temporary files written so far.
    """
    temps: dict[str, tuple[str, str, str]] = {}
    try:
        for key, pdf in render_all(jobs, workers):
            target = f"{out_dir}/{key}.pdf"
            folder = target.rsplit("/", 1)[0]
            fs.makedirs(folder, exist_ok=True)
            temp = f"{folder}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
            temps[key] = (temp, target, hashlib.sha256(pdf).hexdigest())
            fs.pipe_file(temp, pdf)
        return temps
    except BaseException:
        discard(fs, [temp for temp, _, _ in temps.values()])
        raise


def place(fs: fsspec.AbstractFileSystem, staged: Mapping[str, tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    """Move staged PDFs to their targets: ``{key: (target, sha256)}``. A PDF already moved (its
    temporary file gone, its target there with the same sha256: a repeated commit) counts as placed."""
    placed: dict[str, tuple[str, str]] = {}
    for key, (temp, target, digest) in staged.items():
        if not fs.exists(temp) and fs.exists(target):
            if hashlib.sha256(fs.cat_file(target)).hexdigest() != digest:
                raise InvoiceError(f"{target}: the staged PDF {temp} is gone and the file in its place is another"
                                   " one; render the batch again (or close the month again)")
        else:
            fs.mv(temp, target)
        placed[key] = (target, digest)
    return placed


def discard(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> None:
    """Remove temporary files; one that cannot be removed is only a warning (it is never read)."""
    for path in paths:
        try:
            if fs.exists(path):
                fs.rm(path)
        except OSError:
            log.warning("could not remove temporary file %s", path)


def render_all(jobs: Sequence[RenderJob], workers: int) -> Iterator[tuple[str, bytes]]:
    """``(job.key, pdf)`` as they finish; ``workers`` processes, one document each at a time."""
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield job.key, render_job(job)
        return
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_mp_context())
    try:
        futures = {pool.submit(render_job, job): job for job in jobs}
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
