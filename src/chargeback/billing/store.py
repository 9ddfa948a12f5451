"""The warehouse side of invoicing: reading a month from the marts, numbering, recording documents.

Numbers are gapless per issuer: :func:`lock_issuer` locks the issuer's counter row in
``pipeline.invoice_counters`` for the caller's transaction, and only issued documents take
numbers. An issued document's lines are frozen in ``pipeline.invoice_lines``; the
database's triggers refuse any change to a final document (``platform/sql/schema.sql``).
The pipeline role writes drafts only: the owner's functions ``pipeline.lock_issuer`` and
``pipeline.issue_document`` are the one way to a number and a final row (docs/WAREHOUSE.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from chargeback.billing.appendix import read_usage_sources, read_ways_to_pay_less
from chargeback.billing.attachment import LINE_FIELDS, frozen_line
from chargeback.billing.document import (
    InvoiceError,
    InvoiceLine,
    InvoiceRecord,
    Issuer,
    SourceShare,
    Tenant,
    WayToPayLess,
    invoice_number,
)
from chargeback.billing.render import RenderJob, assemble
from chargeback.platform import warehouse
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings


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


def require_headers(period: str, headers: Sequence[Mapping[str, Any]]) -> None:
    if not headers:
        raise InvoiceError(
            f"no invoices for {period} in marts.fct_invoices: the month has no billed usage, "
            "or the transform has not run for it"
        )


def lock_issuer(conn: psycopg.Connection, issuer: Issuer, *, run_id: int | None = None) -> int:
    """Lock the issuer's counter row until the caller's transaction ends; its last number.

    Every run that issues documents of the issuer takes this lock first, so concurrent
    runs take turns and a rolled-back run leaves the counter where it was (no gaps). An open
    issuing run (:mod:`chargeback.billing.issuing`) reserves the next numbers: anyone but that
    run (``run_id``) is refused until it is issued or abandoned.
    """
    last_number = lock_counter(conn, issuer)
    held = open_run(conn, issuer)
    if held and held[0] != run_id:
        raise reserved(issuer, held)
    return last_number


def lock_counter(conn: psycopg.Connection, issuer: Issuer) -> int:
    """:func:`lock_issuer` without the reservation: for work that takes no number (drafts), and
    for the issuing plan, which deals with an open run itself."""
    (last_number,) = conn.execute("select pipeline.lock_issuer(%s)", (issuer.key,)).fetchone()
    return last_number


def open_run(conn: psycopg.Connection, issuer: Issuer) -> tuple | None:
    """The issuer's open issuing run, locked: ``(run_id, period_start, first_number, documents, planned_at)``."""
    return conn.execute(
        "select run_id, period_start, first_number, documents, planned_at from pipeline.invoice_runs"
        " where issuer = %s and status = 'open' for update", (issuer.key,)).fetchone()


def reserved(issuer: Issuer, held: tuple) -> InvoiceError:
    """The refusal of an issuer whose next numbers an open run holds, saying how it ends."""
    run_id, period_start, first, count, planned_at = held
    month = f"{period_start:%Y-%m}"
    return InvoiceError(
        f"issuer {issuer.key}: numbers {invoice_number(issuer, period_start, first)} to "
        f"{invoice_number(issuer, period_start, first + count - 1)} are reserved by issuing run {run_id} of {month},"
        f" planned {planned_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC and not issued yet. If billing_monthly is"
        f" still closing {month}, wait for it; if that run failed, close {month} again (chargeback close --period"
        f" {month}, with --override-incomplete if it needed one, or clear billing_monthly's plan_final_invoices),"
        " which replans and issues it; then retry")


def read_month(period_start: dt.date, settings: Settings) -> tuple[
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
                    " quantity as usage_quantity, unit as usage_unit, price_valid_from"
                    " from marts.fct_invoice_lines"
                    " where invoice_month = %s order by tenant_id, line_no",
                    (period_start,),
                ).fetchall()
            tenants = read_tenants(conn, [h["tenant_id"] for h in headers])
    except psycopg.errors.UndefinedTable as exc:
        raise InvoiceError(f"the marts are missing ({exc.diag.message_primary}); run the transform first") from exc
    lines: dict[str, list[InvoiceLine]] = {}
    for row in line_rows:
        lines.setdefault(row.pop("tenant_id"), []).append(InvoiceLine(**row))
    return headers, lines, tenants, as_of


@dataclasses.dataclass(frozen=True)
class MonthToInvoice:
    """Everything a month's invoices show, as read from the marts (:func:`read_month_to_invoice`)."""

    period: str
    headers: Sequence[Mapping[str, Any]]
    lines: Mapping[str, list[InvoiceLine]]
    tenants: Mapping[str, Tenant]
    usage_as_of: dt.datetime
    sources: Mapping[str, tuple[SourceShare, ...]]
    pay_less: Mapping[str, tuple[WayToPayLess, ...]]

    def jobs(self, issuer: Issuer, reports_dir: str, *, issue_date: dt.date, leave_out: frozenset[str] = frozenset(),
             **kwargs: Any) -> list[RenderJob]:
        """:func:`render.assemble` of every invoiced tenant but ``leave_out`` (drafts or finals:
        ``kwargs`` are assemble's)."""
        headers = [h for h in self.headers if h["tenant_id"] not in leave_out]
        return assemble(self.period, headers, self.lines, self.tenants, issuer, reports_dir, issue_date=issue_date,
                        sources=self.sources, pay_less=self.pay_less, **kwargs)


def read_month_to_invoice(period: str, settings: Settings) -> MonthToInvoice:
    """:func:`read_month` and the appendices (usage by source, ways to pay less) of ``period``;
    a month the marts bill nobody for is refused (:func:`require_headers`)."""
    first_day = Period.parse(period).first_day
    headers, lines, tenants, as_of = read_month(first_day, settings)
    require_headers(period, headers)
    return MonthToInvoice(period, headers, lines, tenants, as_of, read_usage_sources(first_day, settings, lines),
                          read_ways_to_pay_less(first_day, settings))


def read_tenants(conn: psycopg.Connection, tenant_ids: Sequence[str]) -> dict[str, Tenant]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select tenant_id, tenant_name, organisation, business_unit, team, price_book, billing_email"
            " from marts.dim_tenants where tenant_id = any(%s)", (list(tenant_ids),),
        ).fetchall()
    return {row["tenant_id"]: Tenant(**row) for row in rows}


def record_drafts(conn: psycopg.Connection, records: Sequence[InvoiceRecord], period_start: dt.date) -> None:
    """The month's drafts, replacing the previous ones (a tenant no longer invoiced loses its draft)."""
    with conn.cursor() as cur:
        cur.executemany(
            "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
            " issue_date, currency, total, pdf_uri, pdf_sha256)"
            " values ('invoice', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
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


def record_final(conn: psycopg.Connection, record: InvoiceRecord, lines: Sequence[InvoiceLine], *,
                  close_period: dt.date) -> None:
    """Record one issued document: its row (as a draft), its frozen lines, then final.

    Lines go in while the row is still a draft: the triggers refuse any line of a final document.
    ``pipeline.issue_document`` makes it final and advances the issuer's counter by one: the
    document's number must be that next number (the caller holds :func:`lock_issuer`).
    """
    values = (record.document_type, record.issuer, record.tenant_id, record.period_start, record.period_end,
              close_period, record.corrects, record.issue_date, record.currency, record.total, record.pdf_uri,
              record.pdf_sha256)
    if record.document_type == "invoice":
        (document_id,) = conn.execute(
            "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
            " corrects, issue_date, currency, total, pdf_uri, pdf_sha256)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict (tenant_id, period_start) where document_type = 'invoice' do update set"
            " period_end = excluded.period_end, issue_date = excluded.issue_date, currency = excluded.currency,"
            " total = excluded.total, pdf_uri = excluded.pdf_uri, pdf_sha256 = excluded.pdf_sha256,"
            " rendered_at = now() returning document_id", values).fetchone()
    else:
        (document_id,) = conn.execute(
            "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
            " corrects, issue_date, currency, total, pdf_uri, pdf_sha256)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning document_id",
            values).fetchone()
    with conn.cursor() as cur:  # attachment.frozen_line: the same rows the issued PDF embeds
        cur.executemany(
            f"insert into pipeline.invoice_lines (document_id, {', '.join(LINE_FIELDS)})"
            f" values (%s{', %s' * len(LINE_FIELDS)})",
            [(document_id, *(row[f] for f in LINE_FIELDS)) for row in map(frozen_line, lines, itertools.count(1))],
        )
    conn.execute("select pipeline.issue_document(%s, %s, %s)",
                 (document_id, record.invoice_number, record.usage_as_of))


def record_of(job: RenderJob, issuer: Issuer, reports_out: str, period: str,
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
        pdf_uri=pdf_uri(reports_out, f"{period}/{job.key}" if period else job.key),
        pdf_sha256=written[job.key][1],
        status=invoice.status,
        document_type=invoice.document_type,
        corrects=invoice.corrects,
        usage_as_of=invoice.usage_as_of,
    )


def pdf_uri(reports_out: str, name: str) -> str:
    """Where the PDF ``<name>.pdf`` is, in the form ``reports_out`` is configured in (any fsspec URL opens it).

    An absolute path for a local ``reports_out``, else a URL under it: ``s3://bucket/2026-10/CB-2026-000001.pdf``.
    """
    if "://" not in reports_out and "::" not in reports_out:
        return str((Path(reports_out) / f"{name}.pdf").resolve())
    return f"{reports_out.rstrip('/')}/{name}.pdf"
