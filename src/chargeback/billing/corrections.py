"""Corrections: a final invoice never changes; a later difference is a credit or debit note.

At each close, every final invoice of an earlier month is compared, per line type and
meter, with what the marts bill for that month now (less the notes already issued). A
difference in money becomes a note of its own that names the invoice it corrects,
numbered from the same gapless counter.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import fsspec
import psycopg

from chargeback.billing import store
from chargeback.billing.document import (
    DEFAULT_ISSUER,
    Invoice,
    InvoiceError,
    InvoiceLine,
    InvoiceRecord,
    Issuer,
    check_invoice,
    invoice_number,
)
from chargeback.billing.render import RenderJob, render_and_write
from chargeback.platform import warehouse
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)

_LINE_LABELS = {"usage": "Usage", "free_allowance": "Free allowance", "commitment_true_up": "Commitment true-up",
                "overage_uplift": "Overage uplift"}

# Per final invoice of a month before the closing one, per line type and meter: what the
# marts say now minus what has been issued (the invoice's lines and its notes' lines).

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
    close_start = Period.parse(close_period).first_day
    warehouse.ensure_schema(settings)
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    reports_dir = str(settings.reports_dir.resolve())
    with warehouse.connect(settings) as conn:
        last_number = store.lock_issuer(conn, issuer)
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
        tenants = store.read_tenants(conn, sorted({o[1] for o in originals.values()}))
        issue_date = issue_date or usage_as_of.date()
        jobs: list[RenderJob] = []
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
            jobs.append(RenderJob(invoice, lines, tenants[tenant_id], reports_dir,
                             name=f"{period_start:%Y-%m}/{note_number}"))
        written = render_and_write(jobs, fs, out_root.rstrip("/"), 1)
        records = [store.record_of(job, issuer, settings.reports_out, "", written) for job in jobs]
        for job, record in zip(jobs, records, strict=True):
            store.record_final(conn, record, job.lines, close_period=close_start)  # advances the counter
    for record in records:
        log.info("issued %s %s correcting %s: %s %s", record.document_type.replace("_", " "),
                 record.invoice_number, record.corrects, record.total, record.currency)
    return records
