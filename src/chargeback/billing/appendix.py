"""The invoice appendix "where your usage came from": per meter, the tenant's top sources in
the month with their share of the usage and of the amount, the rest as "other".

Computed when invoices are rendered, into
:attr:`chargeback.billing.document.Invoice.usage_sources`, in one query per month: each
meter's amount as the invoice shows it (the sum of its lines) split over the sources by
their usage of the meter in the month (``intermediate.int_usage_sources_daily``), in whole
cents with the largest-remainder rule, ties to the first source by name (``collate "C"``).
So a source's share of the amount follows its share of the usage to the cent and a meter's
amounts add up to its lines exactly — unlike the sum of the daily splits in
``marts.fct_showback_sources_daily``, whose per-day rounding can move a small meter's
whole amount to one source. Showback only: it explains the lines and never changes them —
a source's amount is its usage's share of the meter's billed amount, not a price of its
own. Printed for a tenant with more than one source (``(none)``, usage without a source, is
not one); ``settings.invoice_sources_top`` (``CHARGEBACK_INVOICE_SOURCES_TOP``, default 5)
sources per meter, 0 for no appendix.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal

import psycopg

from chargeback.billing.document import InvoiceLine, SourceShare, WayToPayLess
from chargeback.platform import warehouse
from chargeback.platform.settings import Settings

log = logging.getLogger(__name__)

_QUERY = """
with lines as (  -- each meter's amount as the invoices being rendered show it
    select tenant_id, meter, sum(amount) as amount, max(unit) as unit
    from unnest(%(tenants)s::text[], %(meters)s::text[], %(amounts)s::numeric[], %(units)s::text[])
        as line (tenant_id, meter, amount, unit)
    group by tenant_id, meter
),
usage as (  -- the month's usage per source; a gauge's in unit-hours
    select tenant_id, meter, source, sum(quantity) as weight, min(unit) as unit, min(kind) as kind
    from intermediate.int_usage_sources_daily
    where usage_day >= %(month)s and usage_day < %(next)s and tenant_id = any(%(tenants)s::text[])
    group by tenant_id, meter, source
),
attributed as (
    select tenant_id from usage where source <> '(none)'
    group by tenant_id having count(distinct source) > 1
),
sources as (  -- a meter's sources; an amount without usage of the meter is (none)'s
    select coalesce(usage.tenant_id, lines.tenant_id) as tenant_id, coalesce(usage.meter, lines.meter) as meter,
           coalesce(usage.source, '(none)') as source, coalesce(usage.weight, 0) as weight,
           case when usage.kind = 'gauge' then usage.unit || '-month' else coalesce(usage.unit, lines.unit) end
               as unit,
           usage.kind, coalesce(lines.amount, 0) as amount
    from usage
    full join lines on usage.tenant_id = lines.tenant_id and usage.meter = lines.meter
    where coalesce(usage.tenant_id, lines.tenant_id) in (select tenant_id from attributed)
),
weighted as (  -- largest remainder (macros/largest_remainder.sql) on the amount's magnitude
    select *, abs(amount) * 100 * case when total_weight = 0 then 1 else weight end as numerator,
           case when total_weight = 0 then source_count else total_weight end as denominator
    from (select *, sum(weight) over per_meter as total_weight, count(*) over per_meter as source_count
          from sources window per_meter as (partition by tenant_id, meter)) as totals
),
split as (
    select *, (sign(amount) * (div(numerator, denominator)
        + case when row_number() over (partition by tenant_id, meter
                                       order by mod(numerator, denominator) desc, source collate "C")
                    <= abs(amount) * 100 - sum(div(numerator, denominator)) over (partition by tenant_id, meter)
               then 1 else 0 end) / 100)::numeric(18, 2) as source_amount
    from weighted
),
ranked as (
    select *,
           case when weight = 0 and source_amount = 0 then %(top)s + 1  -- nothing to show: "other"
                else least(row_number() over (partition by tenant_id, meter
                                              order by weight desc, source_amount desc, source collate "C"),
                           %(top)s + 1)
           end as place
    from split
)
select tenant_id, meter, place, case when place <= %(top)s then min(source) end as source,
       sum(weight), max(unit), max(kind), sum(source_amount), max(total_weight), max(amount), count(*)
from ranked
group by tenant_id, meter, place
having place <= %(top)s or sum(weight) <> 0 or sum(source_amount) <> 0
order by tenant_id, meter, place
"""


def read(conn: psycopg.Connection, month: dt.date, top: int,
         lines: Mapping[str, Sequence[InvoiceLine]]) -> dict[str, tuple[SourceShare, ...]]:
    """``{tenant_id: rows}`` for the tenants of ``lines`` (their invoices' lines of ``month``)
    with more than one source (none if ``top`` is 0). A meter's amounts split the sum of its
    ``lines`` over the month's sources by usage and add up to it exactly."""
    if top <= 0:
        return {}
    metered = [(tenant, line) for tenant, tenant_lines in lines.items() for line in tenant_lines if line.meter]
    if not metered:
        return {}
    next_month = (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    hours = Decimal((next_month - month).days * 24)
    params = {
        "month": month, "next": next_month, "top": top,
        "tenants": [tenant for tenant, _ in metered], "meters": [line.meter for _, line in metered],
        "amounts": [line.amount for _, line in metered],
        "units": [line.usage_unit or line.unit for _, line in metered],
    }
    out: dict[str, list[SourceShare]] = defaultdict(list)
    for tenant, meter, _, source, weight, unit, kind, amount, meter_weight, meter_amount, count in conn.execute(
            _QUERY, params).fetchall():
        out[tenant].append(SourceShare(
            meter=meter, source=source, usage_quantity=round(weight / hours, 12) if kind == "gauge" else weight,
            unit=unit or "", usage_share=weight / meter_weight if meter_weight else Decimal(0),
            amount=amount, amount_share=amount / meter_amount if meter_amount else None,
            other_count=count if source is None else 0))
    return {tenant: tuple(rows) for tenant, rows in out.items()}


def percent(share: Decimal | None) -> str:
    """A share as printed: ``0.62449 -> "62.4 %"`` (half-up to a tenth of a percent); "—" for none."""
    if share is None:
        return "—"
    return f"{(share * 100).quantize(Decimal('0.1'), rounding='ROUND_HALF_UP')} %"


def other_label(count: int) -> str:
    """The "other" row's name: ``other (1 source)``, ``other (12 sources)``."""
    return f"other ({count} source{'' if count == 1 else 's'})"


def read_usage_sources(month: dt.date, settings: Settings,
                       lines: Mapping[str, Sequence[InvoiceLine]]) -> dict[str, tuple[SourceShare, ...]]:
    """:func:`read` on a connection of its own, with ``settings.invoice_sources_top``; ``lines``:
    the invoices' lines per tenant, as rendered. A warehouse whose models predate the source
    showback gives no appendix (a warning), never a failed month."""
    if settings.invoice_sources_top <= 0:
        return {}
    with warehouse.connect(settings) as conn:
        try:
            return read(conn, month, settings.invoice_sources_top, lines)
        except psycopg.errors.UndefinedTable:
            log.warning("intermediate.int_usage_sources_daily is missing: invoices of %s without the sources"
                        " appendix (run the transform)", month)
            return {}


PAY_LESS_TOP = 3


def read_ways_to_pay_less(month: dt.date, settings: Settings, top: int = PAY_LESS_TOP,
                          ) -> dict[str, tuple[WayToPayLess, ...]]:
    """Each tenant's ``top`` current recommendations of ``month`` not dismissed, the largest saving
    first (``insights.recommendations``, written by ``chargeback recommend`` before the month's
    invoices are final); none where there are none."""
    out: dict[str, list[WayToPayLess]] = {}
    with warehouse.connect(settings) as conn:
        if conn.execute("select to_regclass('insights.recommendations')").fetchone()[0] is None:
            return {}
        for tenant_id, title, evidence, saving, confidence in conn.execute(
                "select tenant_id, title, evidence, saving, confidence from ("
                " select *, row_number() over (partition by tenant_id order by saving desc, kind, target) as n"
                " from insights.recommendations where period = %s and current and status <> 'dismissed') r"
                " where n <= %s order by tenant_id, n", (month, top)):
            out.setdefault(tenant_id, []).append(WayToPayLess(title, evidence, saving, confidence))
    return {t: tuple(v) for t, v in out.items()}

