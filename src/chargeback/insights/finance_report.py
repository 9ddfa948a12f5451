"""The finance report of a month: ``<reports_out>/<YYYY-MM>/finance-report.pdf``, beside the invoices.

What finance reads at month close, on a few A4 pages: both ledgers (cost to serve and
price billed) by organisation → business unit → team with the margin and the shared and
idle cost inside the cost to serve; where the cost sits per ledger item; the 12-month
trend (a chart and its figures); the top movers against the previous month; the budgets
and their state; the forecast of the month in progress.

Every figure is read from the marts as ``Decimal`` and printed through the one money rule
(:func:`chargeback.platform.money.format_money`, :func:`chargeback.billing.formatting.format_cents`);
nothing is recomputed here but sums the marts define. Each block of data is read by one
function (``read_*``), so that a block moving to another mart changes one place.

Charts are the specs of :mod:`chargeback.insights.charts`, rendered to SVG by vl-convert
(no network: data is inline, external URLs are refused) with the shipped font, checked to
reference nothing outside itself, and embedded inline in the HTML that WeasyPrint lays out
through the same restricted URL fetcher as the invoices (``reports/templates`` and
``reports/fonts`` only). Floats exist only in the charts' drawing data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import io
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import fsspec
import jinja2
import markupsafe
import pandas as pd
import psycopg
import pypdf
import vl_convert

from chargeback.billing.document import InvoiceError
from chargeback.billing.formatting import MONTHS, format_cents
from chargeback.billing.render import html_to_pdf
from chargeback.insights import charts
from chargeback.platform import freshness, warehouse
from chargeback.platform.money import format_money, format_signed
from chargeback.platform.periods import month_window
from chargeback.platform.settings import Settings, get_settings

TEMPLATE = "finance-report.html"
FILE_NAME = "finance-report.pdf"
TREND_MONTHS = 12
MOVERS = 5

PLATFORM = "(platform)"
"""The organisation (and tenant) the ledger marts give cost the platform keeps."""

ITEM_LABELS = {
    "shared": "Shared cost (no driver meter)",
    "idle": "Idle capacity, redistributed to tenants",
    "contract": "Contract terms (commitment true-ups, overage uplifts)",
    "platform:idle": "Idle capacity, kept by the platform",
    "platform:unallocated": "Unallocated (pool-hours no tenant used)",
}


class FinanceReportError(InvoiceError):
    """The report cannot be made (no ledger for the month, several currencies, a chart that
    would reference something outside itself); the message is one line."""


# --------------------------------------------------------------------------- the data


@dataclasses.dataclass(frozen=True)
class LedgerRow:
    """One row of the hierarchy: the platform, an organisation, a business unit or a team."""

    level: str
    organisation: str | None
    business_unit: str | None
    team: str | None
    cost_to_serve: Decimal
    shared: Decimal
    idle: Decimal
    billed: Decimal
    margin: Decimal
    margin_percent: Decimal | None

    @property
    def name(self) -> str:
        if self.level == "platform":
            return "All organisations"
        return {"organisation": self.organisation, "business_unit": self.business_unit,
                "team": self.team}[self.level] or ""


@dataclasses.dataclass(frozen=True)
class ItemRow:
    """Both ledgers of one ledger item over the whole platform (a meter, shared, idle, contract…)."""

    item: str
    cost_to_serve: Decimal
    billed: Decimal
    margin: Decimal

    @property
    def label(self) -> str:
        return ITEM_LABELS.get(self.item, f"Usage of {self.item}")


@dataclasses.dataclass(frozen=True)
class TrendPoint:
    month: dt.date
    cost_to_serve: Decimal
    billed: Decimal
    margin: Decimal


@dataclasses.dataclass(frozen=True)
class Mover:
    """A tenant or team whose price billed changed most from the previous month."""

    level: str
    key: str
    label: str
    billed_before: Decimal
    billed: Decimal
    cost_before: Decimal
    cost_to_serve: Decimal

    @property
    def billed_change(self) -> Decimal:
        return self.billed - self.billed_before

    @property
    def cost_change(self) -> Decimal:
        return self.cost_to_serve - self.cost_before


@dataclasses.dataclass(frozen=True)
class Block:
    """A block another part of the insights feeds (budgets, forecasts): its rows, or why there are none."""

    rows: tuple[dict[str, Any], ...] = ()
    note: str = ""


@dataclasses.dataclass(frozen=True)
class FinanceReport:
    period: str
    currency: str
    usage_through: dt.datetime | None
    hierarchy: tuple[LedgerRow, ...]
    items: tuple[ItemRow, ...]
    trend: tuple[TrendPoint, ...]
    movers: tuple[Mover, ...]
    budgets: Block
    forecast: Block
    anomalies: Block = Block()
    recommendations: Block = Block()

    @property
    def platform(self) -> LedgerRow:
        return next(row for row in self.hierarchy if row.level == "platform")


def _month(period: str) -> dt.date:
    return month_window(period)[0].date()


def _add_months(month: dt.date, months: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


def read_currency(conn: psycopg.Connection, month: dt.date) -> str:
    """The month's one currency (the report shows one); a month without a ledger is refused."""
    currencies = [r[0] for r in conn.execute(
        "select distinct currency from marts.fct_ledger_rollup_monthly where invoice_month = %s and level = 'platform'"
        " order by 1", (month,))]
    if not currencies:
        raise FinanceReportError(f"finance report of {month:%Y-%m}: marts.fct_ledger_rollup_monthly has no ledger "
                                 "for the month — load and transform its usage first (chargeback load, "
                                 "chargeback transform)")
    if len(currencies) > 1:
        raise FinanceReportError(f"finance report of {month:%Y-%m}: the ledger holds several currencies "
                                 f"({', '.join(currencies)}); the report shows one")
    return currencies[0]


def read_usage_through(conn: psycopg.Connection, month: dt.date) -> dt.datetime | None:
    """Up to when the marts know usage, capped at the month's end ("usage through …"): the
    same instant the trend marts, budgets and ``chargeback status`` state
    (:func:`chargeback.platform.freshness.usage_through`)."""
    value = freshness.usage_through(conn, month_window(f"{month:%Y-%m}")[1])
    return value.astimezone(dt.UTC) if value else None


_HIERARCHY = """
with labelled as (
    select coalesce(organisation, %(platform)s) as organisation,
           coalesce(business_unit, %(platform)s) as business_unit,
           coalesce(team, %(platform)s) as team,
           ledger_item, cost_to_serve
    from marts.fct_ledger_monthly
    where invoice_month = %(month)s
),
parts as (
    select organisation, business_unit, team,
           sum(cost_to_serve) filter (where ledger_item = 'shared') as shared,
           sum(cost_to_serve) filter (where ledger_item = 'idle') as idle,
           grouping(organisation, business_unit, team) as g
    from labelled
    group by rollup (organisation, business_unit, team)
),
parts_by_level as (
    select case g when 7 then 'platform' when 3 then 'organisation' when 1 then 'business_unit' else 'team' end
               as level,
           case when g < 7 then organisation end as organisation,
           case when g < 3 then business_unit end as business_unit,
           case when g < 1 then team end as team,
           coalesce(shared, 0) as shared, coalesce(idle, 0) as idle
    from parts
)
select r.level, r.organisation, r.business_unit, r.team, r.cost_to_serve,
       coalesce(p.shared, 0), coalesce(p.idle, 0), r.billed, r.margin, r.margin_percent
from marts.fct_ledger_rollup_monthly as r
left join parts_by_level as p
    on p.level = r.level
   and p.organisation is not distinct from r.organisation
   and p.business_unit is not distinct from r.business_unit
   and p.team is not distinct from r.team
where r.invoice_month = %(month)s and r.level <> 'tenant'
  and not (r.organisation = %(platform)s and r.level in ('business_unit', 'team'))
order by r.level <> 'platform', r.organisation = %(platform)s, r.organisation,
         r.business_unit nulls first, r.team nulls first
"""


def read_hierarchy(conn: psycopg.Connection, month: dt.date) -> tuple[LedgerRow, ...]:
    """Both ledgers per organisation, business unit and team (``fct_ledger_rollup_monthly``),
    with the shared and idle cost inside each cost to serve (``fct_ledger_monthly``'s items
    ``shared`` and ``idle``). Cost the platform keeps is the organisation ``(platform)``,
    shown once (its business unit and team rows repeat it)."""
    rows = conn.execute(_HIERARCHY, {"month": month, "platform": PLATFORM}).fetchall()
    return tuple(LedgerRow(*row) for row in rows)


def read_items(conn: psycopg.Connection, month: dt.date) -> tuple[ItemRow, ...]:
    """Both ledgers per ledger item over the platform: meters, shared, idle, contract, and
    what the platform keeps (``platform:idle``, ``platform:unallocated``)."""
    rows = conn.execute(
        """
        select case when tenant_id is null then 'platform:' || ledger_item else ledger_item end as item,
               sum(cost_to_serve), sum(billed), sum(margin)
        from marts.fct_ledger_monthly where invoice_month = %s
        group by 1
        order by (case when tenant_id is null then 'platform:' || ledger_item else ledger_item end)
                     in ('shared', 'idle', 'contract', 'platform:idle', 'platform:unallocated'),
                 array_position(array['shared', 'idle', 'contract', 'platform:idle', 'platform:unallocated'],
                                case when tenant_id is null then 'platform:' || ledger_item else ledger_item end),
                 1
        """, (month,)).fetchall()
    return tuple(ItemRow(*row) for row in rows)


def read_trend(conn: psycopg.Connection, month: dt.date, months: int = TREND_MONTHS) -> tuple[TrendPoint, ...]:
    """The platform's two ledgers and margin for the ``months`` months ending with ``month``,
    from the trend mart (``fct_trends_monthly``, level platform, meter ``(all)``: per month the
    same sums as the ledger marts); months without usage are left out."""
    rows = conn.execute(
        """
        select trend_month, cost_to_serve, billed_amount, margin from marts.fct_trends_monthly
        where scope_level = 'platform' and meter = '(all)' and trend_month > %s and trend_month <= %s
        order by trend_month
        """, (_add_months(month, -months), month)).fetchall()
    return tuple(TrendPoint(*row) for row in rows)


_MOVERS = """
with scopes as (
    -- this month's scopes with their month-over-month deltas (a month in progress: over the same days)
    select scope_level, scope_key, tenant_id,
           billed_amount - coalesce(billed_mom_delta, billed_amount) as billed_before, billed_amount as billed,
           cost_to_serve - coalesce(cost_mom_delta, cost_to_serve) as cost_before, cost_to_serve
    from marts.fct_trends_monthly
    where trend_month = %(month)s and scope_level in ('tenant', 'team') and meter = '(all)'
      and organisation <> %(platform)s
    union all
    -- the previous month's scopes that have nothing this month
    select p.scope_level, p.scope_key, p.tenant_id, p.billed_amount, 0, p.cost_to_serve, 0
    from marts.fct_trends_monthly as p
    where p.trend_month = %(before)s and p.scope_level in ('tenant', 'team') and p.meter = '(all)'
      and p.organisation <> %(platform)s
      and not exists (select from marts.fct_trends_monthly as c
                      where c.trend_month = %(month)s and c.scope_level = p.scope_level
                        and c.scope_key = p.scope_key and c.meter = '(all)')
),
ranked as (
    select *, row_number() over (
        partition by scope_level order by abs(billed - billed_before) desc, scope_key) as rank
    from scopes
    where billed <> billed_before
)
select r.scope_level, r.scope_key, coalesce(t.tenant_name, ''), r.billed_before, r.billed, r.cost_before,
       r.cost_to_serve
from ranked as r
left join marts.dim_tenants as t on t.tenant_id = r.tenant_id
where r.rank <= %(limit)s
order by r.scope_level = 'team', r.rank
"""


def read_movers(conn: psycopg.Connection, month: dt.date, limit: int = MOVERS) -> tuple[Mover, ...]:
    """The ``limit`` tenants and the ``limit`` teams whose price billed changed most (in
    absolute terms) from the previous month, with their cost to serve then and now — the
    trend mart's month-over-month deltas (``fct_trends_monthly``, meter ``(all)``), and the
    scopes of the previous month that have nothing this month."""
    rows = conn.execute(_MOVERS, {"month": month, "before": _add_months(month, -1), "limit": limit,
                                  "platform": PLATFORM}).fetchall()
    return tuple(Mover(level, key, f"{key} {name}".strip() if level == "tenant" else key, *amounts)
                 for level, key, name, *amounts in rows)


_LEDGERS = {"billed": "billed", "cost": "cost to serve"}


def read_budgets(conn: psycopg.Connection, month: dt.date) -> Block:
    """Each budget's state for the month as last evaluated (``insights.budget_status``), with
    the thresholds that fired (``insights.budget_alerts``); or why there is none."""
    if not _exists(conn, "insights.budget_status"):
        return Block(note="Budgets are not available in this installation.")
    rows = conn.execute(
        """
        select s.budget_id, s.scope_level, s.scope_key, s.ledger, s.budget_amount, s.currency, s.actual,
               s.used_percent, s.forecast_p50, s.forecast_state, s.state,
               coalesce((select string_agg(a.threshold, ', ' order by a.alert_id) from insights.budget_alerts as a
                         where a.budget_id = s.budget_id and a.month = s.month), '')
        from insights.budget_status as s where s.month = %s order by s.budget_id
        """, (month,)).fetchall()
    if rows:
        return Block(rows=tuple(
            {"Budget": budget, "Scope": f"{level.replace('_', ' ')} {key}", "Ledger": _LEDGERS.get(ledger, ledger),
             "Budget amount": format_money(amount, currency),
             "Actual": "—" if actual is None else format_money(actual, currency),
             "Used": _percent(used),
             "Forecast P50": format_money(p50, currency) if p50 is not None else forecast_state.replace("_", " "),
             "State": state.replace("_", " "), "Thresholds fired": fired or "none"}
            for budget, level, key, ledger, amount, currency, actual, used, p50, forecast_state, state, fired in rows))
    configured = _exists(conn, "config.budgets") and conn.execute(
        "select exists (select from config.budgets where valid_from <= %s and (valid_to is null or valid_to > %s))",
        (_add_months(month, 1) - dt.timedelta(days=1), month)).fetchone()[0]
    if configured:
        return Block(note=f"Budgets are configured but were not evaluated for {month:%Y-%m} "
                          f"(chargeback budgets check --month {month:%Y-%m}).")
    return Block(note="No budgets configured (config/budgets.yml).")


ANOMALIES = 10


def read_anomalies(conn: psycopg.Connection, month: dt.date, limit: int = ANOMALIES) -> Block:
    """The month's anomalies not resolved (``insights.anomalies``), the largest changes first, each
    with its volume/rate/mix split and its sentence; or why there is none."""
    if not _exists(conn, "insights.anomalies"):
        return Block(note="Anomalies have not been detected yet (chargeback anomalies detect).")
    end = _add_months(month, 1)
    rows = conn.execute(
        """
        select anomaly_id, tenant_id,
               meter || case when source <> '(all)' then ' from ' || source else '' end
                     || case when ledger = 'cost' then ' (cost to serve)' else '' end,
               first_day, last_day, currency, actual - expected, volume, rate, mix,
               status, ack_kind, sentence, count(*) over ()
        from insights.anomalies
        where first_day >= %s and first_day < %s and status <> 'resolved'
        order by abs(actual - expected) desc, anomaly_id limit %s
        """, (month, end, limit)).fetchall()
    if not rows:
        return Block(note=f"No open anomaly began in {month:%Y-%m}.")
    total = rows[0][-1]
    more = f" The {limit} largest of {total} are shown (chargeback anomalies list)." if total > limit else ""
    return Block(tuple(
        {"#": str(anomaly_id), "Tenant": tenant, "Meter": meter,
         "Days": f"{first:%d %b}" + ("" if first == last else f" to {last:%d %b}"),
         "Change": format_signed(change), "Volume": format_signed(volume), "Rate": format_signed(rate),
         "Mix": format_signed(mix),
         "Status": status + (f" ({ack})" if ack else ""), "Explanation": sentence}
        for anomaly_id, tenant, meter, first, last, _currency, change, volume, rate, mix, status, ack, sentence, _
        in rows), note=f"In {rows[0][5]}; the effects add up to the change to the cent.{more}")


RECOMMENDATIONS = 10


def read_recommendations(conn: psycopg.Connection, month: dt.date, limit: int = RECOMMENDATIONS) -> Block:
    """The month's current recommendations not dismissed (``insights.recommendations``), the largest
    saving first, with their total; or why there is none."""
    if not _exists(conn, "insights.recommendations"):
        return Block(note="No recommendations yet (chargeback recommend --period).")
    rows = conn.execute(
        """
        select tenant_id, kind, title, saving, currency, confidence, status,
               count(*) over (), sum(saving) over ()
        from insights.recommendations
        where period = %s and current and status <> 'dismissed'
        order by saving desc, tenant_id, kind, target limit %s
        """, (month, limit)).fetchall()
    if not rows:
        return Block(note=f"No recommendation for {month:%Y-%m} (chargeback recommend --period {month:%Y-%m}).")
    count, total, currency = rows[0][7], rows[0][8], rows[0][4]
    shown = f" The {limit} largest are shown." if count > limit else ""
    return Block(tuple(
        {"Tenant": tenant, "Kind": kind.replace("_", " "), "Change": title,
         "Saving a month": format_money(saving, cur), "Confidence": confidence, "Status": status}
        for tenant, kind, title, saving, cur, confidence, status, _, _ in rows),
        note=f"{count} recommendation{'' if count == 1 else 's'}, saving {format_money(total, currency)} a month in"
             f" all: each saving is the month re-priced with the change, less its invoice.{shown}")


def read_forecast(conn: psycopg.Connection, month: dt.date) -> Block:
    """The month-end forecast of the month after ``month`` (the month in progress at the close),
    from ``insights.forecasts`` at its latest usage-through instant: each ledger's P10, P50 and
    P90 summed over the tenants' totals (meter ``(all)``) — a sum of P50s, not the P50 of the sum."""
    following = _add_months(month, 1)
    name = f"{MONTHS[following.month - 1]} {following.year}"
    if not _exists(conn, "insights.forecasts"):
        return Block(note="Forecasts are not available in this installation.")
    rows = conn.execute(
        """
        with latest as (
            select max(as_of) as as_of from insights.forecasts where forecast_month = %(month)s
        )
        select f.ledger, f.as_of, min(f.currency), count(*) filter (where f.status = 'ok'),
               count(*) filter (where f.status = 'too_early'),
               sum(f.actual_to_date) filter (where f.status = 'ok'),
               sum(f.amount_p10) filter (where f.status = 'ok'), sum(f.amount_p50) filter (where f.status = 'ok'),
               sum(f.amount_p90) filter (where f.status = 'ok')
        from insights.forecasts as f
        join latest on f.as_of = latest.as_of
        where f.forecast_month = %(month)s and f.meter = '(all)'
        group by f.ledger, f.as_of
        order by f.ledger = 'cost', f.ledger
        """, {"month": following}).fetchall()
    if not rows:
        return Block(note=f"No forecast of {name} yet.")
    as_of = rows[0][1]
    if not any(ok for _, _, _, ok, *_ in rows):
        return Block(note=f"Too early to forecast {name} (usage through {_instant(as_of)}).")
    return Block(
        rows=tuple({"Ledger": _LEDGERS.get(ledger, ledger), "Tenants forecast": f"{ok}",
                    "Too early": f"{early}", "To date": format_money(to_date, currency),
                    "P10": format_money(p10, currency), "P50": format_money(p50, currency),
                    "P90": format_money(p90, currency)}
                   for ledger, _, currency, ok, early, to_date, p10, p50, p90 in rows if ok),
        note=f"Month-end forecast of {name}, usage through {_instant(as_of)}: each ledger's P10, P50 and P90 "
             "summed over the tenants (a sum of tenants' P50s, not the P50 of the platform).")


def gather(period: str, settings: Settings | None = None) -> FinanceReport:
    """Read every block of the report from the warehouse, in one snapshot (a repeatable-read transaction)."""
    month = _month(period)
    with warehouse.connect(settings) as conn:
        conn.execute("set transaction isolation level repeatable read")
        currency = read_currency(conn, month)
        return FinanceReport(
            period=period,
            currency=currency,
            usage_through=read_usage_through(conn, month),
            hierarchy=read_hierarchy(conn, month),
            items=read_items(conn, month),
            trend=read_trend(conn, month),
            movers=read_movers(conn, month),
            budgets=read_budgets(conn, month),
            forecast=read_forecast(conn, month),
            anomalies=read_anomalies(conn, month),
            recommendations=read_recommendations(conn, month),
        )


# --------------------------------------------------------------------------- the charts


def trend_frame(trend: Sequence[TrendPoint]) -> pd.DataFrame:
    """:func:`charts.ledger_trend`'s input (floats for drawing only)."""
    return pd.DataFrame(
        [{"month": pd.Timestamp(p.month), "ledger": ledger, "amount": float(amount)}
         for p in trend for ledger, amount in (("Cost to serve", p.cost_to_serve), ("Billed", p.billed),
                                              ("Margin", p.margin))],
        columns=["month", "ledger", "amount"])


def organisations_frame(hierarchy: Sequence[LedgerRow]) -> pd.DataFrame:
    """:func:`charts.ledgers_by_group`'s input: both ledgers per organisation."""
    return pd.DataFrame(
        [{"group": row.name, "ledger": ledger, "amount": float(amount)}
         for row in hierarchy if row.level == "organisation"
         for ledger, amount in (("Cost to serve", row.cost_to_serve), ("Billed", row.billed))],
        columns=["group", "ledger", "amount"])


def movers_frame(movers: Sequence[Mover]) -> pd.DataFrame:
    """:func:`charts.top_movers`'s input: the tenants' change of the price billed."""
    return pd.DataFrame([{"scope": m.label, "change": float(m.billed_change)} for m in movers if m.level == "tenant"],
                        columns=["scope", "change"])


@functools.cache
def _register_fonts(fonts_dir: str) -> None:
    vl_convert.register_font_directory(fonts_dir)


_FORBIDDEN_ELEMENTS = {"image", "foreignObject", "script", "use", "a", "style"}


def chart_svg(chart: Any, *, fonts_dir: Path | str) -> markupsafe.Markup:
    """``chart`` as inline SVG markup: vl-convert with the shipped fonts and no URL allowed,
    then checked to be well-formed and self-contained (no image, link, script or style)."""
    _register_fonts(str(Path(fonts_dir).resolve()))
    svg = vl_convert.vegalite_to_svg(charts.for_print(chart).to_dict(), allowed_base_urls=[])
    if "<!" in svg:  # no DTD, entity or CDATA: nothing for the parser to expand
        raise FinanceReportError("finance report: a chart's SVG holds a markup declaration")
    try:
        root = ET.fromstring(svg)  # noqa: S314 - vl-convert's output, without declarations (checked above)
    except ET.ParseError as exc:
        raise FinanceReportError(f"finance report: a chart's SVG is not well-formed ({exc})") from None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        hrefs = [name for name in element.attrib if name.rsplit("}", 1)[-1] == "href"]
        if tag in _FORBIDDEN_ELEMENTS or hrefs:
            raise FinanceReportError(f"finance report: a chart's SVG holds <{tag}> with a reference outside itself")
    return markupsafe.Markup(svg)  # noqa: S704 - vl-convert's output, parsed and checked above


# --------------------------------------------------------------------------- the page


@functools.cache
def _environment(templates_dir: str) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _percent(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:,.2f} %"


def _instant(value: dt.datetime | None) -> str:
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if value else "no usage recorded"


def report_context(report: FinanceReport, *, fonts_dir: Path | str) -> dict[str, Any]:
    """What the template sees: every figure already formatted (the template does no arithmetic)."""
    month = _month(report.period)
    currency = report.currency
    total = report.platform
    previous = next((p for p in report.trend if p.month == _add_months(month, -1)), None)
    return {
        "title": f"Finance report — {MONTHS[month.month - 1]} {month.year}",
        "period": report.period,
        "currency": currency,
        "usage_through": freshness.usage_through_text(report.usage_through),
        "created": (report.usage_through or month_window(report.period)[1]).date().isoformat(),
        "headline": [
            ("Cost to serve", format_money(total.cost_to_serve, currency)),
            ("Billed", format_money(total.billed, currency)),
            ("Margin", format_money(total.margin, currency)),
            ("Margin on billed", _percent(total.margin_percent)),
        ],
        "previous": (f"{MONTHS[previous.month.month - 1]} {previous.month.year}: cost to serve "
                     f"{format_money(previous.cost_to_serve, currency)}, billed "
                     f"{format_money(previous.billed, currency)}, margin {format_money(previous.margin, currency)}"
                     ) if previous else "",
        "hierarchy": [
            {"level": row.level, "name": row.name, "cost": format_cents(row.cost_to_serve),
             "shared": format_cents(row.shared), "idle": format_cents(row.idle), "billed": format_cents(row.billed),
             "margin": format_cents(row.margin), "margin_percent": _percent(row.margin_percent)}
            for row in report.hierarchy
        ],
        "items": [
            {"label": item.label, "item": item.item, "cost": format_cents(item.cost_to_serve),
             "billed": format_cents(item.billed), "margin": format_cents(item.margin)}
            for item in report.items
        ],
        "items_total": {"cost": format_cents(total.cost_to_serve), "billed": format_cents(total.billed),
                        "margin": format_cents(total.margin)},
        "trend": [
            {"month": f"{MONTHS[p.month.month - 1][:3]} {p.month.year}", "cost": format_cents(p.cost_to_serve),
             "billed": format_cents(p.billed), "margin": format_cents(p.margin)}
            for p in report.trend
        ],
        "trend_chart": chart_svg(charts.ledger_trend(trend_frame(report.trend)), fonts_dir=fonts_dir),
        "organisations_chart": chart_svg(charts.ledgers_by_group(organisations_frame(report.hierarchy)),
                                         fonts_dir=fonts_dir),
        "movers": {
            level: [{"label": m.label, "billed_before": format_cents(m.billed_before), "billed": format_cents(m.billed),
                     "billed_change": format_signed(m.billed_change), "cost_change": format_signed(m.cost_change)}
                    for m in report.movers if m.level == level]
            for level in ("tenant", "team")
        },
        "movers_chart": (chart_svg(charts.top_movers(movers_frame(report.movers)), fonts_dir=fonts_dir)
                         if any(m.level == "tenant" for m in report.movers) else ""),
        "previous_month": f"{MONTHS[_add_months(month, -1).month - 1]} {_add_months(month, -1).year}",
        "budgets": report.budgets,
        "anomalies": report.anomalies,
        "recommendations": report.recommendations,
        "forecast": report.forecast,
    }



def render_html(report: FinanceReport, *, reports_dir: Path | str | None = None) -> str:
    reports_dir = Path(reports_dir or get_settings().reports_dir).resolve()
    template = _environment(str(reports_dir / "templates")).get_template(TEMPLATE)
    return template.render(report_context(report, fonts_dir=reports_dir / "fonts"))


def render_pdf(report: FinanceReport, *, reports_dir: Path | str | None = None) -> bytes:
    """The report as PDF bytes: reads only the template, its CSS and the fonts."""
    reports_dir = Path(reports_dir or get_settings().reports_dir).resolve()
    html = render_html(report, reports_dir=reports_dir)
    return html_to_pdf(html, reports_dir=reports_dir, base_url=reports_dir / "templates" / TEMPLATE)


# --------------------------------------------------------------------------- the file


@dataclasses.dataclass(frozen=True)
class Written:
    path: str
    sha256: str
    pages: int
    usage_through: dt.datetime | None
    read_seconds: float
    render_seconds: float

    def summary(self) -> str:
        return (f"wrote {self.path}: finance report, {self.pages} pages, "
                f"{freshness.usage_through_text(self.usage_through)}"
                f" (read {self.read_seconds:.2f} s, rendered {self.render_seconds:.2f} s)")


def report_path(period: str, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"{settings.reports_out.rstrip('/')}/{period}/{FILE_NAME}"


def write_report(period: str, settings: Settings | None = None, *, out: str | None = None) -> Written:
    """Read the marts (refusing marts that are not current), render, and put the PDF in
    place atomically at ``out`` (default ``<reports_out>/<YYYY-MM>/finance-report.pdf``)."""
    settings = settings or get_settings()
    freshness.require_current_marts(period, settings)
    t0 = time.perf_counter()
    report = gather(period, settings)
    t1 = time.perf_counter()
    pdf = render_pdf(report, reports_dir=settings.reports_dir)
    t2 = time.perf_counter()
    target = out or report_path(period, settings)
    fs, path = fsspec.core.url_to_fs(target)
    folder, name = path.rsplit("/", 1)
    fs.makedirs(folder, exist_ok=True)
    temp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.pipe_file(temp, pdf)
        fs.mv(temp, path)
    finally:
        if fs.exists(temp):
            fs.rm(temp)
    pages = len(pypdf.PdfReader(io.BytesIO(pdf)).pages)
    return Written(target, hashlib.sha256(pdf).hexdigest(), pages, report.usage_through, t1 - t0, t2 - t1)
