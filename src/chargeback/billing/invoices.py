"""Invoices: one PDF per tenant and month, rendered from the marts and recorded in the warehouse.

The marts (``marts.fct_invoices``, ``marts.fct_invoice_lines``, ``marts.dim_tenants``) hold
every figure; this module only presents them. Money stays ``Decimal`` from the database to
the page and is printed with :func:`chargeback.platform.money.format_money`; a printed total is the
mart's total, never a sum recomputed here (the renderer only checks that the two agree).

A month's invoices are drafts until the month is closed (:mod:`chargeback.billing.close`):
:func:`render_month` renders and records them with no number ("numbered when issued"),
replacing the previous drafts. :func:`finalize_month` re-renders them from the current
marts as final documents and, in one transaction, takes their numbers from
``pipeline.invoice_counters`` (in tenant order), freezes their lines in
``pipeline.invoice_lines`` and marks them final; a failure anywhere leaves the drafts and
the counter as they were. Only issued documents consume numbers, so numbers are gapless
per issuer. Usage that changes a final month later is billed by a credit or debit note
(:func:`chargeback.billing.corrections.issue_corrections`) numbered from the same counter; the final invoice never
changes (the database refuses it, see ``platform/sql/schema.sql``).

The pieces: :mod:`~chargeback.billing.document` (the values and their consistency check),
:mod:`~chargeback.billing.formatting`, :mod:`~chargeback.billing.render` (HTML and PDF),
:mod:`~chargeback.billing.store` (reading the marts, numbering, recording) and
:mod:`~chargeback.billing.corrections` (credit and debit notes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import psycopg
from psycopg.rows import dict_row

from chargeback.billing import attachment, store
from chargeback.billing.appendix import read_usage_sources, read_ways_to_pay_less
from chargeback.billing.document import (
    DEFAULT_ISSUER,
    Invoice,
    InvoiceError,
    InvoiceLine,
    InvoiceRecord,
    Issuer,
    SourceShare,
    Tenant,
    WayToPayLess,
    check_invoice,
    invoice_number,
)
from chargeback.billing.render import RenderJob, render_and_write
from chargeback.platform import events, warehouse
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)


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
    period_start = Period.parse(period).first_day
    issue_date = issue_date or dt.datetime.now(dt.UTC).date()

    warehouse.ensure_schema(settings)
    headers, lines_by_tenant, tenants, _ = store.read_month(period_start, settings)
    store.require_headers(period, headers)
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    reports_dir = str(settings.reports_dir.resolve())
    jobs = assemble(period, headers, lines_by_tenant, tenants, issuer, reports_dir, issue_date=issue_date,
                     name=lambda tenant_id: f"drafts/{tenant_id}",
                     sources=read_usage_sources(period_start, settings, lines_by_tenant),
                     pay_less=read_ways_to_pay_less(period_start, settings))

    with warehouse.connect(settings) as conn:
        store.lock_issuer(conn, issuer)
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
        written = render_and_write(jobs, fs, f"{out_root.rstrip('/')}/{period}", workers)
        records = [store.record_of(job, issuer, settings.reports_out, period, written) for job in jobs]
        store.record_drafts(conn, records, period_start)
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
    period_start = Period.parse(period).first_day
    warehouse.ensure_schema(settings)
    headers, lines_by_tenant, tenants, usage_as_of = store.read_month(period_start, settings)
    store.require_headers(period, headers)
    issue_date = issue_date or usage_as_of.date()
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    out_dir = f"{out_root.rstrip('/')}/{period}"
    reports_dir = str(settings.reports_dir.resolve())

    with warehouse.connect(settings) as conn:
        last_number = store.lock_issuer(conn, issuer)
        issued = store.final_documents(conn, period_start, document_type="invoice")
        late = {h["tenant_id"] for h in headers} - {r.tenant_id for r in issued}
        if issued and not late:
            log.info("the invoices of %s are final already (%d)", period, len(issued))
            return issued
        if issued:  # tenants first billed after the month was issued: their own invoices, issued now
            headers = [h for h in headers if h["tenant_id"] in late]
            log.info("%s is final already; issuing the invoices of tenants billed since: %s", period, sorted(late))
        tenant_ids = sorted(h["tenant_id"] for h in headers)
        numbers = {t: invoice_number(issuer, period_start, last_number + n) for n, t in enumerate(tenant_ids, 1)}
        jobs = assemble(period, headers, lines_by_tenant, tenants, issuer, reports_dir, issue_date=issue_date,
                         status="final", numbers=numbers, notes=tuple(notes), usage_as_of=usage_as_of,
                         name=lambda tenant_id: numbers[tenant_id],
                         sources=read_usage_sources(period_start, settings, lines_by_tenant),
                         pay_less=read_ways_to_pay_less(period_start, settings))
        written = render_and_write(jobs, fs, out_dir, workers)
        records = [store.record_of(job, issuer, settings.reports_out, period, written) for job in jobs]
        for job, record in zip(jobs, records, strict=True):
            store.record_final(conn, record, job.lines, close_period=period_start)
        # record_final advanced the counter by one per document (pipeline.issue_document)
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
                {"close": Period.parse(close_period).first_day, "issuer": issuer.key},
            ).fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise InvoiceError(f"the marts are missing ({exc.diag.message_primary}); run the transform first") from exc
    return [month for (month,) in rows]


@dataclasses.dataclass(frozen=True)
class Verification:
    """What :func:`verify_documents` found: every document's PDF matched its sha256."""

    documents: int
    """Issued documents checked."""
    without_lines: tuple[str, ...] = ()
    """Those issued before documents embedded their lines: checked by sha256 only."""

    @property
    def with_lines(self) -> int:
        return self.documents - len(self.without_lines)


_VERIFY_SQL = """
    select i.invoice_number, i.document_type, i.issuer, i.tenant_id, i.period_start, i.period_end, i.issue_date,
           i.currency, i.total, i.corrects, i.usage_as_of, i.pdf_uri, i.pdf_sha256, l.line_no,
           {line_columns}
    from pipeline.invoices as i
    left join pipeline.invoice_lines as l using (document_id)
    where i.status = 'final' and (%(period)s::date is null or i.period_start = %(period)s::date)
    order by i.invoice_number, l.line_no
"""


def verify(period: str | None = None, *, settings: Settings | None = None) -> int:
    """:func:`verify_documents`; how many issued documents matched."""
    return verify_documents(period, settings=settings).documents


def verify_documents(period: str | None = None, *, settings: Settings | None = None) -> Verification:
    """Check every final document (of ``period``, else all): its PDF's sha256 against ``pdf_sha256``,
    and the lines it embeds against its frozen lines in ``pipeline.invoice_lines`` — field by
    field, summing to the printed total (:func:`chargeback.billing.attachment.compare`).

    One query reads every document and its lines. A PDF without embedded files whose sha256
    matches was issued before documents embedded their lines: counted in
    ``without_lines``, not a failure. Each document that fails is a refusal line naming it, the
    file and each mismatch; then :class:`InvoiceError` carries them all.
    """
    settings = settings or get_settings()
    warehouse.ensure_schema(settings)
    line_fields = [f for f in attachment.LINE_FIELDS if f != "line_no"]
    query = _VERIFY_SQL.format(line_columns=", ".join(f"l.{f}" for f in line_fields))
    with warehouse.connect(settings) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, {"period": Period.parse(period).first_day if period else None}).fetchall()
    documents: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for row in rows:
        stored, lines = documents.setdefault(row["invoice_number"], (row, []))
        if row["line_no"] is not None:
            lines.append({f: row[f] for f in attachment.LINE_FIELDS})
    problems: list[str] = []
    without_lines: list[str] = []
    for number, (stored, lines) in documents.items():
        uri, expected = stored["pdf_uri"], stored["pdf_sha256"]
        try:
            with fsspec.open(uri, "rb") as f:
                pdf = f.read()
        except FileNotFoundError:
            reasons = [f"its PDF {uri} is missing"]
        else:
            reasons = []
            actual = hashlib.sha256(pdf).hexdigest()
            if actual != expected:
                reasons.append(f"its PDF {uri} has sha256 {actual}, but {expected} was recorded when it was issued")
            try:
                embedded = attachment.read(pdf, number)
            except InvoiceError as exc:
                reasons.append(f"its embedded lines cannot be checked: {exc}")
            else:
                if embedded is None and not reasons:
                    without_lines.append(number)
                elif embedded is None:
                    reasons.append("it embeds no lines")
                else:
                    mismatches = attachment.compare(embedded, stored, lines)
                    if mismatches:
                        shown = mismatches[:_SHOWN] + ([f"and {len(mismatches) - _SHOWN} more"]
                                                       if len(mismatches) > _SHOWN else [])
                        reasons.append("its embedded lines differ from the warehouse's: " + "; ".join(shown))
        if reasons:
            problems.append(events.refuse(
                f"issued document {number}", "; ".join(reasons),
                "restore the issued file from backup; never re-render a final document; a frozen line that "
                "differs from its PDF was changed behind the triggers (docs/MONTH_CLOSE.md, Embedded lines)",
                where=uri, settings=settings))
    if problems:
        raise InvoiceError("\n".join(problems))
    return Verification(len(documents), tuple(without_lines))


_SHOWN = 10
"""Mismatches named per document; the rest are counted."""


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
