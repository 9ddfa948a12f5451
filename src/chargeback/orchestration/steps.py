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

from chargeback.engine import configuration
from chargeback.ingest import load, quarantine, restatement, simulate
from chargeback.ingest.sources import FileSource, SimulatorSource, UsageSource
from chargeback.platform import warehouse
from chargeback.platform.periods import month_window, parse_instant, resolve_window  # noqa: F401 - DAG tasks use them
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)


def make_source(name: str | None = None, *, tenants: int | None = None, seed: int = 42,
                settings: Settings | None = None) -> UsageSource:
    """The usage source called ``name`` (``files`` or ``simulator``; default ``$CHARGEBACK_SOURCE`` or files).

    ``simulator`` is refused (:class:`chargeback.ingest.simulate.SimulationRefused`, one line)
    unless ``CHARGEBACK_ENV`` is ``dev`` or ``demo``: it would bill synthetic usage.
    """
    settings = settings or get_settings()
    name = name or os.environ.get("CHARGEBACK_SOURCE", "files")
    if name == "files":
        return FileSource(settings.landing)
    if name == "simulator":
        simulate.require_simulation_allowed(settings.landing)
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
    from chargeback.ingest import gate as gx_gate

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
              *, full_refresh: bool = False, insights: bool = True) -> None:
    """dbt over a window (or everything): every model, or with ``insights=False`` the cost
    chain only, as usage_hourly builds it (the insight marts follow in :func:`refresh_insights`)."""
    from chargeback.engine import transform as dbt

    dbt.build(start, end, full_refresh=full_refresh, exclude=None if insights else dbt.INSIGHTS)


def refresh_insights(start: dt.datetime, end: dt.datetime, settings: Settings | None = None, *,
                     if_behind: bool = False) -> bool:
    """Rebuild the insight marts (trends, daily ledger, showback below the tenant) over a window,
    with their tests: the insights DAG after usage_hourly, billing_monthly before the invoices.

    With ``if_behind`` (the month close), only when they miss a change of the window
    (:func:`chargeback.platform.freshness.insight_marts_current`). Returns whether dbt ran."""
    from chargeback.engine import transform as dbt
    from chargeback.platform import freshness

    window = f"[{start.isoformat()}, {end.isoformat()})"
    if if_behind and freshness.insight_marts_current(start, end, settings):
        log.info("insight marts already hold every change of %s: not rebuilt", window)
        return False
    result = dbt.build(start, end, select=dbt.INSIGHTS)
    log.info("insight marts rebuilt over %s in %.1f s", window, result.seconds)
    return True


def refresh_insights_for_close(period: str, settings: Settings | None = None) -> bool:
    """Before a month's drafts or finals (billing_monthly, ``chargeback close``): its insight marts
    rebuilt when they miss a change of it (the invoices' appendix reads them); not for a month
    already final, whose invoices never change. Returns whether dbt ran."""
    from chargeback.billing import close

    if close.is_final(period, settings):
        return False
    return refresh_insights(*month_window(period), settings, if_behind=True)


def recommend_for_close(period: str, settings: Settings | None = None) -> int:
    """Before a month's final invoices: its recommendations priced and stored (the invoices' "ways to
    pay less" and the finance report read them); not for a month already final. Returns how many."""
    from chargeback.billing import close
    from chargeback.insights import recommend

    if close.is_final(period, settings):
        return 0
    return len(recommend.run(period, settings=settings))


def check_marts(start: dt.datetime | None, end: dt.datetime | None, settings: Settings | None = None) -> None:
    from chargeback.engine import checks

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
                     settings: Settings | None = None, *, restate: bool = True, insights: bool = True) -> int:
    """The whole hourly chain for one window, in-process — what ``usage_hourly`` runs, then
    (with ``insights``) the insight marts' refresh the insights DAG runs after it.

    With ``restate`` (an hourly run), the load window first grows back to the earliest
    restated past hour (:func:`plan_window`); dbt and the checks then run over the
    lookback :func:`publish_and_widen` returns.
    """
    apply_configuration(settings)
    plan = plan_window(start, end, settings) if restate else restatement.Plan(start, end, start)
    load_id = extract_and_stage(plan.load_start, plan.load_end, source, settings)
    gate(load_id, plan.load_start, plan.load_end, settings)
    dbt_start, dbt_end = publish_and_widen(load_id, plan, settings)
    transform(dbt_start, dbt_end, settings, insights=False)
    check_marts(dbt_start, dbt_end, settings)
    if insights:
        refresh_insights(dbt_start, dbt_end, settings)
    return load_id


# ---- quarantine ---------------------------------------------------------------------

def replay_quarantine(load_id: int | None = None, file: str | None = None, *, all_open: bool = False,
                      settings: Settings | None = None, rebuild_marts: bool = True,
                      ) -> quarantine.ReplayResult:
    """Load again the landed hours holding open quarantine rows, then rebuild their marts.

    Exactly one of ``load_id``, ``file`` and ``all_open`` chooses the rows. The
    configuration is applied first, so a tenant or meter added since is known. A gate
    failure stops the replay (``GateFailed``); hours replayed before it stay published.
    """
    if sum((load_id is not None, file is not None, all_open)) != 1:
        raise ValueError("choose what to replay: --load N, --file URL or --all")
    settings = settings or get_settings()
    warehouse.ensure_schema(settings)
    hours = quarantine.open_hours(load_id, file, settings)
    if not hours:
        return quarantine.ReplayResult()
    apply_configuration(settings)
    source = FileSource(settings.landing)
    windows = quarantine.windows_of(hours)
    load_ids: list[int] = []
    usage: list[dt.datetime] = []
    for start, end in windows:
        new_load = extract_and_stage(start, end, source, settings)
        gate(new_load, start, end, settings)
        published = load.publish(new_load, settings)
        load_ids.append(new_load)
        if published.usage_start is not None:
            usage += [published.usage_start, published.usage_end]
    usage_window = (min(usage), max(usage)) if usage else None
    if rebuild_marts and usage_window:
        transform(*usage_window, settings)
    with warehouse.connect(settings) as conn:
        loaded, still_open = conn.execute(
            """
            select (select count(*) from raw.usage_snapshots where load_id = any(%(ids)s)),
                   (select count(*) from raw.usage_quarantine where load_id = any(%(ids)s) and status = 'open')
            """,
            {"ids": load_ids},
        ).fetchone()
    result = quarantine.ReplayResult(tuple(windows), tuple(load_ids), loaded, still_open, usage_window)
    log.info("quarantine replay: %s", quarantine.summary(result))
    return result
