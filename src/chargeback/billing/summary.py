"""The one-screen finance summary of a month: what was used, what it cost, what is billed.

It shows the two ledgers side by side: the infrastructure cost and where it went
(allocated to tenants, idle capacity redistributed or kept by the platform, pool-hours
no tenant used), the price billed and how it is made up (list price, discounts,
commitment true-ups, overage uplifts), the margin, and the same per organisation.
Every figure is read from the marts; nothing is recomputed here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from chargeback.platform import freshness, warehouse
from chargeback.platform.money import format_money
from chargeback.platform.periods import month_window
from chargeback.platform.settings import Settings


@dataclass(frozen=True)
class OrganisationLedger:
    organisation: str
    cost_to_serve: Decimal
    billed: Decimal
    margin: Decimal


@dataclass(frozen=True)
class MonthSummary:
    period: str
    tenants: int
    usage: list[tuple[str, Decimal, str]]  # meter, quantity, unit
    infrastructure_cost: Decimal
    allocated: Decimal
    idle_redistributed: Decimal
    idle_kept: Decimal
    unallocated: Decimal
    list_price: Decimal
    discounts: Decimal
    commitment_true_ups: Decimal
    overage_uplifts: Decimal
    billed: Decimal
    currency: str
    invoices: int
    """Final invoices of the month (drafts not counted)."""
    drafts: int
    organisations: list[OrganisationLedger]
    usage_through: dt.datetime | None = None
    """The instant up to which the marts knew the month's usage (capped at the month's end)."""

    @property
    def margin(self) -> Decimal:
        return self.billed - self.infrastructure_cost


def month_summary(period: str, settings: Settings | None = None) -> MonthSummary:
    start, end = month_window(period)
    month = start.date()
    with warehouse.connect(settings) as conn:
        usage = conn.execute(
            """
            select meter, sum(quantity), min(unit) from marts.fct_invoice_lines
            where invoice_month = %s::date and line_type in ('usage', 'free_allowance')
            group by meter order by meter
            """,
            (month,),
        ).fetchall()
        cost, currency = conn.execute(
            "select coalesce(sum(pool_cost), 0), coalesce(min(currency), 'USD') from marts.fct_cost_pools_hourly"
            " where hour_start >= %s and hour_start < %s",
            (start, end),
        ).fetchone()
        allocated, idle_redistributed, idle_kept, unallocated = conn.execute(
            """
            select coalesce(sum(allocated_cost) filter (where cost_type = 'allocated'), 0),
                   coalesce(sum(allocated_cost) filter (where cost_type = 'idle' and tenant_id is not null), 0),
                   coalesce(sum(allocated_cost) filter (where cost_type = 'idle' and tenant_id is null), 0),
                   coalesce(sum(allocated_cost) filter (where cost_type = 'unallocated'), 0)
            from marts.fct_cost_allocations_monthly where cost_month = %s::date
            """,
            (month,),
        ).fetchone()
        tenants, list_price, discounts, true_ups, uplifts, billed = conn.execute(
            """
            select count(distinct tenant_id), coalesce(sum(list_subtotal), 0), coalesce(sum(discount_total), 0),
                   coalesce(sum(commitment_true_up), 0), coalesce(sum(overage_uplift), 0), coalesce(sum(total), 0)
            from marts.fct_invoices where invoice_month = %s::date
            """,
            (month,),
        ).fetchone()
        organisations = conn.execute(
            """
            select organisation, cost_to_serve, billed, margin from marts.fct_ledger_rollup_monthly
            where invoice_month = %s::date and level = 'organisation' order by organisation
            """,
            (month,),
        ).fetchall()
        invoices, drafts = conn.execute(
            "select count(*) filter (where status = 'final'), count(*) filter (where status = 'draft')"
            " from pipeline.invoices where period_start = %s::date and document_type = 'invoice'",
            (month,),
        ).fetchone()
        through = freshness.usage_through(conn, end)
    return MonthSummary(
        period, tenants, [tuple(r) for r in usage], cost, allocated, idle_redistributed, idle_kept, unallocated,
        list_price, discounts, true_ups, uplifts, billed, currency, invoices, drafts,
        [OrganisationLedger(*r) for r in organisations], through,
    )


def render(s: MonthSummary) -> str:
    width = 66

    def money(label: str, amount: Decimal, sign: str = "") -> str:
        return f"{label:<40}{sign + format_money(amount, s.currency):>26}"

    lines = [
        f"Chargeback — {s.period}".center(width, " "),
        freshness.usage_through_text(s.usage_through).center(width, " ").rstrip(),
        "=" * width,
        f"{'Tenants billed':<40}{s.tenants:>26,}",
        f"{'Invoices issued (final)':<40}{s.invoices:>26,}",
        *([f"{'Invoice drafts (not yet issued)':<40}{s.drafts:>26,}"] if s.drafts else []),
        "Usage",
    ]
    for meter, quantity, unit in s.usage:
        lines.append(f"  {meter:<38}{f'{quantity:,.3f} {unit}':>26}")
    lines += [
        "-" * width,
        "Cost to serve (showback)",
        money("  infrastructure cost", s.infrastructure_cost),
        money("    allocated to tenants", s.allocated),
        money("    idle capacity, redistributed", s.idle_redistributed),
        money("    idle capacity, kept by the platform", s.idle_kept),
        money("    unallocated (no driver usage)", s.unallocated),
        "Price billed (chargeback)",
        money("  list price", s.list_price),
        money("  discounts", s.discounts, "- "),
        money("  commitment true-ups", s.commitment_true_ups, "+ "),
        money("  overage uplifts", s.overage_uplifts, "+ "),
        money("  billed to tenants", s.billed),
        "-" * width,
        money("Margin (billed - cost)", s.margin),
    ]
    if s.organisations:
        lines += ["", f"{'By organisation':<22}{'cost':>14}{'billed':>15}{'margin':>15}"]
        for org in s.organisations:
            lines.append(f"  {org.organisation[:20]:<20}{org.cost_to_serve:>14,}{org.billed:>15,}{org.margin:>15,}")
    return "\n".join(lines)
