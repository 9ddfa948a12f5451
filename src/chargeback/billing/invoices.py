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

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import fsspec
import psycopg
from psycopg.rows import dict_row

from chargeback.billing import attachment, issuing, store
from chargeback.billing.document import (
    DEFAULT_ISSUER,
    InvoiceError,
    InvoiceRecord,
    Issuer,
)
from chargeback.billing.render import render_and_write
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
    month = store.read_month_to_invoice(period, settings)
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    jobs = month.jobs(issuer, str(settings.reports_dir.resolve()), issue_date=issue_date,
                      name=lambda tenant_id: f"drafts/{tenant_id}")

    with warehouse.connect(settings) as conn:
        store.lock_counter(conn, issuer)  # drafts take no number: an open issuing run does not stop them
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

    The three steps of :mod:`chargeback.billing.issuing` in this process: plan (the numbers
    reserved, tenant order, and what each invoice shows, from one snapshot of the marts), render
    (``workers`` processes), commit (one transaction takes the numbers, freezes the lines the
    documents show in ``pipeline.invoice_lines`` and marks the invoices final with their issue
    date, ``usage_as_of`` and sha256). Late usage that reached the marts during the grace period
    counts. If anything fails — a PDF that cannot be written (no space), the database — nothing
    is final, the drafts and the counter are as they were, and running it again completes the
    month. ``notes`` are printed on every invoice (an override of the completeness check). A
    month already final is returned as issued.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    settings = settings or get_settings()
    run = issuing.plan(period, settings=settings, issue_date=issue_date, notes=notes, batch_size=0, issuer=issuer)
    if run is None:
        log.info("the invoices of %s are final already", period)
    else:
        try:
            issuing.render_batch(run.run_id, workers=workers, settings=settings)
            issuing.commit(run.run_id, settings=settings, issuer=issuer)
        except BaseException:  # nothing else renders this run: leave no reservation behind
            issuing.abandon(run.run_id, settings=settings)
            raise
    with warehouse.connect(settings) as conn:
        return store.final_documents(conn, Period.parse(period).first_day, document_type="invoice")


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
