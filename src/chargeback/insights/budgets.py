"""Budgets and budget alerts: are we inside budget, and who needs to know — once.

:func:`check` is the one call (``chargeback budgets check``, the insights DAG): it validates and
applies ``config/budgets.yml`` (:mod:`chargeback.insights.budget_config`), :func:`evaluate`-s every
budget in force for a month against the marts, keeps each budget's state in
``insights.budget_status``, fires the thresholds crossed for the first time and delivers them.

**Once.** A threshold fires once per budget, threshold and month: the unique key of
``insights.budget_alerts`` (``budget_id, threshold, month``) holds it, so replays, restatements
and a figure that drops below a threshold and rises again never send twice. The figures of the
evaluation that fired it are kept with it, with the data's freshness (``usage_through``).

**Record, then send.** The alert row and its line in ``pipeline.events`` are committed first;
then the line goes to the budget's channels (e-mail and/or a webhook, through
:mod:`chargeback.platform.notify`). A channel that fails stays in ``channels_pending`` and is tried
again by the next evaluations (at most :data:`MAX_ATTEMPTS` times in all), the channels already
reached are not sent again; ``delivered_at`` is set when none is left.

**Actuals** come from one function, :func:`_scope_actuals` (the ledger marts today); the forecast
P50 from ``insights.forecasts`` (summed over a scope's tenants — a sum of P50s is not the P50 of
the sum, see docs/INSIGHTS.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from chargeback.insights import budget_config
from chargeback.insights.budget_config import Effective
from chargeback.platform import events, freshness, notify, warehouse
from chargeback.platform.money import format_money, round_money
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger("chargeback.insights.budgets")

MAX_ATTEMPTS = 5
"""Deliveries of an alert tried in all (the first and the retries of later evaluations)."""
PACE_FROM_HOURS = 72
"""The pace rule waits for three days of usage: a month's first hours say little about its pace."""
CONTRIBUTORS = 3
NAME_LIMIT = 60
"""Characters of a contributor's name in a line (a source name is tenant-supplied text)."""
LINE_PART_LIMIT = 400
"""Characters of each part of an alert line that leaves the system (see events.Event.bounded_line)."""
HUNDRED = Decimal(100)


@dataclasses.dataclass(frozen=True)
class Contributor:
    name: str
    amount: Decimal

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "amount": str(self.amount)}


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One budget's figures for a month at one instant."""

    budget: Effective
    month: dt.date
    state: str
    """``ok``, ``at_risk`` (forecast or pace over), ``over`` (actual ≥ amount), ``no_data``, ``not_measurable``."""
    usage_through: dt.datetime | None
    actual: Decimal | None = None
    elapsed_percent: Decimal = Decimal(0)
    forecast_p50: Decimal | None = None
    forecast_state: str = "missing"
    """``ok``, ``too_early``, ``missing`` (no forecast row), ``not_available`` (source/label scopes)."""
    forecast_as_of: dt.datetime | None = None
    breach_date: dt.date | None = None
    contributors: tuple[Contributor, ...] = ()
    note: str | None = None
    crossed: tuple[tuple[str, str, Decimal], ...] = ()
    """(threshold, kind, value) crossed at this evaluation, e.g. ``('actual:80', 'actual', 80)``."""

    @property
    def used_percent(self) -> Decimal | None:
        return None if self.actual is None else round_money(self.actual / self.budget.amount * HUNDRED)


# --------------------------------------------------------------------------- reading the marts

def _exists(conn: psycopg.Connection, relation: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (relation,)).fetchone()[0]


_LEDGER_COLUMN = {"billed": "billed", "cost": "cost_to_serve"}
_SHOWBACK_COLUMN = {"billed": "billed_amount", "cost": "cost_to_serve"}


def _scope_actuals(conn: psycopg.Connection, b: Effective, month: Period, through: dt.datetime
                   ) -> tuple[dict[tuple[str, str], Decimal], str | None, list[str]]:
    """The scope's actual to date as ``{(contributor, currency): amount}``, the kind of contributor
    (``tenant``, ``meter``, ``source``), and the scope's tenants; or a reason it cannot be measured.

    The one place actuals are read: the daily ledger (``int_ledger_daily``: per tenant and month
    it adds up exactly to the ledger marts; drafts for a month in progress), or the monthly ledger
    mart (``fct_ledger_monthly``) where the daily one is not built, for organisation, business unit,
    team and tenant; the showback marts (``fct_showback_sources_daily``/``fct_showback_labels_daily``)
    for source and label, and for a tenant's contributors (its sources).
    Days after the one holding the last known hour (``through``) do not count: a build over a whole
    month spreads fixed pool cost over hours still to come, and nobody has used them yet.
    Returns ``({}, reason, [])`` when the scope is not measurable (yet).
    """
    s = b.scope
    days = _known_days(month, through)
    if b.level in ("organisation", "business_unit", "team"):
        tenants = [r[0] for r in conn.execute(
            "select tenant_id from config.tenants where organisation = %s"
            " and (%s::text is null or business_unit = %s) and (%s::text is null or team = %s) order by tenant_id",
            (s.organisation, s.business_unit, s.business_unit, s.team, s.team)).fetchall()]
        return _ledger(conn, b, month, days, "tenant_id", tenants), "tenant", tenants
    if b.level == "tenant":
        if _exists(conn, "marts.fct_showback_sources_daily"):
            found = _showback(conn, "marts.fct_showback_sources_daily", "source", b, days,
                              "tenant_id = %s", (s.tenant,))
            if found is not None:
                return found, "source", [s.tenant]
        return _ledger(conn, b, month, days, "meter", [s.tenant]), "meter", [s.tenant]
    relation = "marts.fct_showback_sources_daily" if b.level == "source" else "marts.fct_showback_labels_daily"
    if not _exists(conn, relation):
        return {}, f"not yet measurable: {relation} (showback by {b.level}) is not built", []
    if b.level == "source":
        found = _showback(conn, relation, "meter", b, days, "tenant_id = %s and source = %s", (s.tenant, s.source))
        tenants = [s.tenant]
    else:
        found = _showback(conn, relation, "tenant_id", b, days, "label_key = %s and label_value = %s",
                          (s.label, s.value))
        tenants = []
    if found is None:
        return {}, f"not yet measurable: {relation} has no day, cost_to_serve or billed_amount column", []
    return found, ("meter" if b.level == "source" else "tenant"), tenants


def _known_days(month: Period, through: dt.datetime) -> tuple[dt.date, dt.date]:
    """``[first day, day after the one holding the last known hour)`` of ``month``."""
    start, end = month.window
    last_hour = min(through, end) - dt.timedelta(hours=1)
    return start.date(), last_hour.astimezone(dt.UTC).date() + dt.timedelta(days=1)


def _ledger(conn: psycopg.Connection, b: Effective, month: Period, days: tuple[dt.date, dt.date], by: str,
            tenants: list[str]) -> dict[tuple[str, str], Decimal]:
    """Σ of the budget's ledger over ``days`` of ``month`` for ``tenants``, per ``by`` (``tenant_id`` or
    ``meter``) and currency: from ``int_ledger_daily``, else ``fct_ledger_monthly`` (meter: its ledger item)."""
    if _exists(conn, "marts.int_ledger_daily"):
        sql = (f"select {by}, currency, sum({_SHOWBACK_COLUMN[b.ledger]}) from marts.int_ledger_daily"
               " where ledger_day >= %s and ledger_day < %s and tenant_id = any(%s) group by 1, 2")
        params: tuple = (*days, tenants)
    else:
        key = "ledger_item" if by == "meter" else by
        sql = (f"select {key}, currency, sum({_LEDGER_COLUMN[b.ledger]}) from marts.fct_ledger_monthly"
               " where invoice_month = %s and tenant_id = any(%s) group by 1, 2")
        params = (month.first_day, tenants)
    return {(str(k), c): a for k, c, a in conn.execute(sql, params).fetchall()}


def _showback(conn: psycopg.Connection, relation: str, by: str, b: Effective, days: tuple[dt.date, dt.date],
              where: str, params: tuple) -> dict[tuple[str, str], Decimal] | None:
    """Σ of a showback mart's ledger column over ``days``, per ``by`` and currency (``None``: the
    mart lacks the columns this reads)."""
    schema, table = relation.split(".")
    columns = {r[0] for r in conn.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s",
        (schema, table)).fetchall()}
    day = next((c for c in ("ledger_day", "usage_day", "day") if c in columns), None)
    amount = _SHOWBACK_COLUMN[b.ledger]
    if day is None or amount not in columns or by not in columns or "currency" not in columns:
        return None
    rows = conn.execute(
        f"select {by}, currency, sum({amount}) from {relation}"
        f" where {day} >= %s and {day} < %s and {where} group by 1, 2",
        (*days, *params)).fetchall()
    return {(str(k), c): a for k, c, a in rows}


def _forecast(conn: psycopg.Connection, b: Effective, month: Period, tenants: list[str],
              tenants_with_usage: set[str]) -> tuple[Decimal | None, str, dt.datetime | None]:
    """Σ of the latest month-end P50 (meter ``(all)``) of the scope's tenants, its state and as-of.

    Every tenant with usage needs a forecast with status ``ok``; one still ``too_early`` makes the
    scope too early, one without a row makes it ``missing``. Tenants without usage nor a row add 0.
    """
    if b.level in ("source", "label"):
        return None, "not_available", None
    if not _exists(conn, "insights.forecasts"):
        return None, "missing", None
    rows = conn.execute(
        "select distinct on (tenant_id) tenant_id, status, amount_p50, as_of from insights.forecasts"
        " where forecast_month = %s and meter = '(all)' and ledger = %s and tenant_id = any(%s)"
        " order by tenant_id, as_of desc", (month.first_day, b.ledger, tenants)).fetchall()
    found = {t: (status, p50, as_of) for t, status, p50, as_of in rows}
    if any(found[t][0] != "ok" for t in found if t in tenants_with_usage):
        return None, "too_early", max(r[2] for r in found.values())
    if not tenants_with_usage <= found.keys():
        return None, "missing", None
    ok = [v for v in found.values() if v[0] == "ok" and v[1] is not None]
    if not ok:
        return None, "missing", None
    return round_money(sum((v[1] for v in ok), Decimal(0))), "ok", max(v[2] for v in ok)


# --------------------------------------------------------------------------- evaluating

def _crossing_day(conn: psycopg.Connection, b: Effective, month: Period, through: dt.datetime,
                  tenants: list[str]) -> dt.date | None:
    """The first day of ``month`` on which the scope's cumulative daily amount reached the budget,
    from the daily ledger (``int_ledger_daily``) or the showback marts; ``None`` without them."""
    s = b.scope
    if b.level in ("organisation", "business_unit", "team", "tenant"):
        relation, where, params = "marts.int_ledger_daily", "tenant_id = any(%s)", (tenants,)
    elif b.level == "source":
        relation, where, params = "marts.fct_showback_sources_daily", "tenant_id = %s and source = %s", (
            s.tenant, s.source)
    else:
        relation, where, params = "marts.fct_showback_labels_daily", "label_key = %s and label_value = %s", (
            s.label, s.value)
    if not _exists(conn, relation):
        return None
    row = conn.execute(
        f"select ledger_day from (select ledger_day, sum(sum({_SHOWBACK_COLUMN[b.ledger]})) over"
        f" (order by ledger_day) as running from {relation}"
        f" where ledger_day >= %s and ledger_day < %s and {where} group by ledger_day) as d"
        " where running >= %s order by ledger_day limit 1",
        (*_known_days(month, through), *params, b.amount)).fetchone()
    return row[0] if row else None


def breach_date(amount: Decimal, actual: Decimal, p50: Decimal | None, usage_through: dt.datetime,
                month_end: dt.datetime) -> dt.date | None:
    """The day the P50 path is predicted to cross ``amount``: the path runs from the actual at
    ``usage_through`` to the P50 at the month's end, linearly in time. ``None`` when the actual has
    crossed it already (the day it did is read from the daily marts: :func:`_crossing_day`), without
    a forecast, or with a P50 at or under the budget."""
    if actual >= amount or p50 is None or p50 <= amount or usage_through >= month_end:
        return None
    fraction = (amount - actual) / (p50 - actual)
    seconds = Decimal((month_end - usage_through).total_seconds()) * fraction
    return (usage_through + dt.timedelta(seconds=float(seconds))).date()


def evaluate(month: str | Period, budgets: list[Effective] | None = None, settings: Settings | None = None,
             conn: psycopg.Connection | None = None) -> list[Evaluation]:
    """Every budget in force on ``month``'s first day, against the marts as they are now."""
    month = Period.parse(month)
    if budgets is None:
        budgets = budget_config.read((settings or get_settings()).config_dir)
    if conn is None:
        with warehouse.connect(settings) as own:
            return evaluate(month, budgets, settings, own)
    start, end = month.window
    through = freshness.usage_through(conn, end)
    through = through if through is not None and through > start else None
    elapsed = Decimal(0) if through is None else round_money(
        Decimal((through - start).total_seconds()) / Decimal((end - start).total_seconds()) * HUNDRED)
    out = []
    for b in (b for b in budgets if b.in_force(month.first_day)):
        if through is None:
            out.append(Evaluation(b, month.first_day, "no_data", None, note=f"no usage of {month} in the marts yet"))
            continue
        amounts, kind, tenants = _scope_actuals(conn, b, month, through)
        if kind not in ("tenant", "meter", "source"):
            out.append(Evaluation(b, month.first_day, "not_measurable", through, elapsed_percent=elapsed, note=kind,
                                  forecast_state="not_available"))
            continue
        currencies = {c for _, c in amounts} - {b.currency}
        if currencies:
            out.append(Evaluation(b, month.first_day, "not_measurable", through, elapsed_percent=elapsed,
                                  note=f"the scope is priced in {', '.join(sorted(currencies))}, the budget in"
                                       f" {b.currency}", forecast_state="not_available"))
            continue
        per: dict[str, Decimal] = {}
        for (name, _), amount in amounts.items():
            per[name] = per.get(name, Decimal(0)) + amount
        actual = round_money(sum(per.values(), Decimal(0)))
        top = sorted(((n, a) for n, a in per.items() if a > 0), key=lambda x: (-x[1], x[0]))[:CONTRIBUTORS]
        contributors = tuple(Contributor(n, round_money(a)) for n, a in top)
        with_usage = set(per) if kind == "tenant" else ({b.scope.tenant} if b.scope.tenant and actual > 0 else set())
        p50, f_state, f_as_of = _forecast(conn, b, month, tenants, with_usage)
        breach = (_crossing_day(conn, b, month, through, tenants) if actual >= b.amount
                  else breach_date(b.amount, actual, p50, through, end))
        crossed = _crossed(b, actual, elapsed, p50 if through < end else None, through - start)
        kinds = {k for _, k, _ in crossed}
        state = "over" if actual >= b.amount else "at_risk" if kinds & {"forecast", "pace"} or breach else "ok"
        note = None if f_state == "ok" else {
            "too_early": "forecast thresholds not evaluated: the forecast says it is too early in the month",
            "missing": "forecast thresholds not evaluated: no forecast of the month for the scope",
            "not_available": "forecast thresholds not evaluated: forecasts are per tenant"}[f_state]
        out.append(Evaluation(b, month.first_day, state, through, actual, elapsed, p50, f_state, f_as_of, breach,
                              contributors, note, crossed))
    return out


def _crossed(b: Effective, actual: Decimal, elapsed: Decimal, p50: Decimal | None,
             since_start: dt.timedelta) -> tuple[tuple[str, str, Decimal], ...]:
    """The thresholds ``b`` has crossed; ``p50`` ``None`` when there is no forecast, or the month
    is complete (its actual is final: a forecast of it would only repeat the actual thresholds)."""
    crossed = [(f"actual:{_pct(t)}", "actual", t) for t in b.actual if actual >= b.amount * t / HUNDRED]
    if p50 is not None:
        crossed += [(f"forecast:{_pct(t)}", "forecast", t) for t in b.forecast if p50 > b.amount * t / HUNDRED]
    used = actual / b.amount * HUNDRED
    if b.pace is not None and since_start >= dt.timedelta(hours=PACE_FROM_HOURS) and used - elapsed > b.pace:
        crossed.append((f"pace:{_pct(b.pace)}", "pace", b.pace))
    return tuple(crossed)


def _pct(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# --------------------------------------------------------------------------- the alert line

_KIND_TEXT = {"actual": "reached {} % of the budget", "forecast": "forecast (P50) above {} % of the budget",
              "pace": "ahead of the month's pace by more than {} points"}


def _crossed_text(fired: list[tuple[str, str, Decimal]]) -> str:
    """``reached 50 and 80 % of the budget; ahead of the month's pace by more than 20 points``."""
    parts = []
    for kind in ("actual", "forecast", "pace"):
        values = [_pct(v) for _, k, v in fired if k == kind]
        if values:
            joined = values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"
            parts.append(_KIND_TEXT[kind].format(joined))
    return "; ".join(parts)
_LEVEL_TEXT = {"organisation": "organisation", "business_unit": "business unit", "team": "team",
               "tenant": "tenant", "source": "source", "label": "label"}


def alert_event(e: Evaluation, fired: list[tuple[str, str, Decimal]]) -> events.Event:
    """The one line of the thresholds ``fired`` at evaluation ``e`` (parts cleaned by events)."""
    b = e.budget
    ledger = "billed" if b.ledger == "billed" else "cost to serve"
    what = f"budget {b.budget} ({_LEVEL_TEXT[b.level]} {b.scope.key}, {ledger})"
    crossed = _crossed_text(fired)
    forecast = (f"forecast P50 {format_money(e.forecast_p50, b.currency)}"
                f" ({_pct(round_money(e.forecast_p50 / b.amount * HUNDRED))} %)" if e.forecast_p50 is not None
                else {"too_early": "forecast: too early in the month", "not_available": "forecast: none for this scope"}
                .get(e.forecast_state, "forecast: none yet"))
    breach = (f"over budget since {e.breach_date}" if e.actual >= b.amount and e.breach_date
              else "over budget" if e.actual >= b.amount
              else f"predicted to exceed the budget on {e.breach_date}" if e.breach_date else "no breach predicted")
    why = (f"{crossed}: {format_money(e.actual, b.currency)} of {format_money(b.amount, b.currency)}"
           f" ({_pct(e.used_percent)} %) used with {_pct(e.elapsed_percent)} % of the month elapsed; {forecast};"
           f" {breach}")
    kind_of = "tenants" if b.level in ("organisation", "business_unit", "team", "label") else "items"
    top = ", ".join(f"{events.clean(c.name, NAME_LIMIT)} {format_money(c.amount, b.currency)}"
                    for c in e.contributors) or "none"
    action = f"biggest {kind_of}: {top} (chargeback budgets list --month {e.month:%Y-%m})"
    return events.Event("notice", what, why, action, where=f"{e.month:%Y-%m}, usage through"
                        f" {e.usage_through:%Y-%m-%dT%H:%MZ}", severity="warning")


# --------------------------------------------------------------------------- recording and delivering

@dataclasses.dataclass(frozen=True)
class Outcome:
    evaluations: list[Evaluation]
    fired: list[tuple[str, str, str]]
    """(budget, threshold, line) fired by this check."""
    delivered: int
    """Alert messages fully delivered by this check (new ones and retries)."""
    failures: list[str]


def check(month: str | Period, settings: Settings | None = None, channels: notify.Channels | None = None,
          environ: dict[str, str] | None = None) -> Outcome:
    """Validate and apply budgets.yml, evaluate ``month``, record states, fire and deliver."""
    settings = settings or get_settings()
    month = Period.parse(month)
    budgets = budget_config.read(settings.config_dir)
    warehouse.ensure_schema(settings)
    budget_config.apply(budgets, settings)
    channels = channels or notify.Channels.from_env(environ)
    env = os.environ if environ is None else environ
    fired: list[tuple[str, str, str]] = []
    with warehouse.connect(settings) as conn:
        evaluations = evaluate(month, budgets, settings, conn)
        conn.execute("delete from insights.budget_status where month = %s and budget_id <> all(%s)",
                     (month.first_day, [e.budget.budget for e in evaluations]))
        for e in evaluations:
            _record_status(conn, e)
            fired += _fire(conn, e, channels, env)
    delivered, failures = deliver_pending(settings, channels, env)
    return Outcome(evaluations, fired, delivered, failures)


def _record_status(conn: psycopg.Connection, e: Evaluation) -> None:
    b = e.budget
    conn.execute(
        "insert into insights.budget_status (budget_id, month, valid_from, scope_level, scope_key, ledger,"
        " budget_amount, currency, state, actual, used_percent, elapsed_percent, forecast_p50, forecast_state,"
        " forecast_as_of, breach_date, contributors, usage_through, note)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " on conflict (budget_id, month) do update set (valid_from, scope_level, scope_key, ledger, budget_amount,"
        " currency, state, actual, used_percent, elapsed_percent, forecast_p50, forecast_state, forecast_as_of,"
        " breach_date, contributors, usage_through, note, evaluated_at) = (excluded.valid_from, excluded.scope_level,"
        " excluded.scope_key, excluded.ledger, excluded.budget_amount, excluded.currency, excluded.state,"
        " excluded.actual, excluded.used_percent, excluded.elapsed_percent, excluded.forecast_p50,"
        " excluded.forecast_state, excluded.forecast_as_of, excluded.breach_date, excluded.contributors,"
        " excluded.usage_through, excluded.note, now())",
        (b.budget, e.month, b.valid_from, b.level, b.scope.key, b.ledger, b.amount, b.currency, e.state, e.actual,
         e.used_percent, e.elapsed_percent, e.forecast_p50, e.forecast_state, e.forecast_as_of, e.breach_date,
         Jsonb([c.as_json() for c in e.contributors]), e.usage_through, e.note))


def _channels_for(b: Effective, channels: notify.Channels, env: dict[str, str]) -> list[str]:
    """The channels a budget's alert goes to besides pipeline.events: ``email`` when a mail
    server and recipients are known, ``webhook:<name>`` when one is named or configured."""
    out = []
    if channels.smtp_host and (b.email if b.email is not None else channels.smtp_to):
        out.append("email")
    if b.webhook:
        out.append(f"webhook:{b.webhook}")
    elif channels.webhook:
        out.append("webhook:default")
    return out


def _fire(conn: psycopg.Connection, e: Evaluation, channels: notify.Channels, env: dict[str, str]
          ) -> list[tuple[str, str, str]]:
    """Insert the thresholds crossed for the first time this month (the unique key keeps out the
    others) and, when any is new, their one line in pipeline.events — in the caller's transaction."""
    if not e.crossed:
        return []
    b = e.budget
    pending = _channels_for(b, channels, env)
    held = {r[0] for r in conn.execute(
        "select threshold from insights.budget_alerts where budget_id = %s and month = %s",
        (b.budget, e.month)).fetchall()}
    new = [c for c in e.crossed if c[0] not in held]
    if not new:
        return []
    event = alert_event(e, new)
    line = event.bounded_line(LINE_PART_LIMIT)
    inserted = []
    for threshold, kind, value in new:
        row = conn.execute(
            "insert into insights.budget_alerts (budget_id, month, threshold, threshold_kind, threshold_value,"
            " scope_level, scope_key, ledger, budget_amount, currency, actual, used_percent, elapsed_percent,"
            " forecast_p50, forecast_as_of, breach_date, contributors, usage_through, line, channels_pending,"
            " delivered_at)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " case when %s then now() end)"
            " on conflict (budget_id, threshold, month) do nothing returning threshold",
            (b.budget, e.month, threshold, kind, value, b.level, b.scope.key, b.ledger, b.amount, b.currency,
             e.actual, e.used_percent, e.elapsed_percent, e.forecast_p50, e.forecast_as_of, e.breach_date,
             Jsonb([c.as_json() for c in e.contributors]), e.usage_through, line, pending, not pending)).fetchone()
        if row:
            inserted.append(threshold)
    if inserted:
        events.record(event, conn=conn, details={"budget": b.budget, "month": f"{e.month:%Y-%m}",
                                                 "thresholds": inserted})
    return [(b.budget, t, line) for t in inserted]


def deliver_pending(settings: Settings | None = None, channels: notify.Channels | None = None,
                    environ: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Send every alert line with channels pending and attempts left; return how many lines were
    fully delivered and the failures (one line each). Rows are locked while they are sent
    (``skip locked``): two checks at once never send the same line twice."""
    channels = channels or notify.Channels.from_env(environ)
    env = os.environ if environ is None else environ
    delivered, failures = 0, []
    with warehouse.connect(settings) as conn:
        rows = conn.execute(
            "select alert_id, budget_id, month, line, channels_pending, delivery_attempts from insights.budget_alerts"
            " where delivered_at is null and delivery_attempts < %s order by alert_id", (MAX_ATTEMPTS,)).fetchall()
        groups: dict[tuple[str, dt.date, str, tuple[str, ...]], list[int]] = {}
        attempts: dict[tuple[str, dt.date, str, tuple[str, ...]], int] = {}
        for alert_id, budget_id, month, line, pending, tried in rows:
            key = (budget_id, month, line, tuple(pending))
            groups.setdefault(key, []).append(alert_id)
            attempts[key] = max(attempts.get(key, 0), tried + 1)
        recipients = _recipients(conn, {k[0] for k in groups}, {k[1] for k in groups})
        conn.commit()
        # one transaction per message: its rows are locked while it is sent and its outcome is committed
        # at once, so a later failure (or a killed worker) never makes an earlier message go out again
        for (budget_id, month, line, pending), ids in groups.items():
            with conn.transaction():
                locked = conn.execute(
                    "select alert_id from insights.budget_alerts where alert_id = any(%s) and delivered_at is null"
                    " and channels_pending = %s for update skip locked", (ids, list(pending))).fetchall()
                if len(locked) != len(ids):
                    continue  # another check is sending it, or sent it since
                left, errors = notify.send_pending(pending, line, channels, recipients.get((budget_id, month)), env)
                conn.execute(
                    "update insights.budget_alerts set channels_pending = %s,"
                    " delivery_attempts = delivery_attempts + 1, last_error = %s,"
                    " delivered_at = case when %s then now() end where alert_id = any(%s)",
                    (left, "; ".join(errors) or None, not left, ids))
                if left and attempts[(budget_id, month, line, pending)] >= MAX_ATTEMPTS:
                    failures.append(events.record(events.Event(
                        "notice", f"budget {budget_id} alert of {month:%Y-%m}",
                        f"not delivered after {MAX_ATTEMPTS} attempts: {'; '.join(errors)}",
                        "fix the channel; the alert's line is in pipeline.events and insights.budget_alerts",
                        severity="error"), conn=conn, details={"budget": budget_id, "month": f"{month:%Y-%m}"}))
                elif left:
                    failures.append(f"budget {budget_id} {month:%Y-%m}: could not deliver to {', '.join(errors)}"
                                    " (tried again at the next check)")
                    log.warning("chargeback: %s", failures[-1])
                else:
                    delivered += 1
    return delivered, failures


def _recipients(conn: psycopg.Connection, budget_ids: set[str], months: set[dt.date]
                ) -> dict[tuple[str, dt.date], list[str] | None]:
    """Each (budget, month)'s e-mail recipients from the version in force (``None``: the notifier's)."""
    out: dict[tuple[str, dt.date], list[str] | None] = {}
    for budget_id, month, email_to in conn.execute(
            "select b.budget_id, m.month, b.email_to from config.budgets b cross join unnest(%s::date[]) m (month)"
            " where b.budget_id = any(%s) and b.valid_from <= m.month and (b.valid_to is null or m.month < b.valid_to)",
            (sorted(months), sorted(budget_ids))).fetchall():
        out[(budget_id, month)] = email_to
    return out


# --------------------------------------------------------------------------- reading the state

def status(month: str | Period, settings: Settings | None = None) -> list[dict[str, Any]]:
    """``insights.budget_status`` of ``month`` with the thresholds fired and whether they were delivered."""
    month = Period.parse(month)
    with warehouse.connect(settings) as conn:
        cur = conn.execute(
            "select s.*, coalesce((select array_agg(a.threshold order by a.alert_id) from insights.budget_alerts a"
            "  where a.budget_id = s.budget_id and a.month = s.month), '{}') as fired,"
            " (select count(*) from insights.budget_alerts a where a.budget_id = s.budget_id and a.month = s.month"
            "  and a.delivered_at is null) as undelivered"
            " from insights.budget_status s where s.month = %s order by s.budget_id", (month.first_day,))
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def render_status(month: str | Period, rows: list[dict[str, Any]]) -> str:
    """The one-screen table of ``chargeback budgets list``."""
    if not rows:
        return f"no budget evaluated for {month} (chargeback budgets check --month {month})"
    through = max((r["usage_through"] for r in rows if r["usage_through"]), default=None)
    header = ["budget", "scope", "ledger", "budget", "actual", "used", "forecast P50", "breach", "state", "fired"]
    table = [header]
    for r in rows:
        table.append([
            r["budget_id"], f"{_LEVEL_TEXT[r['scope_level']]} {r['scope_key']}", r["ledger"],
            format_money(r["budget_amount"], r["currency"]),
            "" if r["actual"] is None else format_money(r["actual"], r["currency"]),
            "" if r["used_percent"] is None else f"{_pct(r['used_percent'])} %",
            format_money(r["forecast_p50"], r["currency"]) if r["forecast_p50"] is not None else r["forecast_state"],
            str(r["breach_date"] or ""), r["state"],
            ", ".join(r["fired"]) + (f" ({r['undelivered']} undelivered)" if r["undelivered"] else ""),
        ])
    widths = [max(len(events.clean(row[i], NAME_LIMIT)) for row in table) for i in range(len(header))]
    lines = [f"budgets of {month}" + (f", usage through {through:%Y-%m-%dT%H:%MZ}" if through else "")]
    for row in table:
        cells = [events.clean(c, NAME_LIMIT) for c in row]
        lines.append("  ".join(c.rjust(w) if 3 <= i <= 6 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
    notes = [f"  {r['budget_id']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def latest_month(settings: Settings | None = None) -> Period:
    """The month of the last hour of usage in the marts (the current UTC month when there is none)."""
    with warehouse.connect(settings) as conn:
        through = freshness.usage_through(conn)
    instant = through - dt.timedelta(hours=1) if through else dt.datetime.now(dt.UTC)
    return Period(instant.year, instant.month)


__all__ = ["Evaluation", "Outcome", "breach_date", "check", "deliver_pending", "evaluate", "latest_month",
           "render_status", "status"]
