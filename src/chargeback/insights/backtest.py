"""How good the forecasts are: past months replayed, and forecasts rendered for people.

``backtest(conn, months)`` forecasts each month from day 7, 14 and 21 (``as_of`` the end of that
day: only usage of the hours before it is read) and compares the billed ``(all)`` P50 with the
month's actual invoice totals (``marts.fct_invoices``): MAPE per level — tenant, team,
organisation, platform (a level's forecast is the sum of its tenants' P50s) — and, per tenant,
the share of actual month ends inside P10–P90 (band coverage). It reads the marts as they are
now, limited to hours before ``as_of``: usage learned late is counted as if it had been on time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

import psycopg

from chargeback.engine import repricing
from chargeback.insights import forecast
from chargeback.platform.money import format_money

DAYS = (7, 14, 21)
LEVELS = ("tenant", "team", "organisation", "platform")


@dataclasses.dataclass(frozen=True)
class Score:
    month: dt.date
    day: int
    level: str
    mape: float | None
    units: int
    coverage: float | None
    """tenant level only: share of actual totals inside [P10, P90]"""
    methods: dict[str, int]
    pinned: int = 0
    """tenant level: tenants left out of MAPE and coverage because their band has no width (a
    commitment above any usage they could reach: P10 = P90, the commitment, exactly)"""


def _scope(level: str, tenant: repricing.Tenant | None, tenant_id: str) -> str:
    if level == "tenant" or tenant is None:
        return tenant_id if level != "platform" else "platform"
    return {"team": f"{tenant.organisation}/{tenant.business_unit}/{tenant.team}",
            "organisation": tenant.organisation, "platform": "platform"}[level]


def backtest(conn: psycopg.Connection, months: Iterable[dt.date], days: Sequence[int] = DAYS) -> list[Score]:
    catalog = repricing.load_catalog(conn)
    scores = []
    for month in months:
        month = month.replace(day=1)
        actual = dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                   (month,)).fetchall())
        if not actual:
            continue
        for day in days:
            as_of = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)
            rows = [r for r in forecast.compute(conn, month, as_of, catalog=catalog)
                    if r.ledger == "billed" and r.meter == forecast.ALL and r.status == "ok"]
            scores.extend(score(month, day, rows, actual, catalog))
    return scores


def score(month: dt.date, day: int, rows: Sequence[forecast.Forecast], actual: dict[str, Decimal],
          catalog: repricing.Catalog) -> list[Score]:
    """MAPE per level and the tenant band coverage of one replay."""
    by_tenant = {r.tenant_id: r for r in rows}
    pinned = {t for t, r in by_tenant.items() if r.amount[0] == r.amount[2]}
    methods: dict[str, int] = defaultdict(int)
    for r in rows:
        methods[r.method] += 1
    out = []
    for level in LEVELS:
        f_sum: dict[str, Decimal] = defaultdict(Decimal)
        a_sum: dict[str, Decimal] = defaultdict(Decimal)
        for tenant_id in set(actual) | set(by_tenant):
            key = _scope(level, catalog.tenants.get(tenant_id), tenant_id)
            a_sum[key] += actual.get(tenant_id, Decimal(0))
            f_sum[key] += by_tenant[tenant_id].amount[1] if tenant_id in by_tenant else Decimal(0)
        skip = pinned if level == "tenant" else set()
        errors = [abs(f_sum[k] - a) / a for k, a in a_sum.items() if a > 0 and k not in skip]
        coverage = None
        if level == "tenant":
            inside = [by_tenant[t].amount[0] <= a <= by_tenant[t].amount[2]
                      for t, a in actual.items() if t in by_tenant and t not in pinned]
            coverage = sum(inside) / len(inside) if inside else None
        out.append(Score(month, day, level, float(sum(errors) / len(errors)) if errors else None, len(errors),
                         coverage, dict(methods), len(pinned) if level == "tenant" else 0))
    return out


def render_backtest(scores: Sequence[Score]) -> str:
    lines = [f"{'month':<8} {'day':>3} {'level':<13} {'units':>5} {'MAPE':>7} {'P10-P90 coverage':>17}  methods"]
    for s in scores:
        mape = "-" if s.mape is None else f"{s.mape:.1%}"
        cov = "" if s.coverage is None else f"{s.coverage:.0%}"
        methods = ", ".join(f"{m} {n}" for m, n in sorted(s.methods.items())) if s.level == "tenant" else ""
        if s.pinned:
            methods += f" ({s.pinned} at their commitment, left out)"
        lines.append(f"{s.month:%Y-%m} {s.day:>5} {s.level:<13} {s.units:>5} {mape:>7} {cov:>17}  {methods}")
    for day in sorted({s.day for s in scores}):
        for level in LEVELS:
            picked = [s for s in scores if s.day == day and s.level == level and s.mape is not None]
            if picked:
                mean = sum(s.mape for s in picked) / len(picked)
                lines.append(f"{'all':<8} {day:>3} {level:<13} {sum(s.units for s in picked):>5} {mean:>7.1%}")
    return "\n".join(lines)


def render_forecast(rows: Sequence[forecast.Forecast], catalog: repricing.Catalog) -> str:
    """Per tenant the billed P10/P50/P90 with its method (and the P50 of the cost to serve), then
    totals per team, organisation and the platform (sums of the tenants' quantiles: a sum of P50s
    is not the P50 of the sum)."""
    billed = [r for r in rows if r.ledger == "billed" and r.meter == forecast.ALL]
    if not billed:
        return "no forecasts"
    as_of = billed[0].as_of
    month = billed[0].forecast_month
    head = f"Forecast of {month:%Y-%m}, usage through {as_of:%Y-%m-%d %H:%M} UTC (billed, incl. contract terms)"
    cost = {r.tenant_id: r.amount[1] for r in rows
            if r.ledger == "cost" and r.meter == forecast.ALL and r.status == "ok" and r.amount}
    lines = [head, "=" * len(head),
             f"{'tenant':<10} {'method':<14} {'hist':>4} {'to date':>14} {'P10':>14} {'P50':>14} {'P90':>14}"
             f" {'cost P50':>14}"]
    totals: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 4)
    currency = next((r.currency for r in billed if r.currency), "USD")
    for r in sorted(billed, key=lambda r: r.tenant_id):
        todate = format_money(r.actual_to_date or Decimal(0), currency).split()[0]
        if r.status != "ok":
            lines.append(f"{r.tenant_id:<10} {'too early':<14} {r.history_days:>4} {todate:>14}"
                         f" {'—':>14} {'—':>14} {'—':>14}")
            continue
        p = [format_money(a, currency).split()[0] for a in r.amount]
        serve = format_money(cost[r.tenant_id], currency).split()[0] if r.tenant_id in cost else "—"
        lines.append(f"{r.tenant_id:<10} {r.method:<14} {r.history_days:>4} {todate:>14} {p[0]:>14} {p[1]:>14}"
                     f" {p[2]:>14} {serve:>14}")
        tenant = catalog.tenants.get(r.tenant_id)
        for level in ("team", "organisation", "platform"):
            key = (level, _scope(level, tenant, r.tenant_id))
            for k, v in enumerate((r.actual_to_date or Decimal(0), *r.amount)):
                totals[key][k] += v
    if totals:
        lines.append("")
        lines.append(f"{'totals (sums of the tenants quantiles)':<40} {'to date':>14} {'P10':>14} {'P50':>14}"
                     f" {'P90':>14}")
        for (level, key), v in sorted(totals.items(), key=lambda kv: (LEVELS.index(kv[0][0]), kv[0][1])):
            p = [format_money(a, currency).split()[0] for a in v]
            lines.append(f"{level + ' ' + key:<40} {p[0]:>14} {p[1]:>14} {p[2]:>14} {p[3]:>14}")
    lines.append(f"amounts in {currency}")
    return "\n".join(lines)
