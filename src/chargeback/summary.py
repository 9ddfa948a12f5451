"""The one-screen finance summary of a month: what was used, what it cost, what is billed."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from chargeback import warehouse
from chargeback.money import format_money
from chargeback.periods import month_window
from chargeback.settings import Settings


@dataclass(frozen=True)
class MonthSummary:
    period: str
    tenants: int
    usage: list[tuple[str, Decimal, str]]  # meter, quantity, unit
    infrastructure_cost: Decimal
    allocated: Decimal
    unallocated: Decimal
    billed: Decimal
    currency: str
    invoices: int


def month_summary(period: str, settings: Settings | None = None) -> MonthSummary:
    start, end = month_window(period)
    with warehouse.connect(settings) as conn:
        usage = conn.execute(
            """
            select meter, sum(quantity), min(unit) from marts.fct_invoice_lines
            where invoice_month = %s::date and line_type in ('usage', 'free_allowance')
            group by meter order by meter
            """,
            (start.date(),),
        ).fetchall()
        cost, currency = conn.execute(
            "select coalesce(sum(pool_cost), 0), coalesce(min(currency), 'USD') from marts.fct_cost_pools_hourly"
            " where hour_start >= %s and hour_start < %s",
            (start, end),
        ).fetchone()
        allocated, unallocated = conn.execute(
            """
            select coalesce(sum(allocated_cost) filter (where tenant_id is not null), 0),
                   coalesce(sum(allocated_cost) filter (where tenant_id is null), 0)
            from marts.fct_cost_allocations_hourly where hour_start >= %s and hour_start < %s
            """,
            (start, end),
        ).fetchone()
        tenants, billed = conn.execute(
            "select count(distinct tenant_id), coalesce(sum(total), 0) from marts.fct_invoices"
            " where invoice_month = %s::date",
            (start.date(),),
        ).fetchone()
        invoices = conn.execute(
            "select count(*) from pipeline.invoices where period_start = %s::date", (start.date(),)
        ).fetchone()[0]
    return MonthSummary(period, tenants, [tuple(r) for r in usage], cost, allocated, unallocated,
                        billed, currency, invoices)


def render(s: MonthSummary) -> str:
    width = 58
    lines = [
        f"Chargeback — {s.period}".center(width, " "),
        "=" * width,
        f"{'Tenants billed':<34}{s.tenants:>24,}",
        f"{'Invoices rendered':<34}{s.invoices:>24,}",
        "Usage",
    ]
    for meter, quantity, unit in s.usage:
        lines.append(f"  {meter:<32}{f'{quantity:,.3f} {unit}':>24}")
    lines += [
        "-" * width,
        f"{'Infrastructure cost':<34}{format_money(s.infrastructure_cost, s.currency):>24}",
        f"{'  allocated to tenants':<34}{format_money(s.allocated, s.currency):>24}",
        f"{'  unallocated (no driver usage)':<34}{format_money(s.unallocated, s.currency):>24}",
        f"{'Billed to tenants':<34}{format_money(s.billed, s.currency):>24}",
        f"{'Margin (billed - cost)':<34}{format_money(s.billed - s.infrastructure_cost, s.currency):>24}",
    ]
    return "\n".join(lines)
