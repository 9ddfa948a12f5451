"""Price a tenant-month from daily usage, in Python, exactly as the warehouse invoices it.

The warehouse prices invoices in SQL (``int_usage_segments_priced``, ``fct_invoice_lines``);
this module prices *any* usage — the month's actual days, a forecast's future days, a what-if —
through the same rules (:mod:`chargeback.engine.pricing`, held equal to the SQL by tests), with
the configuration read from ``config.*`` (one query per table, for every tenant at once):

- each day's usage is priced under the version of the tenant's price book in force that day;
  a meter's days are grouped into segments per version, in version order, so tiers, free
  allowances and packages continue across a mid-month price change;
- a gauge's quantity is its hourly values summed (the day's sum, as ``marts.fct_usage_hourly``
  gives it per hour) divided by the hours of the month: unit-months;
- the month's contract terms (discount, retention class, commitment, overage uplift) are those
  in force on its first day, the defaults when none are.

Usage in, priced lines and totals out: :func:`price_month`. ``tests/test_repricing.py`` holds
it equal to ``marts.fct_invoices`` and ``marts.fct_invoice_lines`` to the cent for every tenant
of a simulated month.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from decimal import Decimal

import psycopg

from chargeback.engine.pricing import (
    DEFAULT_RETENTION_DAYS,
    Line,
    Price,
    Segment,
    Tier,
    contract_lines,
    price_meter_month,
)

ZERO = Decimal(0)
CONTRACT = None
"""The meter of a contract line (commitment true-up, overage uplift): none."""

DailyUsage = Mapping[str, Mapping[dt.date, Decimal]]
"""meter -> UTC day -> the day's usage (a counter's total; a gauge's hourly values summed)."""
ClassUsage = Mapping[str, Mapping[int, Mapping[dt.date, Decimal]]]
"""meter -> retention days of sources with a class of their own -> UTC day -> their usage."""


@dataclasses.dataclass(frozen=True)
class Terms:
    """A tenant's contract terms for a month (``config.tenant_terms``; defaults without one)."""

    discount_percent: Decimal = ZERO
    monthly_commitment: Decimal = ZERO
    overage_uplift_percent: Decimal = ZERO
    retention_days: int = DEFAULT_RETENTION_DAYS


@dataclasses.dataclass(frozen=True)
class BookVersion:
    """One version of a price book: in force on ``[valid_from, valid_to)``, pricing every meter."""

    price_book: str
    valid_from: dt.date
    valid_to: dt.date | None
    currency: str
    prices: Mapping[str, Price]


@dataclasses.dataclass(frozen=True)
class Tenant:
    tenant_id: str
    price_book: str
    organisation: str
    business_unit: str
    team: str


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The configuration pricing needs, read once: meters' kinds, price books, tenants, terms."""

    meter_kinds: Mapping[str, str]
    books: Mapping[str, tuple[BookVersion, ...]]
    """versions of each book, by valid_from"""
    tenants: Mapping[str, Tenant]
    terms: Mapping[str, tuple[tuple[dt.date, dt.date | None, Terms], ...]]

    def terms_for(self, tenant_id: str, month: dt.date) -> Terms:
        """The terms in force on the month's first day, or the defaults."""
        for valid_from, valid_to, terms in self.terms.get(tenant_id, ()):
            if valid_from <= month and (valid_to is None or month < valid_to):
                return terms
        return Terms()

    def version_on(self, price_book: str, day: dt.date) -> BookVersion | None:
        """The version of ``price_book`` in force on ``day``, or None."""
        versions = self.books.get(price_book, ())
        i = bisect.bisect_right(versions, day, key=lambda v: v.valid_from) - 1
        if i >= 0 and (versions[i].valid_to is None or day < versions[i].valid_to):
            return versions[i]
        return None


@dataclasses.dataclass(frozen=True)
class PricedLine:
    meter: str | None
    """None on a contract line"""
    line: Line


@dataclasses.dataclass(frozen=True)
class PricedMonth:
    """A tenant-month priced: its lines (usage per meter, then contract lines) and totals."""

    tenant_id: str
    month: dt.date
    currency: str
    lines: tuple[PricedLine, ...]

    @property
    def meter_amounts(self) -> dict[str, Decimal]:
        """Σ amount of each meter's lines (after discount; contract lines left out)."""
        out: dict[str, Decimal] = defaultdict(lambda: Decimal("0.00"))
        for pl in self.lines:
            if pl.meter is not None:
                out[pl.meter] += pl.line.amount
        return dict(out)

    @property
    def usage_total(self) -> Decimal:
        return sum((pl.line.amount for pl in self.lines if pl.meter is not None), Decimal("0.00"))

    @property
    def contract_total(self) -> Decimal:
        return sum((pl.line.amount for pl in self.lines if pl.meter is None), Decimal("0.00"))

    @property
    def total(self) -> Decimal:
        """The invoice total: Σ every line's amount (``fct_invoices.total``)."""
        return self.usage_total + self.contract_total


def hours_in_month(month: dt.date) -> int:
    return calendar.monthrange(month.year, month.month)[1] * 24


def month_days(month: dt.date) -> list[dt.date]:
    return [month.replace(day=d) for d in range(1, calendar.monthrange(month.year, month.month)[1] + 1)]


def load_catalog(conn: psycopg.Connection) -> Catalog:
    """Meters, price books (prices and tiers), tenants and their terms from ``config.*``: one
    query per table, for every tenant."""
    kinds = dict(conn.execute("select meter, kind from config.meters").fetchall())
    tiers: dict[tuple[str, dt.date, str], list[Tier]] = defaultdict(list)
    for book, valid_from, meter, tier, lower, upper, retention, unit_price in conn.execute(
            "select price_book, valid_from, meter, tier, lower_bound, upper_bound, retention_days, unit_price"
            " from config.price_tiers order by price_book, valid_from, meter, tier"):
        tiers[book, valid_from, meter].append(Tier(tier, lower, upper, unit_price, retention))
    versions: dict[tuple[str, dt.date], dict] = {}
    for book, valid_from, valid_to, currency, meter, model, allowance, size, package_price in conn.execute(
            "select price_book, valid_from, valid_to, currency, meter, pricing_model, free_allowance,"
            " package_size, package_price from config.prices order by price_book, valid_from, meter"):
        version = versions.setdefault((book, valid_from), {"valid_to": valid_to, "currency": currency,
                                                           "prices": {}})
        version["prices"][meter] = Price(valid_from, model, tuple(tiers.get((book, valid_from, meter), ())),
                                         allowance, size, package_price)
    books: dict[str, list[BookVersion]] = defaultdict(list)
    for (book, valid_from), v in sorted(versions.items()):
        books[book].append(BookVersion(book, valid_from, v["valid_to"], v["currency"], v["prices"]))
    tenants = {row[0]: Tenant(*row) for row in conn.execute(
        "select tenant_id, price_book, organisation, business_unit, team from config.tenants")}
    terms: dict[str, list] = defaultdict(list)
    for tenant_id, valid_from, valid_to, discount, commitment, uplift, retention in conn.execute(
            "select tenant_id, valid_from, valid_to, discount_percent, monthly_commitment, overage_uplift_percent,"
            " retention_days from config.tenant_terms order by tenant_id, valid_from"):
        terms[tenant_id].append((valid_from, valid_to, Terms(discount, commitment, uplift, retention)))
    return Catalog(kinds, {b: tuple(v) for b, v in books.items()}, tenants,
                   {t: tuple(v) for t, v in terms.items()})


def price_month(catalog: Catalog, tenant_id: str, month: dt.date, usage: DailyUsage, *,
                terms: Terms | None = None, classes: ClassUsage | None = None) -> PricedMonth | None:
    """Price one tenant-month of daily usage: its usage lines meter by meter (in the order of
    the invoice), then its contract lines. ``None`` when nothing is owed a line (no usage and no
    commitment), as the warehouse then issues no invoice.

    ``terms`` overrides the tenant's configured terms (a what-if); ``usage`` days must lie in
    ``month``. A meter with days but no usage still gets its zero line, as the invoice does.
    ``classes``: of a meter priced by retention, the part of ``usage`` kept by sources with a
    retention class of their own (meter -> their days -> day -> quantity); each class in use is
    a segment of its own (one line per class), the rest at the tenant's default class.
    """
    month = month.replace(day=1)
    tenant = catalog.tenants.get(tenant_id)
    if tenant is None:
        raise ValueError(f"tenant {tenant_id!r} is not in config.tenants")
    terms = terms or catalog.terms_for(tenant_id, month)
    first = catalog.version_on(tenant.price_book, month)
    lines: list[PricedLine] = []
    currency = first.currency if first else None
    in_force: dict[dt.date, BookVersion | None] = {}  # per day, for every meter

    def version_of(meter: str, day: dt.date) -> BookVersion:
        if day not in in_force:
            if day.replace(day=1) != month:
                raise ValueError(f"{tenant_id} {meter}: usage of {day} is not in the month {month:%Y-%m}")
            in_force[day] = catalog.version_on(tenant.price_book, day)
        version = in_force[day]
        if version is None or meter not in version.prices:
            raise ValueError(f"{tenant_id} {meter}: no version of price book {tenant.price_book!r}"
                             f" prices the meter on {day}")
        return version

    for meter in sorted(usage, key=lambda m: m.encode()):  # collate "C", as the invoice numbers lines
        # (version, retention days of a source class or None for the tenant's default) -> usage
        parts: dict[tuple[dt.date, int | None], Decimal] = {}
        versions: dict[dt.date, BookVersion] = {}
        for day, quantity in usage[meter].items():
            version = version_of(meter, day)
            versions[version.valid_from] = version
            parts[version.valid_from, None] = parts.get((version.valid_from, None), ZERO) + Decimal(quantity)
        for days_kept, kept in ((classes or {}).get(meter) or {}).items():
            for day, quantity in kept.items():
                version = version_of(meter, day)
                if version.prices[meter].model != "retention":
                    continue
                versions[version.valid_from] = version
                parts[version.valid_from, days_kept] = parts.get((version.valid_from, days_kept), ZERO) + quantity
                parts[version.valid_from, None] = parts.get((version.valid_from, None), ZERO) - quantity
        if not parts:
            continue
        segments = _segments(meter, versions, parts, terms.retention_days)
        currency = currency or next(iter(versions.values())).currency
        divisor = hours_in_month(month) if catalog.meter_kinds.get(meter) == "gauge" else 1
        for line in price_meter_month(segments, divisor=divisor, discount_percent=terms.discount_percent,
                                      retention_days=terms.retention_days):
            lines.append(PricedLine(meter, line))
    net = sum((pl.line.amount for pl in lines), Decimal("0.00"))
    if terms.monthly_commitment > 0 or terms.overage_uplift_percent > 0:
        lines.extend(PricedLine(CONTRACT, line) for line in contract_lines(
            net, terms.monthly_commitment, terms.overage_uplift_percent))
    if not lines:
        return None
    return PricedMonth(tenant_id, month, currency or "", tuple(lines))


def _segments(meter: str, versions: Mapping[dt.date, BookVersion],
              parts: Mapping[tuple[dt.date, int | None], Decimal], default_days: int) -> list[Segment]:
    """Segments in version order, and within a version priced by retention in class order: the
    class of days d is the smallest retention tier of at least d; classes sharing a tier share a
    segment; a class without usage is left out unless no class of the version has any (then
    the first shows its zero line)."""
    if all(days is None for _, days in parts):  # one class per version: as before per-source classes
        return [Segment(versions[vf].prices[meter], q) for (vf, _), q in sorted(parts.items())]
    segments = []
    for vf in sorted(versions):
        price = versions[vf].prices[meter]
        if price.model != "retention":
            segments.append(Segment(price, parts.get((vf, None), ZERO)))
            continue
        by_class: dict[int, Decimal] = {}
        for (v, days), q in parts.items():
            if v == vf:
                cls = retention_class(price, default_days if days is None else days)
                by_class[cls] = by_class.get(cls, ZERO) + q
        used = {c: q for c, q in by_class.items() if q != 0} or {min(by_class): ZERO}
        segments.extend(Segment(price, q, retention_days=c) for c, q in sorted(used.items()))
    return segments


def retention_class(price: Price, days: int) -> int:
    """The class data kept ``days`` days is priced in: the smallest retention tier of at least ``days``."""
    classes = [t.retention_days for t in price.tiers if t.retention_days is not None and t.retention_days >= days]
    if not classes:
        raise ValueError(f"no retention tier of {days} days or more")
    return min(classes)


def by_version(catalog: Catalog, tenant_id: str, usage: DailyUsage) -> dict[str, dict[dt.date, Decimal]]:
    """The same usage with each meter's days summed per price version in force, on the first of
    those days: priced exactly like ``usage`` (segments are per version), in fewer steps. Days
    no version prices are kept as they are, for :func:`price_month` to refuse."""
    tenant = catalog.tenants.get(tenant_id)
    first: dict[object, dt.date] = {}
    key_of: dict[dt.date, object] = {}
    out: dict[str, dict[dt.date, Decimal]] = {}
    for meter, days in usage.items():
        sums: dict[dt.date, Decimal] = {}
        for day in days:
            if day not in key_of:
                version = catalog.version_on(tenant.price_book, day) if tenant else None
                key_of[day] = (day.replace(day=1), version.valid_from) if version else day
            key = key_of[day]
            first[key] = min(first.get(key, day), day)
        for day, quantity in days.items():
            target = first[key_of[day]]
            sums[target] = sums.get(target, ZERO) + Decimal(quantity)
        out[meter] = sums
    return out


def price_months(catalog: Catalog, month: dt.date, usage: Mapping[str, DailyUsage], *,
                 tenant_ids: Iterable[str] | None = None,
                 classes: Mapping[str, ClassUsage] | None = None) -> dict[str, PricedMonth]:
    """:func:`price_month` for many tenants of one month (every configured tenant by default,
    so a commitment without usage is priced too); ``classes`` per tenant."""
    out = {}
    for tenant_id in (catalog.tenants if tenant_ids is None else tenant_ids):
        priced = price_month(catalog, tenant_id, month, usage.get(tenant_id, {}),
                             classes=(classes or {}).get(tenant_id))
        if priced is not None:
            out[tenant_id] = priced
    return out


def read_daily_classes(conn: psycopg.Connection, month: dt.date, until: dt.datetime | None = None,
                       ) -> dict[str, dict[str, dict[int, dict[dt.date, Decimal]]]]:
    """The month's usage of sources kept for a retention class of their own
    (``intermediate.int_usage_retention_hourly``) per tenant, meter, their days and UTC day; empty
    where the model does not exist. One query."""
    if conn.execute("select to_regclass('intermediate.int_usage_retention_hourly')").fetchone()[0] is None:
        return {}
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    if until is not None:
        end = min(end, until)
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for tenant_id, meter, days, day, quantity in conn.execute(
            "select tenant_id, meter, retention_days, (hour_start at time zone 'UTC')::date as day, sum(quantity)"
            " from intermediate.int_usage_retention_hourly where hour_start >= %s and hour_start < %s"
            " group by tenant_id, meter, retention_days, day", (start, end)):
        out[tenant_id][meter][days][day] = quantity
    return {t: {m: dict(d) for m, d in meters.items()} for t, meters in out.items()}


def read_daily_usage(conn: psycopg.Connection, month: dt.date, until: dt.datetime | None = None,
                     ) -> dict[str, dict[str, dict[dt.date, Decimal]]]:
    """The month's usage per tenant, meter and UTC day from ``marts.fct_usage_hourly`` (hours
    before ``until`` only, when given): tenant -> meter -> day -> quantity. One query."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    if until is not None:
        end = min(end, until)
    out: dict[str, dict[str, dict[dt.date, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    for tenant_id, meter, day, quantity in conn.execute(
            "select tenant_id, meter, (hour_start at time zone 'UTC')::date as day, sum(quantity)"
            " from marts.fct_usage_hourly where hour_start >= %s and hour_start < %s"
            " group by tenant_id, meter, day", (start, end)):
        out[tenant_id][meter][day] = quantity
    return {t: dict(m) for t, m in out.items()}
