"""What if: a tenant's month re-priced with changes, through the pricing engine that invoices it.

``chargeback whatif --period 2026-11 --tenant t014 --set retention:payments-debug=7d --set commitment=2000``
prints the month's invoice as it was and as it would have been, line by line. The recommendations
(:mod:`chargeback.insights.recommend`) price their savings with the same function, so a saving is
always the difference of two invoices priced by :func:`repricing.price_month` — tiers, free
allowances, packages, discounts, commitments and retention classes included.

Changes (``--set``; a source is named as in the snapshots, e.g. a log group or ``user:alice``):

- ``retention:<source>=<N>d`` — the source's stored data kept N days: its stored GB move to the
  class of N days and scale by N ÷ the days it is kept now (a log group keeps N days of data in
  steady state, so 7 days store 7/30 of what 30 days store);
- ``retention=<N>d`` — the same for every source kept at the tenant's default (the terms' class);
- ``drop:<source>`` — the source sends nothing (its ingest, storage and alerts; its scans and CPU
  if it is a query principal);
- ``sample:<source>=<f>`` — the source keeps the fraction ``f`` of what it sends (0 < f ≤ 1);
- ``scans:<source>=<f>`` — a query principal scans the fraction ``f`` of what it scans now (a
  narrower time range, a lower frequency): scans and query CPU;
- ``commitment=<amount>`` — the month's minimum commitment; ``price_book=<book>`` — another book.

Usage comes from the marts (``marts.fct_usage_hourly``, ``intermediate.int_usage_sources_daily``),
so the month as it was prices to its invoice exactly (held by ``tests/test_recommend.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation

import psycopg

from chargeback.engine import repricing
from chargeback.platform.money import format_money
from chargeback.platform.periods import Period

ZERO = Decimal(0)
STORAGE_MODEL = "retention"
SCAN_METERS = ("scanned_gb", "query_cpu_seconds")
_KIND = re.compile(r"(?P<kind>retention|drop|sample|scans|commitment|price_book)(?=[:=]|$)")


class WhatIfError(ValueError):
    """A change that cannot be applied: the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str
    source: str | None = None
    value: str | None = None

    def __str__(self) -> str:
        target = f":{self.source}" if self.source else ""
        value = f"={self.value}" if self.value is not None else ""
        return f"{self.kind}{target}{value}"


def parse_change(text: str) -> Change:
    """``retention:payments-debug=7d`` → ``Change("retention", "payments-debug", "7d")``, checked.

    A source may hold ``:`` and ``=`` (``user:alice``): the kind ends at the first ``:`` or ``=``,
    the value follows the last ``=`` (``drop:`` has none: the rest is the source)."""
    text = text.strip()
    m = _KIND.match(text)
    if not m:
        raise WhatIfError(f"--set {text!r}: expected retention:<source>=<N>d, retention=<N>d, drop:<source>,"
                          " sample:<source>=<f>, scans:<source>=<f>, commitment=<amount> or price_book=<book>")
    kind, rest = m["kind"], text[m.end():]
    source = value = None
    if kind == "drop" and rest.startswith(":"):
        source = rest[1:]
    elif rest.startswith(":") and "=" in rest:
        source, _, value = rest[1:].rpartition("=")
    elif rest.startswith(":"):
        source = rest[1:]
    elif rest.startswith("="):
        value = rest[1:]
    change = Change(kind, source or None, value)
    needs_source = change.kind in ("drop", "sample", "scans")
    if needs_source and not change.source:
        raise WhatIfError(f"--set {text!r}: {change.kind} names a source ({change.kind}:<source>)")
    if change.kind in ("commitment", "price_book") and change.source:
        raise WhatIfError(f"--set {text!r}: {change.kind} applies to the tenant, not to a source")
    if change.kind != "drop" and change.value is None:
        raise WhatIfError(f"--set {text!r}: a value is missing (={'<N>d' if change.kind == 'retention' else '…'})")
    if change.kind == "retention":
        _days(change)
    elif change.kind in ("sample", "scans"):
        _fraction(change)
    elif change.kind == "commitment":
        _amount(change)
    return change


def _days(change: Change) -> int:
    m = re.fullmatch(r"(\d{1,4})d", change.value or "")
    if not m or int(m[1]) < 1:
        raise WhatIfError(f"--set {change}: retention is a number of days, e.g. 7d")
    return int(m[1])


def _fraction(change: Change) -> Decimal:
    try:
        f = Decimal(change.value or "")
    except InvalidOperation:
        f = Decimal(-1)
    if not 0 < f <= 1:
        raise WhatIfError(f"--set {change}: the fraction kept is a number above 0 and at most 1, e.g. 0.1")
    return f


def _amount(change: Change) -> Decimal:
    try:
        amount = Decimal(change.value or "")
    except InvalidOperation:
        amount = Decimal(-1)
    if amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise WhatIfError(f"--set {change}: a commitment is an amount of at least 0, in cents at most")
    return amount


@dataclasses.dataclass
class MonthUsage:
    """A tenant-month's usage as the invoice priced it, and per source."""

    tenant_id: str
    month: dt.date
    usage: dict[str, dict[dt.date, Decimal]]
    """meter -> day -> the day's usage (repricing.DailyUsage)"""
    classes: dict[str, dict[int, dict[dt.date, Decimal]]]
    """meter -> days kept -> day -> usage of the sources kept for a class of their own"""
    sources: dict[tuple[str, str], dict[dt.date, Decimal]]
    """(source, meter) -> day -> the source's usage"""
    kept: dict[str, int | None]
    """source -> the days its stored data is kept (None: the tenant's default)"""


def read_month(conn: psycopg.Connection, tenant_id: str, month: dt.date) -> MonthUsage:
    """One tenant's month from the marts."""
    return read_months(conn, month, [tenant_id]).get(tenant_id) or MonthUsage(tenant_id, month, {}, {}, {}, {})


def read_months(conn: psycopg.Connection, month: dt.date, tenant_ids: list[str]) -> dict[str, MonthUsage]:
    """The tenants' month from the marts, in four queries whatever their number (the month's usage,
    the sources kept for a class of their own, usage per source, the sources' own classes)."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    wanted = set(tenant_ids)
    usage = {t: u for t, u in repricing.read_daily_usage(conn, month).items() if t in wanted}
    classes = repricing.read_daily_classes(conn, month)
    sources: dict[str, dict[tuple[str, str], dict[dt.date, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    kept: dict[str, dict[str, int | None]] = defaultdict(dict)
    if conn.execute("select to_regclass('intermediate.int_usage_sources_daily')").fetchone()[0] is not None:
        own: dict[tuple[str, str], int] = {(t, s): d for t, s, d in conn.execute(
            "select r.tenant_id, r.source, r.retention_days from config.tenant_source_retention r"
            " join config.tenant_terms t using (tenant_id, valid_from) where r.tenant_id = any(%s)"
            " and t.valid_from <= %s and (t.valid_to is null or t.valid_to > %s)", (sorted(wanted), month, month))}
        for tenant_id, source, meter, day, quantity in conn.execute(
                "select tenant_id, source, meter, usage_day, quantity from intermediate.int_usage_sources_daily"
                " where usage_day >= %s and usage_day < %s and tenant_id = any(%s)",
                (start.date(), end.date(), sorted(wanted))):
            sources[tenant_id][source, meter][day] = quantity
            kept[tenant_id][source] = own.get((tenant_id, source))
    return {t: MonthUsage(t, month, u, classes.get(t, {}), dict(sources.get(t, {})), kept.get(t, {}))
            for t, u in usage.items()}


@dataclasses.dataclass(frozen=True)
class Comparison:
    tenant_id: str
    month: dt.date
    changes: tuple[Change, ...]
    before: repricing.PricedMonth | None
    after: repricing.PricedMonth | None

    @property
    def currency(self) -> str:
        return (self.before or self.after).currency if (self.before or self.after) else ""

    @property
    def saving(self) -> Decimal:
        """The month's invoice before less after (positive: the change would have saved this)."""
        return (self.before.total if self.before else Decimal("0.00")) - (
            self.after.total if self.after else Decimal("0.00"))


def compare(catalog: repricing.Catalog, month_usage: MonthUsage, changes: list[Change] | tuple[Change, ...],
            ) -> Comparison:
    """The month priced as it was and with ``changes`` applied (in order)."""
    tenant_id, month = month_usage.tenant_id, month_usage.month
    terms = catalog.terms_for(tenant_id, month)
    before = repricing.price_month(catalog, tenant_id, month, month_usage.usage, terms=terms,
                                   classes=month_usage.classes)
    usage = {m: dict(d) for m, d in month_usage.usage.items()}
    classes = {m: {k: dict(d) for k, d in by.items()} for m, by in month_usage.classes.items()}
    new_terms, new_catalog = terms, catalog
    for change in changes:
        if change.kind == "commitment":
            new_terms = dataclasses.replace(new_terms, monthly_commitment=_amount(change))
        elif change.kind == "price_book":
            if change.value not in catalog.books:
                raise WhatIfError(f"--set {change}: no price book {change.value!r} (books: "
                                  f"{', '.join(sorted(catalog.books))})")
            tenant = dataclasses.replace(catalog.tenants[tenant_id], price_book=change.value)
            new_catalog = dataclasses.replace(new_catalog, tenants={**new_catalog.tenants, tenant_id: tenant})
        elif change.kind == "retention" and change.source is None:
            days = _days(change)
            for source, own in month_usage.kept.items():
                if own is None:
                    _scale_source(catalog, month_usage, usage, classes, source, terms.retention_days, days, terms)
            new_terms = dataclasses.replace(new_terms, retention_days=days)
            # sources kept at the old default now differ from the new one only if they had a class of their own
        else:
            source = change.source
            if not any(s == source for s, _ in month_usage.sources):
                raise WhatIfError(f"--set {change}: {tenant_id} has no source {source!r} in {month:%Y-%m}")
            own = month_usage.kept.get(source)
            if change.kind == "retention":
                _scale_source(catalog, month_usage, usage, classes, source, own or terms.retention_days,
                              _days(change), terms)
            elif change.kind == "drop":
                _scale_meters(catalog, month_usage, usage, classes, source, None, ZERO, own)
            elif change.kind == "sample":
                _scale_meters(catalog, month_usage, usage, classes, source, None, _fraction(change), own)
            elif change.kind == "scans":
                _scale_meters(catalog, month_usage, usage, classes, source, SCAN_METERS, _fraction(change), own)
    after = repricing.price_month(new_catalog, tenant_id, month, usage, terms=new_terms, classes=classes)
    return Comparison(tenant_id, month, tuple(changes), before, after)


def _storage_meters(catalog: repricing.Catalog, tenant_id: str, month: dt.date) -> set[str]:
    version = catalog.version_on(catalog.tenants[tenant_id].price_book, month)
    return {m for m, p in (version.prices.items() if version else ()) if p.model == STORAGE_MODEL}


def _scale_source(catalog: repricing.Catalog, mu: MonthUsage, usage: dict, classes: dict, source: str,
                  days_now: int, days_new: int, terms: repricing.Terms) -> None:
    """The source's stored data kept ``days_new`` instead of ``days_now``: its stored usage scales by
    their ratio and moves to the class of ``days_new`` (the tenant's default class: no class of its own)."""
    ratio = Decimal(days_new) / Decimal(days_now)
    for meter in _storage_meters(catalog, mu.tenant_id, mu.month):
        for day, quantity in mu.sources.get((source, meter), {}).items():
            new = quantity * ratio
            usage[meter][day] = usage[meter].get(day, ZERO) - quantity + new
            if days_now != terms.retention_days:
                _add(classes, meter, days_now, day, -quantity)
            if days_new != terms.retention_days:
                _add(classes, meter, days_new, day, new)


def _scale_meters(catalog: repricing.Catalog, mu: MonthUsage, usage: dict, classes: dict, source: str,
                  meters: tuple[str, ...] | None, factor: Decimal, own: int | None) -> None:
    """Every meter of the source (or ``meters``) times ``factor``."""
    terms = catalog.terms_for(mu.tenant_id, mu.month)
    storage = _storage_meters(catalog, mu.tenant_id, mu.month)
    for (s, meter), days in mu.sources.items():
        if s != source or (meters is not None and meter not in meters):
            continue
        for day, quantity in days.items():
            delta = quantity * factor - quantity
            usage[meter][day] = usage[meter].get(day, ZERO) + delta
            if meter in storage and own is not None and own != terms.retention_days:
                _add(classes, meter, own, day, delta)


def _add(classes: dict, meter: str, days: int, day: dt.date, quantity: Decimal) -> None:
    by_day = classes.setdefault(meter, {}).setdefault(days, {})
    by_day[day] = by_day.get(day, ZERO) + quantity


def whatif(conn: psycopg.Connection, period: str | Period, tenant_id: str, changes: list[str]) -> Comparison:
    """``chargeback whatif``: the tenant's month re-priced with ``changes`` (``--set`` texts)."""
    period = Period.parse(period)
    catalog = repricing.load_catalog(conn)
    if tenant_id not in catalog.tenants:
        raise WhatIfError(f"no tenant {tenant_id!r} in config.tenants")
    parsed = [parse_change(c) for c in changes]
    return compare(catalog, read_month(conn, tenant_id, period.first_day), parsed)


def _line_key(pl: repricing.PricedLine) -> tuple:
    line = pl.line
    return (pl.meter or "~", line.line_type, line.price_valid_from or dt.date.min, line.tier or 0)


def _describe(pl: repricing.PricedLine) -> str:
    line = pl.line
    if pl.meter is None:
        return line.line_type.replace("_", " ")
    tier = f" tier {line.tier}" if line.tier is not None else ""
    kind = " (free allowance)" if line.line_type == "free_allowance" else ""
    return f"{pl.meter}{tier}{kind} from {line.price_valid_from}"


def line_by_line(c: Comparison) -> list[tuple[str, Decimal | None, Decimal, Decimal | None, Decimal, Decimal]]:
    """(line, quantity now, amount now, quantity then, amount then, difference) per invoice line of
    the month as priced ("now") and with the changes ("then"), then the totals (line ``"total"``)."""
    before = {_line_key(pl): pl for pl in (c.before.lines if c.before else ())}
    after = {_line_key(pl): pl for pl in (c.after.lines if c.after else ())}
    rows = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        old = b.line.amount if b else Decimal("0.00")
        new = a.line.amount if a else Decimal("0.00")
        rows.append((_describe(b or a), b.line.quantity if b else None, old, a.line.quantity if a else None, new,
                     new - old))
    total_before = c.before.total if c.before else Decimal("0.00")
    total_after = c.after.total if c.after else Decimal("0.00")
    rows.append(("total", None, total_before, None, total_after, total_after - total_before))
    return rows


def render(c: Comparison) -> str:
    """Old and new invoice side by side, line by line, with the difference."""
    currency = c.currency
    rows = [("line", "quantity now", "amount now", "quantity then", "amount then", "difference")]
    for line, q_now, now, q_then, then, difference in line_by_line(c):
        rows.append((line, f"{q_now.normalize():f}" if q_now is not None else "", f"{now:,.2f}",
                     f"{q_then.normalize():f}" if q_then is not None else "", f"{then:,.2f}", f"{difference:+,.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = [f"{c.tenant_id}, {c.month:%Y-%m}, re-priced with {', '.join(map(str, c.changes)) or 'no change'}"
             f" ({currency}; 'now' is the invoice as priced, 'then' with the changes):"]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(
            zip(r, widths, strict=True))))
    verb = "saves" if c.saving > 0 else "costs" if c.saving < 0 else "changes"
    lines.append(f"the change {verb} {format_money(abs(c.saving), currency)} a month"
                 + (" (nothing)" if not c.saving else ""))
    return "\n".join(lines)


__all__ = ["Change", "Comparison", "MonthUsage", "WhatIfError", "compare", "line_by_line", "parse_change",
           "read_month", "render", "whatif"]
