"""The invoice appendix "where your usage came from": per meter, the tenant's top sources in
the month with their share of the usage and of the amount, the rest as "other".

Read from ``marts.fct_showback_sources_daily`` when invoices are rendered, into
:attr:`chargeback.billing.document.Invoice.usage_sources`. Showback only: it explains the
lines and never changes them — a source's amount is its usage's share of the meter's billed
amount (largest remainder), not a price of its own. Printed for a tenant with more than one
source (``(none)``, usage without a source, is not one); ``settings.invoice_sources_top``
(``CHARGEBACK_INVOICE_SOURCES_TOP``, default 5) sources per meter, 0 for no appendix.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from decimal import Decimal

import psycopg

from chargeback.billing.document import SourceShare
from chargeback.platform import warehouse
from chargeback.platform.settings import Settings

log = logging.getLogger(__name__)

_QUERY = """
with monthly as (
    select tenant_id, meter, source, coalesce(sum(usage_quantity), 0) as usage_quantity, max(unit) as unit,
           sum(billed_amount) as amount
    from marts.fct_showback_sources_daily
    where ledger_month = %(month)s and meter not in ('(shared)', '(contract)')
    group by tenant_id, meter, source
),
attributed as (
    select tenant_id from monthly where source <> '(none)'
    group by tenant_id having count(distinct source) > 1
),
ranked as (
    select monthly.*,
           case when usage_quantity = 0 and amount = 0 then %(top)s + 1  -- nothing to show: "other"
                else least(row_number() over (partition by monthly.tenant_id, meter
                                              order by usage_quantity desc, amount desc, source), %(top)s + 1)
           end as place,
           sum(usage_quantity) over (partition by monthly.tenant_id, meter) as meter_usage,
           sum(amount) over (partition by monthly.tenant_id, meter) as meter_amount
    from monthly join attributed using (tenant_id)
)
select tenant_id, meter, place, case when place <= %(top)s then min(source) end as source,
       sum(usage_quantity), max(unit), sum(amount), max(meter_usage), max(meter_amount), count(*)
from ranked
group by tenant_id, meter, place
having place <= %(top)s or sum(usage_quantity) <> 0 or sum(amount) <> 0
order by tenant_id, meter, place
"""


def read(conn: psycopg.Connection, month: dt.date, top: int) -> dict[str, tuple[SourceShare, ...]]:
    """``{tenant_id: rows}`` for the tenants of ``month`` with more than one source (none if ``top`` is 0)."""
    if top <= 0:
        return {}
    out: dict[str, list[SourceShare]] = defaultdict(list)
    for tenant, meter, _, source, usage, unit, amount, meter_usage, meter_amount, count in conn.execute(
            _QUERY, {"month": month, "top": top}).fetchall():
        out[tenant].append(SourceShare(
            meter=meter, source=source, usage_quantity=usage, unit=unit or "",
            usage_share=usage / meter_usage if meter_usage else Decimal(0),
            amount=amount, amount_share=amount / meter_amount if meter_amount else None,
            other_count=count if source is None else 0))
    return {tenant: tuple(rows) for tenant, rows in out.items()}


def percent(share: Decimal | None) -> str:
    """A share as printed: ``0.62449 -> "62.4 %"`` (half-up to a tenth of a percent); "—" for none."""
    if share is None:
        return "—"
    return f"{(share * 100).quantize(Decimal('0.1'), rounding='ROUND_HALF_UP')} %"


def read_usage_sources(month: dt.date, settings: Settings) -> dict[str, tuple[SourceShare, ...]]:
    """:func:`read` on a connection of its own, with ``settings.invoice_sources_top``. A warehouse
    whose marts predate the source showback gives no appendix (a warning), never a failed month."""
    if settings.invoice_sources_top <= 0:
        return {}
    with warehouse.connect(settings) as conn:
        try:
            return read(conn, month, settings.invoice_sources_top)
        except psycopg.errors.UndefinedTable:
            log.warning("marts.fct_showback_sources_daily is missing: invoices of %s without the sources appendix"
                        " (run the transform)", month)
            return {}
