"""Anomalies that explain themselves: detected on each day's billed amount, explained as volume,
rate and mix to the cent, raised once, acknowledged and resolved with who and why.

**The series.** For every tenant × meter, each UTC day's billed amount: the day's usage in
each retention class at the month's average rate of the price version and class in force that
day (:func:`month_rates`: the month priced by the pricing engine, a month in progress projected
to its end), each (version, class)'s amount split over its days by the largest-remainder rule —
so a closed month's days add up to its invoice's usage lines exactly. A new price version, a
discount or a move into a dearer retention class shows on the day it starts; the free
allowance, packages and tiers are spread over the month, so that the first days of a month
(inside the allowance, in the dearest tier) do not look like a spike every month. Contract
lines (a commitment's true-up, an overage uplift) belong to the month, not to a day: they are
not in the series.

**Detection** (:mod:`chargeback.insights.detect`): a robust expected value with a weekly season
and a robust spread over the 28 days before (the season over 56); an anomaly when the z-score passes the threshold
and the impact passes both floors (``config/anomalies.yml``, :mod:`anomaly_config`). Only
complete days are checked (every hour of the day is before the marts' usage through). A day
without usage in a series that had some before counts as 0: a silent producer is a drop.

**Explanation** (:mod:`chargeback.insights.explain`): the day's components are the meter's
sources in each retention class — each class's amount for the day split over its sources by
their usage (largest remainder) — against the expected components: the composition of the 7
days before (their average quantities and amounts per source and class), scaled so that its
total is the expected value. Volume + rate + mix = actual − expected to the cent; the price
versions of the day and of those 7 days are named when they differ.

**Lifecycle.** Consecutive days of one series out of line in one direction are one anomaly
(an episode, ``insights.anomalies``; each day in ``insights.anomaly_days``, whose key — tenant,
meter, ledger, day — holds that no day is ever raised twice, whatever replays and restatements
do: a day detected again updates its figures, sends nothing). ``open`` → ``acknowledged``
(``expected``, ``planned`` or a ``problem``, with who and why) → ``resolved`` (who and why).
Record, then send: the anomaly and its line in ``pipeline.events`` are committed before any
channel is tried; channels that fail are retried by later runs, like budget alerts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from chargeback.engine import repricing
from chargeback.engine.allocation import largest_remainder, round_to_total
from chargeback.engine.pricing import Line
from chargeback.insights import anomaly_config, detect
from chargeback.insights.anomaly_config import AnomalyConfig
from chargeback.insights.explain import Component, Explanation, Measure, explain
from chargeback.platform import events, freshness, notify, warehouse
from chargeback.platform.money import format_money, format_signed, round_money
from chargeback.platform.settings import Settings

log = logging.getLogger("chargeback.insights.anomalies")

ALL_SOURCES = "(all)"
TOP_SOURCES = 3
"""A tenant's biggest sources of a meter (by usage over the window) get series of their own."""
SOURCE_HISTORY_DAYS = 28
"""A source's series is checked after four weeks of it: with fewer, one spike is a quarter of its
weekday's season and the same weekday a week later reads as a drop."""
BASELINE_DAYS = 7
"""Days before an anomaly whose composition (sources, classes, rates) is the expected one."""
MAX_ATTEMPTS = 5
LINE_PART_LIMIT = 400
DIGEST_ITEMS = 15
STATUSES = ("open", "acknowledged", "resolved")
ACK_KINDS = ("expected", "planned", "problem")
ZERO = Decimal(0)
CENTS = Decimal("0.00")

Key = tuple[str, str]
"""(tenant_id, meter)"""
ClassKey = int | None
"""A retention class in days (``None`` for a meter not priced by retention)."""


# --------------------------------------------------------------------------- the series

@dataclasses.dataclass
class Series:
    """What each day added to each tenant × meter's invoice, for detection and explanation."""

    days: list[dt.date]
    keys: list[Key]
    values: np.ndarray
    """keys × days, in currency as floats (the statistics); NaN before a series' first usage."""
    exact: dict[Key, dict[dt.date, dict[ClassKey, tuple[Decimal, Decimal]]]]
    """(tenant, meter) -> day -> retention class -> (quantity in the invoice's unit, amount)."""
    versions: dict[Key, dict[dt.date, tuple[str, dt.date]]]
    """(tenant, meter) -> day -> (price book, valid_from of the version that priced it)."""
    currency: dict[str, str]
    ledger: str = "billed"


def day_amounts(conn: psycopg.Connection, catalog: repricing.Catalog, first: dt.date, last: dt.date,
                tenant_ids: Iterable[str] | None = None, hours: int | None = None) -> Series:
    """The series of ``[first, last]`` (module docstring): each month touched is read once
    (``marts.fct_usage_hourly`` and the retention classes) and priced once per tenant
    (:func:`month_rates`, a month in progress projected from its days up to ``last``).

    ``hours``: each day's first ``hours`` hours only (UTC), at the same rates — the series of the
    day in progress and of the days it is compared with (:func:`find_today`)."""
    wanted = set(tenant_ids) if tenant_ids is not None else None
    exact: dict[Key, dict[dt.date, dict[ClassKey, tuple[Decimal, Decimal]]]] = defaultdict(dict)
    versions: dict[Key, dict[dt.date, tuple[str, dt.date]]] = defaultdict(dict)
    currency: dict[str, str] = {}
    classes_of: dict[tuple, ClassKey] = {}
    month = first.replace(day=1)
    until = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC)
    while month <= last:
        usage = repricing.read_daily_usage(conn, month, until)
        kept = repricing.read_daily_classes(conn, month, until)
        part_usage, part_kept = (usage, kept) if hours is None else _read_hours(conn, month, until, hours)
        for tenant_id in sorted(usage):
            if wanted is not None and tenant_id not in wanted:
                continue
            try:
                rates, month_currency = month_rates(catalog, tenant_id, month, usage[tenant_id],
                                                    kept.get(tenant_id, {}), last, classes_of)
                if month_currency:
                    currency.setdefault(tenant_id, month_currency)
                _price_days(catalog, tenant_id, month, part_usage.get(tenant_id, {}), part_kept.get(tenant_id, {}),
                            first, rates, exact, versions)
            except ValueError as exc:  # no price version for a day: the invoice build says so too
                log.warning("chargeback: anomalies of %s in %s skipped: %s", tenant_id, f"{month:%Y-%m}", exc)
        month = (month + dt.timedelta(days=32)).replace(day=1)
    return _series(first, last, exact, versions, currency, "billed")


def _series(first: dt.date, last: dt.date, exact: dict, versions: dict, currency: dict, ledger: str) -> Series:
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    keys = sorted(exact)
    values = np.full((len(keys), len(days)), np.nan)
    index = {d: i for i, d in enumerate(days)}
    for k, key in enumerate(keys):
        seen = exact[key]
        start = index[min(seen)]
        values[k, start:] = 0.0  # after its first usage, a day without any is a day of 0
        for day, parts in seen.items():
            values[k, index[day]] = float(sum((a for _, a in parts.values()), ZERO))
    return Series(days, keys, values, dict(exact), dict(versions), currency, ledger)


def cost_amounts(conn: psycopg.Connection, first: dt.date, last: dt.date) -> Series:
    """Each day's cost to serve per tenant and driver meter (``marts.int_ledger_daily``: the day's
    hourly allocations, so a day's cost is its own); money without a driver meter ('(shared)',
    '(contract)') follows no usage of the tenant's and is left out. Empty without the mart."""
    exact: dict[Key, dict[dt.date, dict[ClassKey, tuple[Decimal, Decimal]]]] = defaultdict(dict)
    currency: dict[str, str] = {}
    if conn.execute("select to_regclass('marts.int_ledger_daily')").fetchone()[0] is not None:
        for day, tenant_id, meter, quantity, cost, cur in conn.execute(
                "select ledger_day, tenant_id, meter, coalesce(usage_quantity, 0), cost_to_serve, currency"
                " from marts.int_ledger_daily where ledger_day >= %s and ledger_day <= %s"
                " and meter not in ('(shared)', '(contract)')", (first, last)):
            exact[tenant_id, meter][day] = {None: (quantity, cost)}
            currency.setdefault(tenant_id, cur)
    return _series(first, last, exact, {}, currency, "cost")


def _read_hours(conn: psycopg.Connection, month: dt.date, until: dt.datetime, hours: int,
                ) -> tuple[dict, dict]:
    """:func:`repricing.read_daily_usage` and ``read_daily_classes`` of each day's first ``hours`` hours."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = min((start + dt.timedelta(days=32)).replace(day=1), until)
    usage: dict = defaultdict(lambda: defaultdict(dict))
    for tenant_id, meter, day, quantity in conn.execute(
            "select tenant_id, meter, (hour_start at time zone 'UTC')::date, sum(quantity) from marts.fct_usage_hourly"
            " where hour_start >= %s and hour_start < %s and extract(hour from hour_start at time zone 'UTC') < %s"
            " group by 1, 2, 3", (start, end, hours)):
        usage[tenant_id][meter][day] = quantity
    kept: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    if conn.execute("select to_regclass('intermediate.int_usage_retention_hourly')").fetchone()[0] is not None:
        for tenant_id, meter, days, day, quantity in conn.execute(
                "select tenant_id, meter, retention_days, (hour_start at time zone 'UTC')::date, sum(quantity)"
                " from intermediate.int_usage_retention_hourly where hour_start >= %s and hour_start < %s"
                " and extract(hour from hour_start at time zone 'UTC') < %s group by 1, 2, 3, 4",
                (start, end, hours)):
            kept[tenant_id][meter][days][day] = quantity
    return usage, kept


def _price_days(catalog: repricing.Catalog, tenant_id: str, month: dt.date, usage: repricing.DailyUsage,
                kept: repricing.ClassUsage, first: dt.date, rates: Mapping[tuple[str, dt.date, ClassKey], Decimal],
                exact: dict, versions: dict) -> None:
    """Each day's usage per meter and retention class at ``rates``: the month's rate of the price
    version and class in force that day (:func:`month_rates`)."""
    tenant = catalog.tenants.get(tenant_id)
    if tenant is None:
        return
    terms = catalog.terms_for(tenant_id, month)
    hours = Decimal(repricing.hours_in_month(month))
    # (meter, version, class) -> day -> quantity: each key's amount at its rate, split over its days
    by_key: dict[tuple[str, dt.date, ClassKey], dict[dt.date, Decimal]] = defaultdict(dict)
    for day in sorted({d for by_day in usage.values() for d in by_day}):
        version = catalog.version_on(tenant.price_book, day)
        if version is None:
            raise ValueError(f"no version of price book {tenant.price_book!r} is in force on {day}")
        for (meter, cls), quantity in _day_quantities(catalog, version, usage, kept, day, terms.retention_days,
                                                      hours).items():
            by_key[meter, version.valid_from, cls][day] = quantity
        if day >= first:
            for meter in usage:
                if day in usage[meter]:
                    exact[tenant_id, meter][day] = {}
                    versions[tenant_id, meter][day] = (tenant.price_book, version.valid_from)
    for (meter, valid_from, cls), days in by_key.items():
        amount = round_money(rates.get((meter, valid_from, cls), ZERO) * sum(days.values(), ZERO))
        split = largest_remainder(amount, days) if any(days.values()) else dict.fromkeys(days, CENTS)
        for day, quantity in days.items():
            if day >= first and day in exact.get((tenant_id, meter), {}):
                exact[tenant_id, meter][day][cls] = (quantity, split[day])


def month_rates(catalog: repricing.Catalog, tenant_id: str, month: dt.date, usage: repricing.DailyUsage,
                kept: repricing.ClassUsage, last: dt.date, classes_of: dict | None = None,
                ) -> tuple[dict[tuple[str, dt.date, ClassKey], Decimal], str | None]:
    """The average rate of each meter's lines per price version and retention class (amount after
    discount ÷ quantity, free allowance included) of the month priced by the pricing engine — a
    month in progress projected to its end first (its days up to ``last`` scaled to the whole
    month), so that the first days of a month, inside the free allowance and the first tiers, are
    not dearer or cheaper than the days of a month that is over."""
    known = min((last - month).days + 1, len(repricing.month_days(month)))
    scale = Decimal(len(repricing.month_days(month))) / Decimal(max(known, 1))
    projected = {m: {d: q * scale for d, q in by_day.items()} for m, by_day in usage.items()}
    projected_kept = {m: {k: {d: q * scale for d, q in by_day.items()} for k, by_day in by_class.items()}
                      for m, by_class in kept.items()}
    terms = catalog.terms_for(tenant_id, month)
    priced = repricing.price_month(catalog, tenant_id, month, projected, terms=dataclasses.replace(
        terms, monthly_commitment=ZERO, overage_uplift_percent=ZERO), classes=projected_kept)
    if priced is None:
        return {}, None
    book = catalog.tenants[tenant_id].price_book
    sums: dict[tuple[str, dt.date, ClassKey], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    cache = {} if classes_of is None else classes_of
    for pl in priced.lines:
        if pl.meter is None or pl.line.price_valid_from is None:
            continue
        key = (pl.meter, pl.line.price_valid_from, _line_class(catalog, book, pl.meter, pl.line, cache))
        sums[key][0] += pl.line.amount
        sums[key][1] += pl.line.quantity
    return {k: a / q for k, (a, q) in sums.items() if q}, priced.currency


def _day_quantities(catalog: repricing.Catalog, version: repricing.BookVersion, usage: repricing.DailyUsage,
                    kept: repricing.ClassUsage, day: dt.date, default_days: int, hours: Decimal,
                    ) -> dict[tuple[str, ClassKey], Decimal]:
    """The day's usage per meter and retention class, in the invoice's unit (a gauge's unit-months)."""
    out: dict[tuple[str, ClassKey], Decimal] = defaultdict(lambda: ZERO)
    for meter, by_day in usage.items():
        if day not in by_day:
            continue
        divisor = hours if catalog.meter_kinds.get(meter) == "gauge" else Decimal(1)
        price = version.prices.get(meter)
        total = by_day[day]
        if price is not None and price.model == "retention":
            for days_kept, kept_days in (kept.get(meter) or {}).items():
                quantity = kept_days.get(day, ZERO)
                out[meter, repricing.retention_class(price, days_kept)] += quantity / divisor
                total -= quantity
            out[meter, repricing.retention_class(price, default_days)] += total / divisor
        else:
            out[meter, None] += total / divisor
    return out


def _line_class(catalog: repricing.Catalog, book: str, meter: str, line: Line, cache: dict) -> ClassKey:
    """The retention class an invoice line prices (``None`` for other models)."""
    if line.pricing_model != "retention" or line.tier is None:
        return None
    key = (book, line.price_valid_from, meter, line.tier)
    if key not in cache:
        version = catalog.version_on(book, line.price_valid_from)
        cache[key] = next(t.retention_days for t in version.prices[meter].tiers if t.tier == line.tier)
    return cache[key]


# --------------------------------------------------------------------------- detection

@dataclasses.dataclass(frozen=True)
class Finding:
    """One series out of line on one day, explained."""

    tenant_id: str
    meter: str
    day: dt.date
    currency: str
    z: float
    explanation: Explanation
    may_be_missing_data: bool
    price_versions: tuple[dict[str, str], ...]
    sentence: str
    source: str = ALL_SOURCES
    """``(all)``: the tenant's meter; else one of its biggest sources, out of line on a day its
    meter as a whole was not (a shift between sources that the total hides)."""
    ledger: str = "billed"

    @property
    def direction(self) -> str:
        return "spike" if self.explanation.change > 0 else "drop"


def find(conn: psycopg.Connection, first: dt.date, last: dt.date, config: AnomalyConfig | None = None,
         catalog: repricing.Catalog | None = None) -> list[Finding]:
    """Every series out of line on a day of ``[first, last]``, explained (nothing is stored)."""
    catalog = catalog or repricing.load_catalog(conn)
    config = config or AnomalyConfig()
    start = first - dt.timedelta(days=detect.SEASON_WINDOW)
    series = day_amounts(conn, catalog, start, last)
    billed = _detect(conn, catalog, config, series, range(detect.SEASON_WINDOW, len(series.days)))
    costs = cost_amounts(conn, start, last)
    seen = {(f.tenant_id, f.meter, f.day) for f in billed}
    cost = [f for f in _detect(conn, catalog, config, costs, range(detect.SEASON_WINDOW, len(costs.days)), skip=seen)
            if f.explanation.largest_effect != "rate"]
    return sorted(billed + cost, key=lambda f: (f.day, f.tenant_id, f.meter, f.ledger, f.source))


def find_today(conn: psycopg.Connection, through: dt.datetime, config: AnomalyConfig | None = None,
               catalog: repricing.Catalog | None = None) -> list[Finding]:
    """The day in progress, by the hour: its hours before ``through`` (the marts' usage through)
    against the same hours of the days before — the same expected value, spread and floors as a
    whole day, on the day so far. A finding is the day's anomaly: when the day is complete,
    :func:`find` finds it again and only its figures change (nothing is sent twice)."""
    through = through.astimezone(dt.UTC)
    if through.hour == 0:
        return []  # no hour of a new day yet: the day before is complete, find() checks it
    catalog = catalog or repricing.load_catalog(conn)
    day = through.date()
    series = day_amounts(conn, catalog, day - dt.timedelta(days=detect.SEASON_WINDOW), day, hours=through.hour)
    return _detect(conn, catalog, config or AnomalyConfig(), series, [len(series.days) - 1], hours=through.hour)


def _detect(conn: psycopg.Connection, catalog: repricing.Catalog, config: AnomalyConfig, series: Series,
            days: Iterable[int], hours: int | None = None, skip: set | None = None) -> list[Finding]:
    """Flag and explain the series on the days at ``days`` (indexes); per source too on whole days
    of the billed ledger. ``skip``: (tenant, meter, day) already raised on another ledger."""
    if not series.keys:
        return []
    tenants = np.array([t for t, _ in series.keys])
    flagged: list[tuple[int, int, detect.Expectation]] = []
    groups: dict[detect.Thresholds, np.ndarray] = defaultdict(lambda: np.zeros(len(series.keys), bool))
    for k, (tenant_id, meter) in enumerate(series.keys):
        groups[config.for_series(tenant_id, meter)][k] = True
    # per source on whole days only: the sources' usage is kept per day
    by_source = (source_series(conn, catalog, series) if hours is None and series.ledger == "billed"
                 else SourceSeries([], np.zeros((0, 0))))
    source_groups: dict[detect.Thresholds, np.ndarray] = defaultdict(lambda: np.zeros(len(by_source.keys), bool))
    for k, (tenant_id, meter, _) in enumerate(by_source.keys):
        thresholds = config.for_series(tenant_id, meter)
        thresholds = dataclasses.replace(thresholds, min_history_days=max(thresholds.min_history_days,
                                                                          SOURCE_HISTORY_DAYS))
        source_groups[thresholds][k] = True
    parent = np.array([series.keys.index((t, m)) for t, m, _ in by_source.keys], dtype=int)
    flagged_sources: list[tuple[int, int, detect.Expectation]] = []
    for j in days:
        expectation = detect.expect(series.values, j)
        source_expectation = detect.expect(by_source.values, j) if by_source.keys else None
        expected = np.nan_to_num(expectation.expected)
        per_tenant = defaultdict(float)
        for tenant_id, value in zip(tenants, expected, strict=True):
            per_tenant[tenant_id] += value
        tenant_expected = np.array([per_tenant[t] for t in tenants])
        meter_flagged = np.zeros(len(series.keys), bool)
        for thresholds, members in groups.items():
            e, anomalous = detect.flag(series.values, j, tenant_expected, thresholds, expectation)
            meter_flagged |= anomalous & members
            for k in np.flatnonzero(anomalous & members):
                if skip is None or (*series.keys[k], series.days[j]) not in skip:
                    flagged.append((int(k), j, e))
        if by_source.keys:
            # a source out of line on a day its meter as a whole is not: the total hides a shift
            for thresholds, members in source_groups.items():
                e, anomalous = detect.flag(by_source.values, j, tenant_expected[parent], thresholds,
                                           source_expectation)
                for k in np.flatnonzero(anomalous & members & ~meter_flagged[parent]):
                    flagged_sources.append((int(k), j, e))
    if not flagged and not flagged_sources:
        return []
    found_days = [series.days[j] for _, j, _ in flagged + flagged_sources]
    sources = _read_sources(conn, catalog, sorted({series.keys[k][0] for k, _, _ in flagged}
                                                  | {by_source.keys[k][0] for k, _, _ in flagged_sources}),
                            min(found_days) - dt.timedelta(days=BASELINE_DAYS), max(found_days))
    out = []
    for k, j, e in flagged:
        tenant_id, meter = series.keys[k]
        out.append(_explain(series, sources, catalog, tenant_id, meter, series.days[j], float(e.expected[k]),
                            float(e.z[k]), config.for_series(tenant_id, meter), hours=hours))
    for k, j, e in flagged_sources:
        tenant_id, meter, source = by_source.keys[k]
        out.append(_explain(series, sources, catalog, tenant_id, meter, series.days[j], float(e.expected[k]),
                            float(e.z[k]), config.for_series(tenant_id, meter), source=source))
    return sorted(out, key=lambda f: (f.day, f.tenant_id, f.meter, f.source))


@dataclasses.dataclass
class SourceSeries:
    keys: list[tuple[str, str, str]]
    """(tenant_id, meter, source)"""
    values: np.ndarray


def source_series(conn: psycopg.Connection, catalog: repricing.Catalog, series: Series) -> SourceSeries:
    """The daily billed amount of each tenant's ``TOP_SOURCES`` biggest sources of each meter (by usage
    over the series' days; meters with one source have none): each class's amount of the day times
    the source's share of the class's usage. Floats, for detection; explanations split to the cent."""
    if not series.keys or conn.execute(
            "select to_regclass('intermediate.int_usage_sources_daily')").fetchone()[0] is None:
        return SourceSeries([], np.zeros((0, len(series.days))))
    first, last = series.days[0], series.days[-1]
    rows = conn.execute(
        """
        with totals as (
            select tenant_id, meter, source, sum(quantity) as quantity, count(*) over (
                partition by tenant_id, meter) as sources
            from intermediate.int_usage_sources_daily
            where usage_day >= %(first)s and usage_day <= %(last)s and source <> '(none)'
            group by tenant_id, meter, source
        ),
        top as (
            select tenant_id, meter, source from (
                select *, row_number() over (partition by tenant_id, meter order by quantity desc, source) as n
                from totals where sources >= 2) as ranked
            where n <= %(top)s
        )
        select d.usage_day, d.tenant_id, d.meter, d.source, d.retention_days, d.quantity
        from intermediate.int_usage_sources_daily as d
        join top using (tenant_id, meter, source)
        where d.usage_day >= %(first)s and d.usage_day <= %(last)s
        """, {"first": first, "last": last, "top": TOP_SOURCES}).fetchall()
    index = {d: i for i, d in enumerate(series.days)}
    keys = sorted({(t, m, src) for _, t, m, src, _, _ in rows if (t, m) in series.exact})
    position = {key: k for k, key in enumerate(keys)}
    values = np.full((len(keys), len(series.days)), np.nan)
    seen = np.full(len(keys), len(series.days))
    amounts: dict[tuple[int, int], float] = defaultdict(float)
    for day, tenant_id, meter, source, days_kept, quantity in rows:
        key = (tenant_id, meter, source)
        if key not in position or day not in index:
            continue
        k, j = position[key], index[day]
        seen[k] = min(seen[k], j)
        parts = series.exact[tenant_id, meter].get(day)
        if not parts:
            continue
        cls = _class_of(catalog, tenant_id, meter, day, days_kept)
        class_quantity, class_amount = parts.get(cls, (ZERO, ZERO))
        divisor = repricing.hours_in_month(day) if catalog.meter_kinds.get(meter) == "gauge" else 1
        if class_quantity:
            amounts[k, j] += float(class_amount) * float(quantity) / (float(class_quantity) * divisor)
    for k in range(len(keys)):
        if seen[k] < len(series.days):
            values[k, seen[k]:] = 0.0
    for (k, j), amount in amounts.items():
        values[k, j] = amount
    return SourceSeries(keys, values)


def _class_of(catalog: repricing.Catalog, tenant_id: str, meter: str, day: dt.date, days_kept: int | None,
              ) -> ClassKey:
    """The retention class a source's usage of ``meter`` is priced in on ``day`` (``None``: no classes)."""
    tenant = catalog.tenants.get(tenant_id)
    version = catalog.version_on(tenant.price_book, day) if tenant else None
    price = version.prices.get(meter) if version else None
    if price is None or price.model != "retention":
        return None
    return repricing.retention_class(price, days_kept or catalog.terms_for(tenant_id, day).retention_days)


def _read_sources(conn: psycopg.Connection, catalog: repricing.Catalog, tenant_ids: list[str], first: dt.date,
                  last: dt.date) -> dict[tuple[str, str, dt.date], dict[tuple[str, ClassKey], Decimal]]:
    """(tenant, meter, day) -> (source, retention class) -> the source's usage (the day's sum of hourly
    values), from ``intermediate.int_usage_sources_daily``; empty where the model is not built."""
    out: dict = defaultdict(dict)
    if conn.execute("select to_regclass('intermediate.int_usage_sources_daily')").fetchone()[0] is None:
        return out
    for day, tenant_id, meter, source, days_kept, quantity in conn.execute(
            "select usage_day, tenant_id, meter, source, retention_days, quantity"
            " from intermediate.int_usage_sources_daily"
            " where tenant_id = any(%s) and usage_day >= %s and usage_day <= %s", (tenant_ids, first, last)):
        cls = _class_of(catalog, tenant_id, meter, day, days_kept)
        out[tenant_id, meter, day][source, cls] = out[tenant_id, meter, day].get((source, cls), ZERO) + quantity
    return out


def _components(series: Series, sources: Mapping, tenant_id: str, meter: str, day: dt.date,
                ) -> dict[Component, Measure]:
    """The day's amount per source and retention class: each class's amount split over its sources
    by their usage (largest remainder); a class without known sources is source ``(none)``."""
    parts = series.exact[tenant_id, meter].get(day, {})
    by_source = sources.get((tenant_id, meter, day), {})
    out: dict[Component, Measure] = {}
    for cls, (quantity, amount) in parts.items():
        weights: dict[str, Decimal] = defaultdict(lambda: ZERO)
        for (s, c), q in by_source.items():
            if (c == cls or series.ledger == "cost") and q > 0:  # cost follows usage whatever its class
                weights[s] += q
        if not weights:
            out[Component(meter, "(none)", cls)] = Measure(quantity, amount)
            continue
        total = sum(weights.values(), ZERO)
        shares = largest_remainder(amount, weights) if amount else dict.fromkeys(weights, CENTS)
        for source, weight in weights.items():
            out[Component(meter, source, cls)] = Measure(quantity * weight / total, shares[source])
    return out


def _explain(series: Series, sources: Mapping, catalog: repricing.Catalog, tenant_id: str, meter: str,
             day: dt.date, expected_value: float, z: float, thresholds: detect.Thresholds,
             source: str = ALL_SOURCES, hours: int | None = None) -> Finding:
    def components(d: dt.date) -> dict[Component, Measure]:
        out = _components(series, sources, tenant_id, meter, d)
        return out if source == ALL_SOURCES else {c: m for c, m in out.items() if c.source == source}

    actual = components(day)
    known = series.exact[tenant_id, meter]
    baseline_days = [d for d in (day - dt.timedelta(days=i) for i in range(1, BASELINE_DAYS + 1)) if d in known]
    summed: dict[Component, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for d in baseline_days:
        for c, m in components(d).items():
            summed[c][0] += m.quantity
            summed[c][1] += m.amount
    base_amount = sum((a for _, a in summed.values()), ZERO)
    expected: dict[Component, Measure] = {}
    if baseline_days and base_amount > 0:
        target = round_money(Decimal(repr(max(expected_value, 0.0))))
        scale = target / base_amount
        amounts = round_to_total({c: a * scale for c, (_, a) in summed.items()}, target)
        expected = {c: Measure(q * scale, amounts[c]) for c, (q, _) in summed.items()}
    rates = _class_rates(catalog, tenant_id, meter, day) if series.ledger == "billed" else {}
    explanation = explain(expected, actual, rates)
    used = series.versions.get((tenant_id, meter), {})
    involved = sorted({used[d] for d in [*baseline_days, day] if d in used}, key=lambda v: v[1])
    price_versions = tuple({"price_book": b, "valid_from": f"{v}", "meter": meter} for b, v in involved)
    missing = explanation.change < 0 and detect.may_be_missing_data(float(explanation.actual),
                                                                     float(explanation.expected), thresholds)
    currency = series.currency.get(tenant_id, "USD")
    what = f"{meter}" if source == ALL_SOURCES else f"{meter} from {source}"
    when = f"on {day}" if hours is None else f"on {day} to {hours:02d}:00 UTC (the day so far)"
    amount = "billed" if series.ledger == "billed" else "cost to serve of"
    sentence = explanation.sentence(f"{tenant_id}'s {amount} {what} {when}", currency)
    if len(involved) > 1:
        sentence += (f" Price book {involved[-1][0]} changed: version of {involved[-1][1]} in force"
                     f" (before: {involved[0][1]}).")
    if missing:
        sentence += (f" It fell below {thresholds.drop_as_missing:.0%} of the expected amount: usage may be"
                     f" missing — check the completeness of {day} (chargeback status).")
    return Finding(tenant_id, meter, day, currency, z, explanation, missing, price_versions, sentence, source,
                   series.ledger)


def _class_rates(catalog: repricing.Catalog, tenant_id: str, meter: str, day: dt.date,
                 ) -> dict[tuple[str, ClassKey], Decimal]:
    """The price book's rate of each retention class of ``meter`` on ``day`` (net of the discount):
    the baseline rate of a class the tenant did not use before (a move into it is mix)."""
    tenant = catalog.tenants[tenant_id]
    version = catalog.version_on(tenant.price_book, day)
    price = version.prices.get(meter) if version else None
    if price is None or price.model != "retention":
        return {}
    net = 1 - catalog.terms_for(tenant_id, day.replace(day=1)).discount_percent / 100
    return {(meter, t.retention_days): t.unit_price * net for t in price.tiers if t.retention_days is not None}


# --------------------------------------------------------------------------- recording and sending

@dataclasses.dataclass(frozen=True)
class Outcome:
    findings: int
    raised: list[int]
    """ids of the anomalies raised by this run (new episodes)"""
    extended: int
    updated: int
    delivered: int
    failures: list[str]


def last_complete_day(through: dt.datetime) -> dt.date:
    """The last UTC day whose every hour is before ``through`` (the marts' usage through)."""
    return through.astimezone(dt.UTC).date() - dt.timedelta(days=1)


def run(first: dt.date | None = None, last: dt.date | None = None, settings: Settings | None = None,
        channels: notify.Channels | None = None, environ: dict[str, str] | None = None,
        now: dt.datetime | None = None, config: AnomalyConfig | None = None, today: bool = False) -> Outcome:
    """Detect over the complete days of ``[first, last]`` (default: the last complete day) and, with
    ``today``, the day in progress so far (:func:`find_today`); record, then deliver; ``config``
    defaults to ``config/anomalies.yml``."""
    config = config or anomaly_config.read(settings.config_dir if settings else None)
    channels = channels or notify.Channels.from_env(environ)
    with warehouse.connect(settings) as conn:
        through = freshness.usage_through(conn)
        if through is None:
            return Outcome(0, [], 0, 0, 0, [])
        complete = last_complete_day(through)
        last_complete = min(last or complete, complete)
        first = first or last_complete
        catalog = repricing.load_catalog(conn)
        findings = find(conn, first, last_complete, config, catalog) if first <= last_complete else []
        if today:
            findings += find_today(conn, through, config, catalog)
        # one recorder at a time: two runs must not raise the same day twice
        conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.anomalies'))")
        raised, extended, updated = record(conn, findings, through, _channels_for(channels))
    delivered, failures = deliver_pending(config, settings, channels, environ, now)
    return Outcome(len(findings), raised, extended, updated, delivered, failures)


def _channels_for(channels: notify.Channels) -> list[str]:
    return (["email"] if channels.smtp else []) + (["webhook:default"] if channels.webhook else [])


def record(conn: psycopg.Connection, findings: Iterable[Finding], usage_through: dt.datetime,
           pending: list[str]) -> tuple[list[int], int, int]:
    """Store ``findings`` in the caller's transaction: a day already recorded gets its figures
    updated (nothing is raised); a day following an episode of its series and direction that is
    not resolved extends it; any other day raises a new anomaly with its line in pipeline.events.
    Returns the ids raised, and how many days extended and updated episodes."""
    raised, extended, updated = [], 0, 0
    for f in findings:
        e = f.explanation
        figures = (e.expected, e.actual, e.volume, e.rate, e.mix, f.z)
        row = conn.execute(
            "update insights.anomaly_days set (expected, actual, volume, rate, mix, z) = (%s, %s, %s, %s, %s, %s)"
            " where tenant_id = %s and meter = %s and ledger = %s and source = %s and anomaly_day = %s"
            " returning anomaly_id", (*figures, f.tenant_id, f.meter, f.ledger, f.source, f.day)).fetchone()
        if row:
            updated += 1
            continue
        row = conn.execute(
            "select anomaly_id from insights.anomalies where tenant_id = %s and meter = %s and ledger = %s"
            " and source = %s and direction = %s and status <> 'resolved' and last_day = %s - 1"
            " order by anomaly_id desc limit 1",
            (f.tenant_id, f.meter, f.ledger, f.source, f.direction, f.day)).fetchone()
        if row:
            anomaly_id = row[0]
            conn.execute("update insights.anomalies set last_day = %s where anomaly_id = %s", (f.day, anomaly_id))
            extended += 1
        else:
            of = (f.meter if f.source == ALL_SOURCES else f"{f.meter} from {f.source}") + (
                "" if f.ledger == "billed" else " (cost to serve)")
            event = events.Event(
                "notice", f"anomaly of tenant {f.tenant_id} {of} on {f.day}", f.sentence,
                "see it with chargeback anomalies list; acknowledge with chargeback anomalies ack ID"
                " --as expected|planned|problem --by NAME --reason TEXT", severity="warning")
            line = event.bounded_line(LINE_PART_LIMIT)
            anomaly_id = conn.execute(
                "insert into insights.anomalies (tenant_id, meter, ledger, source, direction, first_day, last_day,"
                " currency, expected, actual, volume, rate, mix, largest_effect, z, may_be_missing_data, contributors,"
                " price_versions, sentence, usage_through, line, channels_pending, delivered_at)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " case when %s then now() end) returning anomaly_id",
                (f.tenant_id, f.meter, f.ledger, f.source, f.direction, f.day, f.day, f.currency, e.expected, e.actual,
                 e.volume, e.rate, e.mix, e.largest_effect, f.z, f.may_be_missing_data,
                 Jsonb([_contributor(c) for c in e.contributors[:10]]), Jsonb(list(f.price_versions)), f.sentence,
                 usage_through, line, pending, not pending)).fetchone()[0]
            events.record(event, conn=conn, details={"anomaly_id": anomaly_id, "tenant_id": f.tenant_id,
                                                     "meter": f.meter, "day": f"{f.day}"})
            raised.append(anomaly_id)
        conn.execute(
            "insert into insights.anomaly_days (anomaly_id, tenant_id, meter, ledger, source, anomaly_day, expected,"
            " actual, volume, rate, mix, z) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (anomaly_id, f.tenant_id, f.meter, f.ledger, f.source, f.day, *figures))
    return raised, extended, updated


def _contributor(c) -> dict[str, Any]:
    return {"source": c.component.source, "meter": c.component.meter,
            "retention_days": c.component.retention_days, "change": str(c.change)}


def deliver_pending(config: AnomalyConfig | None = None, settings: Settings | None = None,
                    channels: notify.Channels | None = None, environ: dict[str, str] | None = None,
                    now: dt.datetime | None = None) -> tuple[int, list[str]]:
    """Send the anomalies with channels pending: one message each, or (``delivery: digest``) one
    message listing them all, once a day from ``digest_hour_utc``. Rows are locked while sent."""
    config = config or anomaly_config.read(settings.config_dir if settings else None)
    channels = channels or notify.Channels.from_env(environ)
    env = os.environ if environ is None else environ
    delivered, failures = 0, []
    with warehouse.connect(settings) as conn:
        now = now or conn.execute("select now()").fetchone()[0]
        rows = conn.execute(
            "select anomaly_id, line, channels_pending, delivery_attempts, tenant_id, meter, first_day, actual,"
            " expected, currency, largest_effect from insights.anomalies"
            " where delivered_at is null and delivery_attempts < %s order by anomaly_id", (MAX_ATTEMPTS,)).fetchall()
        conn.commit()
        if not rows:
            return 0, []
        if config.delivery == "digest":
            opens = now.astimezone(dt.UTC).replace(hour=config.digest_hour_utc, minute=0, second=0, microsecond=0)
            if now < opens:
                return 0, []
            sent = conn.execute("select max(delivered_at) from insights.anomalies where delivered_at >= %s"
                                " and channels_pending = '{}' and delivery_attempts > 0", (opens,)).fetchone()[0]
            conn.commit()
            if sent is not None:
                return 0, []  # today's digest went out; the rest wait for tomorrow's
            batches = [([r[0] for r in rows], _digest_line(rows), sorted({c for r in rows for c in r[2]}))]
        else:
            batches = [([r[0]], r[1], list(r[2])) for r in rows]
        for ids, line, pending in batches:
            with conn.transaction():
                locked = conn.execute("select anomaly_id from insights.anomalies where anomaly_id = any(%s)"
                                      " and delivered_at is null for update skip locked", (ids,)).fetchall()
                if len(locked) != len(ids):
                    continue
                left, errors = notify.send_pending(pending, line, channels, None, env)
                conn.execute(
                    "update insights.anomalies set channels_pending = %s, delivery_attempts = delivery_attempts + 1,"
                    " last_error = %s, delivered_at = case when %s then now() end where anomaly_id = any(%s)",
                    (left, "; ".join(errors) or None, not left, ids))
                if left:
                    failures.append(f"anomalies {', '.join(map(str, ids))}: could not deliver to {'; '.join(errors)}"
                                    " (tried again at the next run)")
                    log.warning("chargeback: %s", failures[-1])
                else:
                    delivered += len(ids)
    return delivered, failures


def _digest_line(rows: list[tuple]) -> str:
    items = [f"#{r[0]} {r[4]} {r[5]} {r[6]} {format_signed(r[7] - r[8])} {r[9]} ({r[10]})" for r in rows[:DIGEST_ITEMS]]
    more = f"; and {len(rows) - DIGEST_ITEMS} more" if len(rows) > DIGEST_ITEMS else ""
    return (f"chargeback anomalies: {len(rows)} new, {len({r[4] for r in rows})} tenant(s): {'; '.join(items)}{more}"
            " — chargeback anomalies list explains each")



# --------------------------------------------------------------------------- the lifecycle

class AnomalyNotFound(ValueError):
    """No anomaly has that id."""


def acknowledge(anomaly_id: int, kind: str, by: str, reason: str, settings: Settings | None = None) -> None:
    """open → acknowledged (``expected``, ``planned`` or ``problem``), with who and why."""
    if kind not in ACK_KINDS:
        raise ValueError(f"an acknowledgement is one of {', '.join(ACK_KINDS)}, not {kind!r}")
    _transition(anomaly_id, "acknowledged", by, reason, settings, kind)


def resolve(anomaly_id: int, by: str, reason: str, settings: Settings | None = None) -> None:
    """open or acknowledged → resolved, with who and why."""
    _transition(anomaly_id, "resolved", by, reason, settings)


def _transition(anomaly_id: int, status: str, by: str, reason: str, settings: Settings | None,
                kind: str | None = None) -> None:
    if not by.strip() or not reason.strip():
        raise ValueError("say who (--by) and why (--reason)")
    with warehouse.connect(settings) as conn:
        row = conn.execute("select status from insights.anomalies where anomaly_id = %s for update",
                           (anomaly_id,)).fetchone()
        if row is None:
            raise AnomalyNotFound(f"no anomaly {anomaly_id} (chargeback anomalies list --status all)")
        if row[0] == "resolved" or (status == "acknowledged" and row[0] != "open"):
            raise ValueError(f"anomaly {anomaly_id} is {row[0]}: it cannot become {status}")
        if status == "acknowledged":
            conn.execute("update insights.anomalies set status = 'acknowledged', ack_kind = %s, ack_by = %s,"
                         " ack_reason = %s, ack_at = now() where anomaly_id = %s", (kind, by, reason, anomaly_id))
        else:
            conn.execute("update insights.anomalies set status = 'resolved', resolved_by = %s, resolved_reason = %s,"
                         " resolved_at = now() where anomaly_id = %s", (by, reason, anomaly_id))


def listing(status: str = "open", tenant_id: str | None = None, settings: Settings | None = None,
            ) -> list[dict[str, Any]]:
    """Anomalies by status (``all``: every one), newest first."""
    if status != "all" and status not in STATUSES:
        raise ValueError(f"status is one of {', '.join((*STATUSES, 'all'))}, not {status!r}")
    with warehouse.connect(settings) as conn:
        cur = conn.execute(
            "select * from insights.anomalies where (%s = 'all' or status = %s)"
            " and (%s::text is null or tenant_id = %s) order by first_day desc, anomaly_id desc",
            (status, status, tenant_id, tenant_id))
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def render(rows: list[dict[str, Any]], status: str) -> str:
    """The text of ``chargeback anomalies list``: one block per anomaly, its sentence and numbers."""
    if not rows:
        return f"no {'' if status == 'all' else status + ' '}anomalies"
    out = []
    for r in rows:
        days = f"{r['first_day']}" if r["first_day"] == r["last_day"] else f"{r['first_day']} to {r['last_day']}"
        state = r["status"] + (f" ({r['ack_kind']} by {r['ack_by']}: {r['ack_reason']})" if r["ack_kind"] else "")
        if r["status"] == "resolved":
            state += f" (resolved by {r['resolved_by']}: {r['resolved_reason']})"
        what = r["meter"] if r["source"] == ALL_SOURCES else f"{r['meter']} from {events.clean(r['source'], 80)}"
        what += "" if r["ledger"] == "billed" else " (cost to serve)"
        out.append(f"#{r['anomaly_id']}  {r['tenant_id']}  {what}  {days}  {r['direction']}  {state}")
        out.append(f"    expected {format_money(r['expected'], r['currency'])}, actual"
                   f" {format_money(r['actual'], r['currency'])}: volume {format_signed(r['volume'])}, rate"
                   f" {format_signed(r['rate'])}, mix {format_signed(r['mix'])} {r['currency']} (z {r['z']:+.1f})")
        out.append(f"    {events.clean(r['sentence'], 600)}")
    return "\n".join(out)


__all__ = ["Finding", "Outcome", "Series", "acknowledge", "cost_amounts", "day_amounts", "deliver_pending", "find",
           "find_today",
           "last_complete_day", "listing", "record", "render", "resolve", "run"]
