"""Recommendations priced at the tenant's own rates: what to change, the evidence, and the saving.

Each recommendation names a tenant (and a source where it applies), a change in the terms of
:mod:`chargeback.insights.whatif` (``retention:/prod/payments/debug=7d``), the evidence, and the
monthly saving: the tenant's last full month re-priced through the pricing engine with the change
applied, less the month as invoiced (:func:`whatif.compare`) — tiers, free allowances, packages,
discounts, commitments and retention classes included, never usage × list price.

Kinds (docs/INSIGHTS.md, "Recommendations", states the rules and why):

- ``retention`` — a log group kept longer than any query reads it: the scans of the month that
  read it (labels ``log_group`` and ``data_age`` on ``scanned_gb``) read nothing older than N
  days (99 % of its scanned GB), and it is kept for a longer class → the shortest class of at
  least N days. Its stored GB scale with the days kept.
- ``noisy_source`` — a log group with at least 5 % of the tenant's ingest that queries read
  less than 1 % of (in GB scanned from it per GB ingested) → sample it at 10 % (the saving covers
  ingest and storage; dropping it would save more, keeping a tenth keeps it debuggable).
- ``expensive_query`` — a query principal scanning at least 20 % of the tenant's scans and 3 times
  the median principal's → an alert rule run every 5 minutes instead of every minute (a fifth of
  its scans and CPU), a dashboard or user with a narrower time range (half).
- ``commitment`` — a monthly commitment above the month's usage (a true-up was paid) → the
  commitment lowered to the month's usage amount, rounded down to 100 (never below 0).
- ``price_fit`` — another price book of the catalogue, in the same currency, that prices the
  same month lower → that book.

A recommendation is kept once per (period, tenant, kind, target) in ``insights.recommendations``:
a later run updates its figures and keeps its status (``open`` → ``accepted`` or ``dismissed``
with who and why); one that no longer applies is marked not current. ``marts.fct_recommendations``
(dbt, with a contract) is what BI and the reports read. ``confidence``: ``high`` with 28 days of
the month or more and a steady target (its daily usage varies by less than half its mean),
``medium`` with 14 days, else ``low``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import psycopg

from chargeback.engine import repricing
from chargeback.insights import whatif
from chargeback.platform import events, warehouse
from chargeback.platform.money import format_money
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings

KINDS = ("retention", "noisy_source", "expensive_query", "commitment", "price_fit")
MIN_SAVING = Decimal("1.00")
"""A recommendation saves at least this a month (less is noise, not advice)."""
READ_COVERAGE = Decimal("0.99")
NOISY_INGEST_SHARE = Decimal("0.05")
NOISY_READ_RATIO = Decimal("0.01")
NOISY_SAMPLE = Decimal("0.1")
EXPENSIVE_SHARE = Decimal("0.20")
EXPENSIVE_MULTIPLE = 3
STATUSES = ("open", "accepted", "dismissed")
TENANT = "(tenant)"
ZERO = Decimal(0)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    period: dt.date
    tenant_id: str
    kind: str
    target: str
    """the source it applies to, or ``(tenant)``"""
    change: str
    """the change, as ``chargeback whatif --set`` takes it"""
    title: str
    evidence: str
    confidence: str
    currency: str
    invoice_total: Decimal
    total_after: Decimal

    @property
    def saving(self) -> Decimal:
        return self.invoice_total - self.total_after


@dataclasses.dataclass
class _Month:
    """What the rules read of a tenant-month."""

    usage: whatif.MonthUsage
    reads: dict[str, dict[int, Decimal]]
    """log group -> data age (days) -> GB scanned from it"""
    days: int


def _age_days(text: str | None) -> int | None:
    if not text or not text.endswith("d") or not text[:-1].isdigit():
        return None
    return int(text[:-1])


def read_reads(conn: psycopg.Connection, tenant_ids: list[str], month: dt.date,
               ) -> dict[str, dict[str, dict[int, Decimal]]]:
    """tenant -> log group -> data age in days -> GB scanned, from the scans' labels (one query)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(Decimal)))
    if conn.execute("select to_regclass('intermediate.int_usage_attribution_daily')").fetchone()[0] is None:
        return out
    end = (month + dt.timedelta(days=32)).replace(day=1)
    for tenant_id, group, age, quantity in conn.execute(
            "select tenant_id, labels->>'log_group', labels->>'data_age', sum(quantity)"
            " from intermediate.int_usage_attribution_daily where meter = 'scanned_gb' and tenant_id = any(%s)"
            " and usage_day >= %s and usage_day < %s and labels ? 'log_group' group by 1, 2, 3",
            (tenant_ids, month, end)):
        days = _age_days(age)
        if days is not None:
            out[tenant_id][group][days] += quantity
    return out


def recommend(conn: psycopg.Connection, period: str | Period, tenant_ids: Iterable[str] | None = None,
              catalog: repricing.Catalog | None = None) -> list[Recommendation]:
    """Every recommendation for the tenants (default: every tenant with usage) on ``period``."""
    period = Period.parse(period)
    month = period.first_day
    catalog = catalog or repricing.load_catalog(conn)
    if tenant_ids is None:
        start, end = period.window
        tenant_ids = [r[0] for r in conn.execute(
            "select distinct tenant_id from marts.fct_usage_hourly where hour_start >= %s and hour_start < %s"
            " order by 1", (start, end))]
    tenant_ids = [t for t in tenant_ids if t in catalog.tenants]
    reads = read_reads(conn, tenant_ids, month)
    months = whatif.read_months(conn, month, tenant_ids)
    out: list[Recommendation] = []
    for tenant_id in tenant_ids:
        usage = months.get(tenant_id)
        if usage is None or not usage.usage:
            continue
        days = len({d for by_day in usage.usage.values() for d in by_day})
        m = _Month(usage, {g: dict(a) for g, a in reads.get(tenant_id, {}).items()}, days)
        out += _for_tenant(catalog, m)
    return out


def _for_tenant(catalog: repricing.Catalog, m: _Month) -> list[Recommendation]:
    found = []
    noisy = _noisy_sources(catalog, m)
    found += noisy
    found += _retention(catalog, m, {r.target for r in noisy})
    found += _expensive_queries(catalog, m)
    found += _commitment(catalog, m)
    found += _price_fit(catalog, m)
    return [r for r in found if r.saving >= MIN_SAVING]


def _priced(catalog: repricing.Catalog, m: _Month, kind: str, target: str, change: str, title: str,
            evidence: str, steady: bool = True) -> Recommendation | None:
    comparison = whatif.compare(catalog, m.usage, [whatif.parse_change(change)])
    if comparison.before is None or comparison.after is None:
        return None
    confidence = "high" if m.days >= 28 and steady else "medium" if m.days >= 14 else "low"
    return Recommendation(m.usage.month, m.usage.tenant_id, kind, target, change, title, evidence, confidence,
                          comparison.currency, comparison.before.total, comparison.after.total)


def _steady(days: dict[dt.date, Decimal]) -> bool:
    values = [float(v) for v in days.values()]
    if len(values) < 2 or not statistics.fmean(values):
        return False
    return statistics.pstdev(values) < 0.5 * statistics.fmean(values)


def _log_groups(m: _Month, meter: str) -> dict[str, Decimal]:
    return {s: sum(days.values(), ZERO) for (s, mt), days in m.usage.sources.items() if mt == meter}


def _noisy_sources(catalog: repricing.Catalog, m: _Month) -> list[Recommendation]:
    if not m.reads:
        return []  # no scan says what it read: nothing to tell a noisy source by
    ingest = _log_groups(m, "ingested_gb")
    total = sum(ingest.values(), ZERO)
    out = []
    for source, gb in sorted(ingest.items(), key=lambda kv: (-kv[1], kv[0])):
        if source == "(none)" or not total or gb / total < NOISY_INGEST_SHARE:
            continue
        read = sum(m.reads.get(source, {}).values(), ZERO)
        if read / gb >= NOISY_READ_RATIO:
            continue
        rec = _priced(catalog, m, "noisy_source", source, f"sample:{source}={NOISY_SAMPLE}",
                      f"sample {source} at {NOISY_SAMPLE:.0%}: it is ingested and stored, and hardly read",
                      f"{gb:,.1f} GB ingested in {m.usage.month:%Y-%m} ({gb / total:.0%} of the tenant's ingest);"
                      f" queries scanned {read:,.1f} GB of it", _steady(m.usage.sources[source, "ingested_gb"]))
        if rec:
            out.append(rec)
    return out


def _retention(catalog: repricing.Catalog, m: _Month, skip: set[str]) -> list[Recommendation]:
    tenant = catalog.tenants[m.usage.tenant_id]
    version = catalog.version_on(tenant.price_book, m.usage.month)
    terms = catalog.terms_for(m.usage.tenant_id, m.usage.month)
    out = []
    for meter, price in (version.prices.items() if version else ()):
        if price.model != whatif.STORAGE_MODEL:
            continue
        classes = sorted(t.retention_days for t in price.tiers if t.retention_days is not None)
        for source in sorted(_log_groups(m, meter)):
            reads = m.reads.get(source)
            if source in skip or source == "(none)" or not reads:
                continue
            kept = m.usage.kept.get(source) or terms.retention_days
            total = sum(reads.values(), ZERO)
            needed = min(age for age in sorted(reads)
                         if sum((q for a, q in reads.items() if a <= age), ZERO) >= READ_COVERAGE * total)
            target = next((c for c in classes if c >= needed), None)
            if target is None or target >= kept:
                continue
            older = sum((q for a, q in reads.items() if a > target), ZERO)
            rec = _priced(catalog, m, "retention", source, f"retention:{source}={target}d",
                          f"keep {source} {target} days instead of {kept}",
                          f"of {total:,.1f} GB scanned from {source} in {m.usage.month:%Y-%m}, {older:,.1f} GB read"
                          f" data older than {target} days; it is kept {kept} days",
                          _steady(m.usage.sources[source, meter]))
            if rec:
                out.append(rec)
    return out


def _expensive_queries(catalog: repricing.Catalog, m: _Month) -> list[Recommendation]:
    scans = {s: q for s, q in _log_groups(m, "scanned_gb").items() if q > 0}
    if len(scans) < 3:
        return []
    total = sum(scans.values(), ZERO)
    median = statistics.median(scans.values())
    out = []
    for source, gb in sorted(scans.items(), key=lambda kv: (-kv[1], kv[0])):
        if gb / total < EXPENSIVE_SHARE or gb < EXPENSIVE_MULTIPLE * median:
            continue
        alert = source.startswith("alert:")
        keep = Decimal("0.2") if alert else Decimal("0.5")
        what = ("run it every 5 minutes instead of every minute" if alert
                else "narrow its time range to half")
        rec = _priced(catalog, m, "expensive_query", source, f"scans:{source}={keep}", f"{source}: {what}",
                      f"{gb:,.1f} GB scanned in {m.usage.month:%Y-%m}: {gb / total:.0%} of the tenant's scans,"
                      f" {gb / median:,.1f} times the median principal's",
                      _steady(m.usage.sources[source, "scanned_gb"]))
        if rec:
            out.append(rec)
    return out


def _commitment(catalog: repricing.Catalog, m: _Month) -> list[Recommendation]:
    terms = catalog.terms_for(m.usage.tenant_id, m.usage.month)
    if terms.monthly_commitment <= 0:
        return []
    priced = repricing.price_month(catalog, m.usage.tenant_id, m.usage.month, m.usage.usage, terms=terms,
                                   classes=m.usage.classes)
    used = priced.usage_total if priced else ZERO
    if used >= terms.monthly_commitment:
        return []
    level = max((used / 100).to_integral_value(rounding=ROUND_FLOOR) * 100, ZERO).quantize(Decimal("0.01"))
    rec = _priced(catalog, m, "commitment", TENANT, f"commitment={level}",
                  f"lower the monthly commitment from {format_money(terms.monthly_commitment, priced.currency)}"
                  f" to {format_money(level, priced.currency)}",
                  f"usage came to {format_money(used, priced.currency)} in {m.usage.month:%Y-%m}: a true-up of"
                  f" {format_money(terms.monthly_commitment - used, priced.currency)} was paid for nothing used")
    return [rec] if rec else []


def _price_fit(catalog: repricing.Catalog, m: _Month) -> list[Recommendation]:
    tenant = catalog.tenants[m.usage.tenant_id]
    current = catalog.version_on(tenant.price_book, m.usage.month)
    best = None
    for book in sorted(catalog.books):
        version = catalog.version_on(book, m.usage.month)
        if book == tenant.price_book or version is None or current is None or version.currency != current.currency:
            continue
        if not all(meter in version.prices for meter in m.usage.usage):
            continue
        rec = _priced(catalog, m, "price_fit", TENANT, f"price_book={book}",
                      f"move from price book {tenant.price_book} to {book}",
                      f"the same usage of {m.usage.month:%Y-%m} priced by {book} instead of {tenant.price_book}")
        if rec and (best is None or rec.saving > best.saving):
            best = rec
    return [best] if best else []


# --------------------------------------------------------------------------- storing and reading

def store(conn: psycopg.Connection, recs: list[Recommendation], period: str | Period,
          tenant_ids: Iterable[str] | None = None) -> int:
    """Upsert ``recs`` (figures updated, status kept) and mark the period's others of these tenants
    (all tenants by default) not current. Returns the rows written."""
    period = Period.parse(period)
    for r in recs:
        conn.execute(
            "insert into insights.recommendations (period, tenant_id, kind, target, change, title, evidence,"
            " confidence, currency, invoice_total, total_after, saving)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict (period, tenant_id, kind, target) do update set (change, title, evidence, confidence,"
            " currency, invoice_total, total_after, saving, current, computed_at) = (excluded.change, excluded.title,"
            " excluded.evidence, excluded.confidence, excluded.currency, excluded.invoice_total,"
            " excluded.total_after, excluded.saving, true, now())",
            (r.period, r.tenant_id, r.kind, r.target, r.change, r.title, r.evidence, r.confidence, r.currency,
             r.invoice_total, r.total_after, r.saving))
    keys = [(r.tenant_id, r.kind, r.target) for r in recs]
    conn.execute(
        "update insights.recommendations set current = false where period = %s and current"
        " and (%s::text[] is null or tenant_id = any(%s))"
        " and (tenant_id, kind, target) not in (select * from unnest(%s::text[], %s::text[], %s::text[]))",
        (period.first_day, list(tenant_ids) if tenant_ids is not None else None,
         list(tenant_ids) if tenant_ids is not None else None,
         [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]))
    return len(recs)


def run(period: str | Period, tenant_id: str | None = None, settings: Settings | None = None) -> list[dict[str, Any]]:
    """``chargeback recommend``: compute, store, and return the period's current recommendations."""
    period = Period.parse(period)
    tenants = [tenant_id] if tenant_id else None
    with warehouse.connect(settings) as conn:
        recs = recommend(conn, period, tenants)
        store(conn, recs, period, tenants)
    return listing(period, tenant_id, settings)


def listing(period: str | Period, tenant_id: str | None = None, settings: Settings | None = None,
            ) -> list[dict[str, Any]]:
    period = Period.parse(period)
    with warehouse.connect(settings) as conn:
        cur = conn.execute(
            "select * from insights.recommendations where period = %s and current"
            " and (%s::text is null or tenant_id = %s) order by saving desc, tenant_id, kind, target",
            (period.first_day, tenant_id, tenant_id))
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def set_status(recommendation_id: int, status: str, by: str, reason: str, settings: Settings | None = None) -> None:
    """open → accepted or dismissed, with who and why."""
    if status not in ("accepted", "dismissed"):
        raise ValueError(f"a recommendation is accepted or dismissed, not {status!r}")
    if not by.strip() or not reason.strip():
        raise ValueError("say who (--by) and why (--reason)")
    with warehouse.connect(settings) as conn:
        row = conn.execute("update insights.recommendations set status = %s, status_by = %s, status_reason = %s,"
                           " status_at = now() where recommendation_id = %s and status = 'open' returning 1",
                           (status, by, reason, recommendation_id)).fetchone()
        if row is None:
            raise ValueError(f"no open recommendation {recommendation_id} (chargeback recommend --period P)")


def render(rows: list[dict[str, Any]], period: str | Period) -> str:
    if not rows:
        return f"no recommendations for {period}"
    currency = rows[0]["currency"]
    total = sum((r["saving"] for r in rows if r["status"] != "dismissed"), Decimal("0.00"))
    lines = [f"recommendations for {period}: {len(rows)}, saving {format_money(total, currency)} a month in all"
             " (each the month re-priced with the change; chargeback whatif shows it line by line)"]
    for r in rows:
        status = r["status"] + (f" by {r['status_by']}: {r['status_reason']}" if r["status_by"] else "")
        lines.append(f"#{r['recommendation_id']}  {r['tenant_id']}  {format_money(r['saving'], r['currency'])}/month"
                     f"  {r['kind']}  {events.clean(r['title'], 200)}  [{r['confidence']}, {status}]")
        lines.append(f"    {events.clean(r['evidence'], 400)}; --set {events.clean(r['change'], 200)}")
    return "\n".join(lines)


__all__ = ["KINDS", "Recommendation", "listing", "recommend", "render", "run", "set_status", "store"]
