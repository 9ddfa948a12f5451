"""The steps Airflow tasks and the CLI run, one function per task.

DAG files stay wiring only: each task body is one call into this module. Every step
works on an explicit window ``[start, end)`` — never on "now" — reads and writes only
that window, and replaces rather than appends, so a retried or replayed task changes
nothing. Steps hand each other data through the warehouse (``load_id`` is the only
thing passed along), never through a worker's local disk.
"""

from __future__ import annotations

import datetime as dt
import logging
import os

from chargeback import configuration, load, restatement
from chargeback.periods import month_window, parse_instant, resolve_window  # noqa: F401 - DAG tasks use them
from chargeback.settings import Settings, get_settings
from chargeback.sources import FileSource, SimulatorSource, UsageSource

log = logging.getLogger(__name__)


def make_source(name: str | None = None, *, tenants: int | None = None, seed: int = 42,
                settings: Settings | None = None) -> UsageSource:
    """The usage source called ``name`` (``files`` or ``simulator``; default ``$CHARGEBACK_SOURCE`` or files)."""
    settings = settings or get_settings()
    name = name or os.environ.get("CHARGEBACK_SOURCE", "files")
    if name == "files":
        return FileSource(settings.landing)
    if name == "simulator":
        ids = configuration.read(settings.config_dir).tenant_ids
        return SimulatorSource(settings.landing, ids[:tenants] if tenants else ids, seed=seed)
    raise ValueError(f"unknown usage source {name!r}: choose 'files' or 'simulator'")


# ---- usage_hourly -------------------------------------------------------------------

def apply_configuration(settings: Settings | None = None) -> dict[str, int]:
    """Validate ``config/`` and replace the warehouse's configuration tables atomically."""
    cfg = configuration.load(settings=settings)
    counts = {"tenants": len(cfg.tenants), "meters": len(cfg.meters),
              "cost_pools": len(cfg.cost_pools), "price_books": len(cfg.price_books)}
    log.info("configuration applied: %s", counts)
    return counts


def plan_window(start: dt.datetime, end: dt.datetime, settings: Settings | None = None) -> restatement.Plan:
    """The run's load window: its own hours, widened back to the earliest past hour
    whose folder received files after it was loaded (within ``restatement_hours``)."""
    plan = restatement.scan(start, end, settings)
    if not plan.restated:
        log.info("no late files in the %s hours before %s", (settings or get_settings()).restatement_hours,
                 start.isoformat())
    return plan


def extract_and_stage(start: dt.datetime, end: dt.datetime, source: UsageSource,
                      settings: Settings | None = None, progress=None) -> int:
    result = load.stage(source, start, end, settings, progress)
    log.info("staged load %s: %s rows from %s files for [%s, %s)",
             result.load_id, result.rows, result.files, start.isoformat(), end.isoformat())
    return result.load_id


def gate(load_id: int, start: dt.datetime, end: dt.datetime, settings: Settings | None = None) -> None:
    """Validate the staged rows with GX; a failure rejects the load and stops the run."""
    from chargeback import gate as gx_gate

    try:
        outcome = gx_gate.validate_staged(load_id, start, end, settings=settings)
    except gx_gate.GateFailed as exc:
        load.reject(load_id, str(exc), settings)
        raise
    log.info("gate passed for load %s: %s", load_id, outcome)


def publish(load_id: int, settings: Settings | None = None) -> load.PublishResult:
    result = load.publish(load_id, settings)
    log.info("published load %s: %s rows replaced by %s", load_id, result.rows_deleted, result.rows_loaded)
    return result


def publish_and_widen(load_id: int, plan: restatement.Plan | dict, settings: Settings | None = None,
                      ) -> tuple[dt.datetime, dt.datetime]:
    """Publish the load; return the window dbt must rebuild (the lookback).

    That is the load window widened to every hour whose usage the publish changed: a
    late snapshot may belong to an hour before the folder it landed in. Only these
    hours, and the months they touch, are rebuilt.
    """
    if isinstance(plan, restatement.Plan):
        plan = plan.as_dict()
    result = publish(load_id, settings)
    start, end = restatement.dbt_window(plan["start"], plan["end"], plan.get("run_start"),
                                        getattr(result, "usage_start", None), getattr(result, "usage_end", None))
    if start < parse_instant(plan.get("run_start") or plan["start"]):
        log.info("lookback: dbt rebuilds [%s, %s) for this run", start.isoformat(), end.isoformat())
    return start, end


def transform(start: dt.datetime | None, end: dt.datetime | None, settings: Settings | None = None,
              *, full_refresh: bool = False) -> None:
    from chargeback import transform as dbt

    dbt.build(start, end, full_refresh=full_refresh)


def check_marts(start: dt.datetime | None, end: dt.datetime | None, settings: Settings | None = None) -> None:
    from chargeback import checks

    outcome = checks.check_marts(start, end, settings=settings)
    log.info("mart checks passed: %s", outcome)


def load_window(start: dt.datetime, end: dt.datetime, source: UsageSource,
                settings: Settings | None = None, progress=None) -> int:
    """Configuration, extract, gate and publish for one window, in-process (``chargeback load``)."""
    apply_configuration(settings)
    load_id = extract_and_stage(start, end, source, settings, progress)
    gate(load_id, start, end, settings)
    publish(load_id, settings)
    return load_id


def run_usage_window(start: dt.datetime, end: dt.datetime, source: UsageSource,
                     settings: Settings | None = None, *, restate: bool = True) -> int:
    """The whole hourly chain for one window, in-process — what ``usage_hourly`` runs.

    With ``restate`` (an hourly run), the load window first grows back to the earliest
    restated past hour (:func:`plan_window`); dbt and the checks then run over the
    lookback :func:`publish_and_widen` returns.
    """
    apply_configuration(settings)
    plan = plan_window(start, end, settings) if restate else restatement.Plan(start, end, start)
    load_id = extract_and_stage(plan.load_start, plan.load_end, source, settings)
    gate(load_id, plan.load_start, plan.load_end, settings)
    dbt_start, dbt_end = publish_and_widen(load_id, plan, settings)
    transform(dbt_start, dbt_end, settings)
    check_marts(dbt_start, dbt_end, settings)
    return load_id


# ---- billing_monthly ----------------------------------------------------------------

def check_month(period: str, settings: Settings | None = None) -> None:
    """Before a month is invoiced: every allocation rule had driver data, and the marts reconcile.

    A rule whose driver meter saw no usage all month left its pool unallocated; that is a
    configuration mistake (a renamed meter, a wrong driver), so the month is refused with
    the rules named rather than invoiced. First of all, the marts must be current: built
    after the month's last load, and not left by a failed build (``chargeback.freshness``).
    """
    from chargeback import freshness

    freshness.require_current_marts(period, settings)
    start, end = month_window(period)
    problems = configuration.drivers_without_usage(start, end, settings)
    if problems:
        raise configuration.ConfigError(f"{period} cannot be invoiced:\n" + "\n".join(problems))
    check_marts(start, end, settings)


def render_invoices(period: str, settings: Settings | None = None, workers: int = 2) -> list:
    """Render the month's draft invoices (unnumbered, marked DRAFT), dated the day the month may close.

    The date derives from the period and the grace period, never from "now", so re-running
    a month renders byte-identical drafts. Issuing them is :mod:`chargeback.close`'s job.
    """
    from chargeback import close

    records = close.render_drafts(period, settings, workers)
    log.info("rendered %s draft invoices for %s", len(records), period)
    return records
