"""Month close: drafts during the grace period, a completeness check, then final invoices and corrections.

A billing month closes ``grace_period_days`` (settings) after it ends. Until then its
invoices are drafts (:func:`render_drafts`), re-rendered as late usage arrives. At the
close (``billing_monthly`` or ``chargeback close``):

1. :func:`check_completeness` — every hour of the month must hold usage of every meter
   (``config.meters``): an hour and meter is present when ``raw.usage_snapshots`` has at
   least one snapshot of that meter for that hour. A gap refuses the close with one line
   listing the missing hours per meter, unless an operator overrides it with a reason;
   the outcome, the missing hours and any override are kept in ``pipeline.month_closes``
   and an override is printed on every invoice of the month.
2. :func:`finalize` — :func:`chargeback.billing.invoices.finalize_month`: final PDFs from the
   current marts, numbers, frozen lines, all in one transaction.
3. :func:`issue_corrections` — a credit or debit note for every earlier final invoice
   whose month the marts now bill differently (:func:`chargeback.billing.corrections.issue_corrections`).

Every step calls :func:`check_month` first: nothing is issued from marts
that do not reconcile (or are not current).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from chargeback.billing import corrections, document, invoices, issuing, store
from chargeback.engine import checks, configuration
from chargeback.platform import events, freshness, warehouse
from chargeback.platform.periods import month_window, parse_instant
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)


class MonthNotComplete(document.InvoiceError):
    """The month has hours without usage of some meter and no override: it does not close."""


@dataclasses.dataclass(frozen=True)
class Gap:
    """Consecutive missing hours of one meter: ``first`` to ``last`` (hour starts, inclusive)."""

    meter: str
    first: dt.datetime
    last: dt.datetime

    @property
    def hours(self) -> int:
        return int((self.last - self.first).total_seconds() // 3600) + 1

    def __str__(self) -> str:
        if self.first == self.last:
            return f"{self.first:%Y-%m-%d %H:%M} (1 h)"
        to = f"{self.last:%H:%M}" if self.first.date() == self.last.date() else f"{self.last:%Y-%m-%d %H:%M}"
        return f"{self.first:%Y-%m-%d %H:%M}–{to} ({self.hours} h)"


@dataclasses.dataclass(frozen=True)
class Completeness:
    """The completeness check of a month: its gaps and how the close treats them."""

    period: str
    gaps: tuple[Gap, ...]
    override_reason: str | None = None
    override_by: str | None = None

    @property
    def complete(self) -> bool:
        return not self.gaps

    @property
    def missing_hours(self) -> int:
        return sum(gap.hours for gap in self.gaps)

    @property
    def status(self) -> str:
        return "complete" if self.complete else "overridden" if self.override_reason else "incomplete"

    def describe(self, limit: int = 6) -> str:
        """``ingested_gb: 2026-10-03 14:00–16:00 (3 h); stored_gb: …`` — at most ``limit`` gaps per meter."""
        parts = []
        for meter in sorted({gap.meter for gap in self.gaps}):
            gaps = [gap for gap in self.gaps if gap.meter == meter]
            shown = ", ".join(str(gap) for gap in gaps[:limit])
            more = f", and {len(gaps) - limit} more gaps" if len(gaps) > limit else ""
            parts.append(f"{meter}: {shown}{more}")
        return "; ".join(parts)

    def invoice_note(self) -> str | None:
        """What an overridden month prints on each invoice."""
        if self.complete or not self.override_reason:
            return None
        return (f"Issued for an incomplete month: {self.missing_hours} hours of usage were missing at the close "
                f"({self.describe(limit=3)}). Closed on the authority of {self.override_by}: {self.override_reason}.")


def grace_period_end(period: str, settings: Settings | None = None) -> dt.datetime:
    """When the month may close: its end plus ``grace_period_days``."""
    settings = settings or get_settings()
    return month_window(period)[1] + dt.timedelta(days=settings.grace_period_days)


def find_gaps(period: str, settings: Settings | None = None) -> tuple[Gap, ...]:
    """Every run of consecutive hours of the month without a snapshot of a configured meter."""
    start, end = month_window(period)
    sql = """
        with hours as (
            select generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 hour',
                                   interval '1 hour') as hour_start
        ),
        present as (
            select distinct meter, hour_start from raw.usage_snapshots
            where hour_start >= %(start)s and hour_start < %(end)s
        ),
        missing as (
            select m.meter, h.hour_start,
                   h.hour_start - row_number() over (partition by m.meter order by h.hour_start)
                       * interval '1 hour' as island
            from config.meters as m
            cross join hours as h
            where not exists (select from present as p where p.meter = m.meter and p.hour_start = h.hour_start)
        )
        select meter, min(hour_start), max(hour_start) from missing
        group by meter, island order by meter, min(hour_start)
    """
    with warehouse.connect(settings) as conn:
        conn.execute("set local timezone = 'UTC'")
        rows = conn.execute(sql, {"start": start, "end": end}).fetchall()
    return tuple(Gap(meter, parse_instant(first), parse_instant(last)) for meter, first, last in rows)


def check_completeness(period: str, *, override_reason: str | None = None, override_by: str | None = None,
                       settings: Settings | None = None) -> Completeness:
    """Check that every hour of the month holds usage of every meter, and record the outcome.

    A gap refuses the close (:class:`MonthNotComplete`, one line listing the missing hours)
    unless ``override_reason`` and ``override_by`` say who closes it anyway and why; the
    override is recorded with the missing hours. A month already finalized keeps its record.
    """
    settings = settings or get_settings()
    override_reason = (override_reason or "").strip() or None
    override_by = (override_by or "").strip() or None
    if override_reason and not override_by:
        raise ValueError("an override of the completeness check needs who decides it: give --by NAME (override_by)")
    warehouse.ensure_schema(settings)
    gaps = find_gaps(period, settings)
    result = Completeness(period, gaps, override_reason if gaps else None, override_by if gaps else None)
    missing = {meter: [[str(g.first), str(g.last), g.hours] for g in gaps if g.meter == meter]
               for meter in sorted({g.meter for g in gaps})}
    with warehouse.connect(settings) as conn:
        conn.execute(
            "insert into pipeline.month_closes (period, status, checked_at, missing, missing_hours,"
            " override_reason, override_by) values (%s, %s, now(), %s, %s, %s, %s)"
            " on conflict (period) do update set status = excluded.status, checked_at = excluded.checked_at,"
            " missing = excluded.missing, missing_hours = excluded.missing_hours,"
            " override_reason = excluded.override_reason, override_by = excluded.override_by"
            " where pipeline.month_closes.finalized_at is null",
            (month_window(period)[0].date(), result.status, Jsonb(missing), result.missing_hours,
             result.override_reason, result.override_by),
        )
    if result.status == "incomplete":
        line = events.refuse(
            f"month close of {period}",
            f"{result.missing_hours} hours of usage are missing — {result.describe()}",
            "load the missing hours (chargeback load --start … --end …) and close again, or close anyway with "
            "--override-incomplete REASON --by NAME (DAG params override_incomplete, override_by)",
            where=period, settings=settings)
        raise MonthNotComplete(line)
    if result.status == "overridden":
        events.record(events.Event(
            "notice", f"month close of {period}",
            f"closed incomplete by {override_by} ({override_reason}); missing: {result.describe()}",
            "the override is printed on every invoice of the month", period, severity="warning"), settings=settings)
    return result


def recorded_completeness(period: str, settings: Settings | None = None) -> Completeness | None:
    """The completeness the month's close recorded (gaps rebuilt from ``pipeline.month_closes``)."""
    with warehouse.connect(settings) as conn:
        row = conn.execute("select missing, override_reason, override_by from pipeline.month_closes"
                           " where period = %s", (month_window(period)[0].date(),)).fetchone()
    if row is None:
        return None
    missing, reason, by = row
    gaps = tuple(Gap(meter, parse_instant(first), parse_instant(last))
                 for meter, runs in missing.items() for first, last, _ in runs)
    return Completeness(period, gaps, reason, by)


def is_final(period: str, settings: Settings | None = None) -> bool:
    """Whether the month's invoices have been issued."""
    with warehouse.connect(settings) as conn:
        return conn.execute(
            "select exists (select from pipeline.invoices where period_start = %s and document_type = 'invoice'"
            " and status = 'final')", (month_window(period)[0].date(),)).fetchone()[0]


def require_usage(period: str, settings: Settings | None = None) -> None:
    """Refuse, in one line, a month of which no usage has been loaded — before anything reads
    the marts (a new warehouse has none)."""
    start, end = month_window(period)
    with warehouse.connect(settings) as conn:
        loaded = conn.execute("select exists (select from raw.usage_snapshots where hour_start >= %s"
                              " and hour_start < %s)", (start, end)).fetchone()[0]
    if not loaded:
        line = events.refuse(
            f"invoices of {period}", f"no usage of {period} has been loaded",
            f"load it (chargeback load --month {period}), build it (chargeback transform --month {period})"
            " and invoice the month again", where=period, settings=settings)
        raise document.InvoiceError(line)


def check_month(period: str, settings: Settings | None = None) -> None:
    """Before a month is invoiced: every allocation rule had driver data, and the marts reconcile.

    A rule whose driver meter saw no usage all month left its pool unallocated; that is a
    configuration mistake (a renamed meter, a wrong driver), so the month is refused with
    the rules named rather than invoiced. First of all, the month must have usage at all (a
    month never loaded is refused in one line), and the marts must be current: built after the
    month's last load, and not left by a failed build (:mod:`chargeback.platform.freshness`).
    """
    require_usage(period, settings)
    freshness.require_current_marts(period, settings)
    start, end = month_window(period)
    problems = configuration.drivers_without_usage(start, end, settings)
    if problems:
        raise configuration.ConfigError(f"{period} cannot be invoiced:\n" + "\n".join(problems))
    outcome = checks.check_marts(start, end, settings=settings, suites=checks.INVOICE_SUITES)
    costs = checks.reconcile_costs(start, end, settings=settings)
    log.info("mart checks passed for %s: %s; cost marts reconciled in %.1f s", period, outcome, costs.seconds)


def grace_period_over(period: str, as_of: dt.datetime | str | None = None, settings: Settings | None = None) -> bool:
    """Whether ``as_of`` (default now) is at or after the end of the month's grace period."""
    moment = parse_instant(as_of) if as_of else dt.datetime.now(dt.UTC)
    return moment >= grace_period_end(period, settings)


def render_drafts(period: str, settings: Settings | None = None, workers: int = 2) -> list[document.InvoiceRecord]:
    """The month's draft invoices, from marts that reconcile; dated the day the month may close.

    A month already final has no drafts: a re-run of billing_monthly (a cleared run, a second
    demo) goes on to its corrections instead of failing here.
    """
    if is_final(period, settings):
        log.info("%s is final already: no drafts to render; changes since become credit or debit notes", period)
        return []
    check_month(period, settings)
    return invoices.render_month(period, workers=workers, settings=settings,
                                 issue_date=grace_period_end(period, settings).date())


def finalize(period: str, *, override_reason: str | None = None, override_by: str | None = None,
             settings: Settings | None = None, workers: int = 2,
             issue_date: dt.date | None = None) -> list[document.InvoiceRecord]:
    """Check the marts and the month's completeness (with the override), then issue its invoices."""
    notes = _checks_before_finals(period, override_reason, override_by, settings)
    return invoices.finalize_month(period, workers=workers, settings=settings, issue_date=issue_date, notes=notes)


def plan_finals(period: str, *, override_reason: str | None = None, override_by: str | None = None,
                settings: Settings | None = None, issue_date: dt.date | None = None,
                batch_size: int | None = None) -> issuing.Plan | None:
    """:func:`finalize` for workers: check the marts and the month's completeness (with the
    override), then plan the final invoices (:func:`issuing.plan`) for batches to render and one
    commit to issue. ``None``: every tenant of the month has its final invoice."""
    notes = _checks_before_finals(period, override_reason, override_by, settings)
    return issuing.plan(period, settings=settings, issue_date=issue_date, notes=notes, batch_size=batch_size)


def _checks_before_finals(period: str, override_reason: str | None, override_by: str | None,
                          settings: Settings | None) -> tuple[str, ...]:
    """The marts and the completeness of a month about to be issued; what its invoices print of an
    override. A month issued already is not checked again: its documents do not change, and a
    tenant first billed since is invoiced alone, printing the override the month's close recorded."""
    if is_final(period, settings):
        return _recorded_notes(period, settings)
    check_month(period, settings)
    note = check_completeness(period, override_reason=override_reason, override_by=override_by,
                              settings=settings).invoice_note()
    return (note,) if note else ()


def _recorded_notes(period: str, settings: Settings | None) -> tuple[str, ...]:
    """What every invoice of a month already closed prints of its close's override."""
    recorded = recorded_completeness(period, settings)
    note = recorded.invoice_note() if recorded else None
    return (note,) if note else ()


def issue_corrections(period: str, *, settings: Settings | None = None,
                      issue_date: dt.date | None = None) -> list[document.InvoiceRecord]:
    """At the close of ``period``, for earlier final months the marts now bill differently:
    the invoices of tenants first billed since the month was issued (printing the month's
    recorded override, if any), then a credit or debit note for every invoice whose figures changed."""
    late: list[document.InvoiceRecord] = []
    for month in invoices.months_with_unissued_tenants(period, settings=settings):
        with warehouse.connect(settings) as conn:
            known = {r.invoice_number for r in store.final_documents(conn, month_window(month)[0].date())}
        issued = invoices.finalize_month(month, workers=1, settings=settings, issue_date=issue_date,
                                         notes=_recorded_notes(month, settings))
        for record in issued:
            if record.invoice_number not in known:
                late.append(record)
                events.record(events.Event(
                    "notice", f"invoice {record.invoice_number}",
                    f"tenant {record.tenant_id} was first billed for {month} after the month was issued: "
                    f"its invoice of {record.total} {record.currency} is issued now", None,
                    record.invoice_number, severity="warning"), settings=settings)
    notes = corrections.issue_corrections(period, settings=settings, issue_date=issue_date)
    for note in notes:
        events.record(events.Event(
            "notice", f"{note.document_type.replace('_', ' ')} {note.invoice_number}",
            f"the marts of {note.period_start:%Y-%m} changed after invoice {note.corrects} was issued: "
            f"difference {note.total} {note.currency}", None, note.corrects, severity="info"), settings=settings)
    return [*late, *notes]


@dataclasses.dataclass(frozen=True)
class CloseResult:
    """What a :func:`close_month` did."""

    period: str
    closes_at: dt.datetime
    drafts: Sequence[document.InvoiceRecord] = ()
    finals: Sequence[document.InvoiceRecord] = ()
    notes: Sequence[document.InvoiceRecord] = ()

    @property
    def closed(self) -> bool:
        return bool(self.finals)

    def summary(self) -> str:
        lines = []
        if self.drafts:
            lines.append(f"rendered {len(self.drafts)} draft invoices for {self.period}")
        if not self.closed:
            lines.append(f"{self.period} is in its grace period: it can close from "
                         f"{self.closes_at:%Y-%m-%d %H:%M} UTC (chargeback close --period {self.period})")
        else:
            numbers = [r.invoice_number for r in self.finals]
            lines.append(f"{self.period} is closed: {len(self.finals)} final invoices, {numbers[0]} to {numbers[-1]}")
        lines += [f"issued {n.document_type.replace('_', ' ')} {n.invoice_number} correcting {n.corrects}: "
                  f"{n.total} {n.currency}" if n.corrects else
                  f"issued invoice {n.invoice_number} of {n.period_start:%Y-%m} to tenant {n.tenant_id}, first billed "
                  f"after that month was issued: {n.total} {n.currency}" for n in self.notes]
        return "\n".join(lines)


def close_month(period: str, *, as_of: dt.datetime | str | None = None, override_reason: str | None = None,
                override_by: str | None = None, settings: Settings | None = None,
                workers: int = 2) -> CloseResult:
    """``chargeback close``: drafts while the grace period runs; after it, finalize and correct.

    ``as_of`` (default now) decides whether the grace period is over; the marts are read as
    they are. A month already final is not rendered again, only corrections are looked for.
    """
    settings = settings or get_settings()
    as_of = parse_instant(as_of) if as_of else dt.datetime.now(dt.UTC)
    closes_at = grace_period_end(period, settings)
    if as_of < closes_at:
        if is_final(period, settings):
            raise document.InvoiceError(f"{period} is final already, yet --as-of {as_of:%Y-%m-%d %H:%M} is in "
                                        "its grace period: give a later --as-of (or none)")
        return CloseResult(period, closes_at, drafts=render_drafts(period, settings, workers))
    finals = finalize(period, override_reason=override_reason, override_by=override_by, settings=settings,
                      workers=workers, issue_date=as_of.date())
    notes = issue_corrections(period, settings=settings, issue_date=as_of.date())
    return CloseResult(period, closes_at, finals=finals, notes=notes)
