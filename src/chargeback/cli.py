"""The ``chargeback`` command: every stage by hand, and the demo.

Expected failures (bad input, bad configuration, a refusal, a failed gate, build or
check, a warehouse that cannot be reached) print one clear line — what, where, why,
what to do — and exit 1; a list of problems (a configuration with several mistakes)
prints a headline and one line per problem. A refusal's line is the one
``chargeback.platform.events`` records, printed once. Only a bug prints a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable

from chargeback import __version__


def _progress(label: str, total: int) -> Callable[[int], None]:
    """A one-line progress counter on stderr for long steps."""
    done = 0
    tty = sys.stderr.isatty()

    def step(n: int = 1) -> None:
        nonlocal done
        done += n
        if tty or done == total or done % max(1, total // 10) == 0:
            end = "\n" if done >= total else ("\r" if tty else "\n")
            sys.stderr.write(f"{label}: {done}/{total}{end}")
            sys.stderr.flush()

    return step


def _window(args: argparse.Namespace) -> tuple[dt.datetime, dt.datetime]:
    from chargeback.orchestration import steps

    if getattr(args, "month", None):
        return steps.month_window(args.month)
    if args.start and args.end:
        return steps.resolve_window({"start": args.start, "end": args.end}, None, None)
    raise ValueError("give a window: --month YYYY-MM, or --start and --end (ISO-8601 UTC)")


DEMO_SOURCES = 6
"""Sources per tenant in ``chargeback demo``: enough for a long tail on the invoices' appendix."""


def _hours(start: dt.datetime, end: dt.datetime) -> int:
    return max(0, int((end - start).total_seconds() // 3600))


def _last_closed_month(now: dt.datetime | None = None) -> str:
    """The latest month whose grace period has ended by ``now``: the demo can issue its invoices."""
    from chargeback.billing.close import grace_period_end

    now = now or dt.datetime.now(dt.UTC)
    month = (now.date().replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    while grace_period_end(f"{month:%Y-%m}") > now:
        month = (month - dt.timedelta(days=1)).replace(day=1)
    return f"{month:%Y-%m}"


def cmd_warehouse(args: argparse.Namespace) -> int:
    from chargeback.platform import warehouse

    if args.action == "start":
        warehouse.ensure_schema()
        print(warehouse.dsn())
    elif args.action == "migrate":  # as the owner: once per release, before the pipeline runs
        warehouse.ensure_schema()
        print("warehouse schema applied and its protective triggers checked")
    elif args.action == "dsn":
        print(warehouse.dsn())
    elif args.action == "env":  # for dbt and sqlfluff by hand: eval "$(chargeback warehouse env)"
        for key, value in warehouse.dbt_env().items():
            print(f"export {key}={shlex.quote(value)}")
    elif args.action == "stop":
        print("stopped" if warehouse.stop_embedded() else "no embedded warehouse was running")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from chargeback.engine import configuration

    cfg = configuration.read() if args.action == "check" else configuration.load()
    from chargeback.insights import budget_config

    budgets = budget_config.read(cfg=cfg)  # budgets.yml too (applied by `chargeback budgets check`)
    print(f"configuration ok: {len(cfg.tenants)} tenants, {len(cfg.meters)} meters, "
          f"{len(cfg.cost_pools)} cost pools, {len(cfg.price_books)} price books, {len(budgets)} budget versions"
          + ("" if args.action == "check" else " — applied to the warehouse"))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from chargeback.engine import configuration
    from chargeback.ingest.simulate import simulate
    from chargeback.platform.settings import get_settings

    settings = get_settings()
    start, end = _window(args)
    ids = configuration.read().tenant_ids
    if args.tenants > len(ids):
        raise ValueError(f"--tenants {args.tenants}: the configuration has only {len(ids)} tenants "
                         f"(config/tenants.yml)")
    landing = args.landing or settings.landing
    hours = int((end - start).total_seconds() // 3600)
    rows = simulate(landing, ids[: args.tenants], start, end, seed=args.seed, fmt=args.format,
                    sources=args.sources, progress=_progress("simulating hours", hours))
    print(f"wrote {rows:,} snapshots for {args.tenants} tenants, {hours} hours, to {landing}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from chargeback.orchestration import steps

    start, end = _window(args)
    source = steps.make_source(args.source, tenants=args.tenants, seed=args.seed)
    step = None

    def progress(done: int, total: int) -> None:
        nonlocal step
        step = step or _progress("staging files", total)
        step(1)

    load_id = steps.load_window(start, end, source, progress=progress)
    from chargeback.ingest import accounting

    result = accounting.outcome(load_id)
    print(f"load {load_id}: [{start.isoformat()}, {end.isoformat()}) staged, gated and published")
    for line in result.lines():
        print(line)
    return 1 if result.held else 0  # a producer held back needs a person; the others are published


def cmd_quarantine(args: argparse.Namespace) -> int:
    from chargeback.ingest import quarantine

    if args.action == "list":
        rows = quarantine.list_rows(args.status, args.load, args.file)
        for row in rows:
            print(row.line)
        if not rows:
            print("no quarantined rows match", file=sys.stderr)
        return 0
    from chargeback.orchestration import steps

    if args.status is not None:
        raise ValueError("quarantine replay takes --load N, --file URL or --all (it replays open rows)")
    result = steps.replay_quarantine(args.load, args.file, all_open=args.all)
    print(quarantine.summary(result))
    return 0


def cmd_transform(args: argparse.Namespace) -> int:
    from chargeback.orchestration import steps

    start, end = _window(args) if (args.month or args.start) else (None, None)
    if args.full_refresh and start is not None:
        raise ValueError("--full-refresh rebuilds every mart from raw: give no --month, --start or --end")
    steps.transform(start, end, full_refresh=args.full_refresh)
    steps.check_marts(start, end)
    print("dbt build and mart checks passed")
    return 0


def cmd_invoices(args: argparse.Namespace) -> int:
    from chargeback.billing import close

    if not args.period:
        raise ValueError("chargeback invoices needs --period YYYY-MM (or: chargeback invoices verify)")
    records = close.render_drafts(args.period, workers=args.workers)
    print(f"rendered {len(records)} draft invoices for {args.period} (numbered when the month closes: "
          f"chargeback close --period {args.period})")
    return 0


def cmd_invoices_verify(args: argparse.Namespace) -> int:
    from chargeback.billing import invoices

    checked = invoices.verify_documents(args.period)
    print(f"{checked.documents} issued documents{' of ' + args.period if args.period else ''}: every PDF matches "
          f"its sha256; {checked.with_lines} embed lines equal to the warehouse's frozen lines"
          + (f"; {len(checked.without_lines)} issued before documents embedded their lines (sha256 only): "
             f"{', '.join(checked.without_lines)}" if checked.without_lines else ""))
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    from chargeback.billing import close

    if bool(args.override_incomplete) != bool(args.by):
        raise ValueError("--override-incomplete REASON and --by NAME go together")
    from chargeback.orchestration import steps

    if not close.is_final(args.period):
        close.require_usage(args.period)  # a month never loaded is refused before the marts are read
    steps.refresh_insights_for_close(args.period)  # the invoices' appendix reads the insight marts
    steps.recommend_for_close(args.period)  # and their "ways to pay less"
    result = close.close_month(args.period, as_of=args.as_of, override_reason=args.override_incomplete,
                               override_by=args.by, workers=args.workers)
    print(result.summary())
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from chargeback.billing import summary

    print(summary.render(summary.month_summary(args.period)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from chargeback.insights import status
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        print(status.render(status.collect(conn)))
    return 0


def cmd_report_finance(args: argparse.Namespace) -> int:
    """The finance report PDF of a month (docs/INSIGHTS.md, "The finance report")."""
    from chargeback.insights import finance_report

    print(finance_report.write_report(args.month, out=args.out).summary())
    return 0


def cmd_budgets(args: argparse.Namespace) -> int:
    """Evaluate the budgets of a month and deliver what fires (check), or print their state (list)."""
    from chargeback.insights import budgets

    month = args.month or str(budgets.latest_month())
    if args.budgets_action == "check":
        outcome = budgets.check(month)
        fired = len({(budget, line) for budget, _, line in outcome.fired})
        print(f"budgets of {month}: {len(outcome.evaluations)} evaluated, {len(outcome.fired)} threshold(s) fired"
              f" in {fired} alert(s), {outcome.delivered} alert(s) delivered")
        for failure in outcome.failures:
            print(f"chargeback budgets: {failure}", file=sys.stderr)
    print(budgets.render_status(month, budgets.status(month)))
    return 0


def cmd_anomalies(args: argparse.Namespace) -> int:
    """Detect anomalies over complete days (detect), print them (list), or move one along its
    lifecycle (ack, resolve) — docs/INSIGHTS.md, "Anomalies"."""
    from chargeback.insights import anomalies

    if args.anomalies_action == "detect":
        first = dt.date.fromisoformat(args.start) if args.start else None
        last = dt.date.fromisoformat(args.end) if args.end else first
        outcome = anomalies.run(first, last, today=args.today)
        print(f"anomalies: {outcome.findings} day(s) out of line, {len(outcome.raised)} new anomal"
              f"{'y' if len(outcome.raised) == 1 else 'ies'}, {outcome.extended} day(s) extending one,"
              f" {outcome.updated} already known; {outcome.delivered} delivered")
        for failure in outcome.failures:
            print(f"chargeback anomalies: {failure}", file=sys.stderr)
        return 0
    if args.anomalies_action in ("ack", "resolve"):
        if args.id is None or not args.by or not args.reason:
            raise ValueError(f"chargeback anomalies {args.anomalies_action} needs an id, --by and --reason")
        if args.anomalies_action == "ack":
            if not args.kind:
                raise ValueError("chargeback anomalies ack needs --as expected|planned|problem")
            anomalies.acknowledge(args.id, args.kind, args.by, args.reason)
        else:
            anomalies.resolve(args.id, args.by, args.reason)
        print(anomalies.render([r for r in anomalies.listing("all") if r["anomaly_id"] == args.id], "all"))
        return 0
    print(anomalies.render(anomalies.listing(args.status, args.tenant), args.status))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard in the foreground (docs/DASHBOARD.md)."""
    from chargeback.dashboard import server

    print(f"chargeback dashboard: {server.url(args.port, args.address)} (Ctrl-C stops it; sign in with a user of"
          " `chargeback users add`)", flush=True)
    return server.serve(args.port, args.address)


def _password(from_stdin: bool, prompt: str) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass(prompt)


def cmd_users(args: argparse.Namespace) -> int:
    """Dashboard users (docs/ACCESS.md): their scope is enforced by the database's row-level security."""
    from chargeback.platform import access

    if args.users_action == "list":
        for name, role, scopes, disabled in access.list_users():
            print(f"{name:<20} {role:<9} {scopes}{'  (removed)' if disabled else ''}")
        return 0
    if not args.name:
        raise ValueError(f"chargeback users {args.users_action} needs a user name")
    if args.users_action == "remove":
        if not access.remove_user(args.name):
            raise ValueError(f"no dashboard user {args.name!r}")
        print(f"chargeback users: {args.name} removed: its role sees nothing any more")
        return 0
    if not args.role:
        raise ValueError("chargeback users add needs --role finance|engineer|tenant")
    scopes = [access.parse_scope(s) for s in args.scope]
    user = access.add_user(args.name, args.role, scopes, _password(args.password_stdin, f"password for {args.name}: "))
    print(f"chargeback users: {user.name} ({user.role}, {', '.join(map(str, scopes)) or 'all'}) can sign in;"
          f" its queries run as the role {user.db_role}")
    return 0


def cmd_bi(args: argparse.Namespace) -> int:
    """A BI tool's login role, scoped by row-level security (docs/ACCESS.md)."""
    from chargeback.platform import access

    if args.bi_action == "revoke":
        access.revoke_bi(args.login)
        print(f"chargeback bi: {args.login} sees nothing in this warehouse any more")
        return 0
    scopes = [access.parse_scope(s) for s in args.scope]
    password = _password(args.password_stdin, f"password for {args.login}: ") if args.password_stdin else None
    access.grant_bi(args.login, scopes, password, personal_data=args.personal_data)
    print(f"chargeback bi: {args.login} reads the marts of {', '.join(map(str, scopes))}, read-only"
          f"{', billing e-mails included' if args.personal_data else ''}")
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    """The tenant's month re-priced with changes, old and new invoice line by line (docs/INSIGHTS.md)."""
    from chargeback.insights import whatif
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        print(whatif.render(whatif.whatif(conn, args.period, args.tenant, args.set or [])))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """Recommendations of a month, each priced by re-pricing the month (compute and store), or accept
    or dismiss one (docs/INSIGHTS.md, "Recommendations")."""
    from chargeback.insights import recommend

    if args.recommend_action in ("accept", "dismiss"):
        if args.id is None or not args.by or not args.reason:
            raise ValueError(f"chargeback recommend {args.recommend_action} needs an id, --by and --reason")
        recommend.set_status(args.id, f"{args.recommend_action}ed", args.by, args.reason)
        print(f"recommendation {args.id} {args.recommend_action}ed by {args.by}")
        return 0
    if not args.period:
        raise ValueError("chargeback recommend needs --period YYYY-MM (the month to re-price)")
    print(recommend.render(recommend.run(args.period, args.tenant), args.period))
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    """Month-end forecasts (docs/INSIGHTS.md, "Forecasts"): compute, store and print them, or
    replay past months (backtest)."""
    from chargeback.engine import repricing
    from chargeback.insights import backtest, forecast
    from chargeback.platform import warehouse
    from chargeback.platform.periods import Period, parse_instant

    with warehouse.connect() as conn:
        if args.forecast_action == "backtest":
            months = [Period.parse(m).first_day for m in (args.months or "").split(",") if m]
            if not months:
                last = conn.execute("select max(invoice_month) from marts.fct_invoices").fetchone()[0]
                if last is None:
                    raise ValueError("no invoiced month to replay: give --months YYYY-MM[,YYYY-MM...]")
                months = [last]
            print(backtest.render_backtest(backtest.backtest(conn, months)))
            return 0
        as_of = parse_instant(args.as_of) if args.as_of else None
        if args.month:
            month = Period.parse(args.month).first_day
        else:
            through = forecast.usage_through(conn, as_of)
            if through is None:
                raise ValueError("no usage in the marts to forecast from")
            month = forecast.month_of(through - dt.timedelta(hours=1))
        rows = forecast.forecast_month(conn, month, as_of)
        print(backtest.render_forecast(rows, repricing.load_catalog(conn)))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """A month's usage per tenant and meter as Chargeback knew it at --as-of (default: now)."""
    from chargeback.ingest import restatement

    rows = restatement.usage_as_of(args.period, args.as_of)
    if not rows:
        print(f"no usage in {args.period}")
        return 0
    header = ["tenant", "meter", "unit", "quantity", "snapshots"]
    if args.as_of:
        header += ["learned later", "quantity now"]
    table = [header]
    for r in rows:
        cells = [r.tenant_id, r.meter, r.unit, f"{r.quantity.normalize():f}", str(r.snapshots)]
        if args.as_of:
            cells += [str(r.snapshots_now - r.snapshots), f"{r.quantity_now.normalize():f}"]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"usage of {args.period}" + (f" as known at {args.as_of}" if args.as_of else ""))
    for row in table:
        print("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    return 0


def cmd_export_focus(args: argparse.Namespace) -> int:
    from chargeback.billing import focus

    result = focus.export(args.period, args.out, fmt=args.format)
    for path in result.files:
        print(f"wrote {path}: {result.rows} FOCUS {focus.FOCUS_VERSION} charges for {args.period}")
    if result.parquet_skipped:
        print(f"Parquet not written: {result.parquet_skipped}", file=sys.stderr)
    for path in result.files if args.validate else ():
        report = focus.validate(path)
        print(report.summary())
        if not report.ok:
            raise focus.FocusExportError(f"{path} fails FOCUS {focus.FOCUS_VERSION} validation\n{report.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate three months and the month to date, run usage_hourly over them, billing_monthly for the
    last closed month and insights for the month in progress, all through Airflow."""
    from chargeback.billing import summary
    from chargeback.engine import configuration, transform
    from chargeback.ingest.simulate import demo_injections, simulate
    from chargeback.insights import anomalies, budgets, recommend
    from chargeback.orchestration import runner, steps
    from chargeback.platform import warehouse
    from chargeback.platform.settings import get_settings

    settings = get_settings()
    period = args.period or _last_closed_month()
    month_start, month_end = steps.month_window(period)
    # history for the seasonal forecast (>= 90 days at the month in progress): the two months before
    # the billed one; usage up to the last complete hour (or the billed month's end, if later)
    start = (month_start - dt.timedelta(days=1)).replace(day=1)
    start = (start - dt.timedelta(days=1)).replace(day=1)
    end = max(month_end, dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0))
    if args.through:
        end = steps.parse_instant(args.through)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    say(f"warehouse: {warehouse.dsn()}")
    warehouse.ensure_schema()
    configuration.load()
    with warehouse.connect() as conn:
        built_before = conn.execute("select to_regclass('marts.fct_invoices') is not null").fetchone()[0]
    if built_before:
        # an earlier demo's marts may predate a change of their columns: rebuild them from raw
        say("dbt: full refresh of the marts an earlier run built (raw usage is kept)")
        transform.build(full_refresh=True)
    ids = configuration.read().tenant_ids[: args.tenants]
    # the history at tenant grain (what forecasts need), the billed month and the month to date with
    # sources and labels (what the showback marts and the invoices' appendix show): same tenant totals
    rows = simulate(settings.landing, ids, start, month_start, seed=args.seed,
                    progress=_progress("simulating history hours", _hours(start, month_start)))
    rows += simulate(settings.landing, ids, month_start, end, seed=args.seed, sources=args.sources,
                     injections=demo_injections(ids, month_start, args.seed),
                     progress=_progress("simulating hours with sources", _hours(month_start, end)))
    say(f"simulated {rows:,} snapshots: {len(ids)} tenants, {_hours(start, end)} hours from {start:%Y-%m-%d} "
        f"to {end:%Y-%m-%d %H:00} UTC ({args.sources} sources each from {month_start:%Y-%m-%d}) -> {settings.landing}")
    say("Airflow: usage_hourly over them (extract, stage, GX gate, publish, dbt models, mart checks)")
    runner.run_dag("usage_hourly", {"start": start.isoformat(), "end": end.isoformat(), "source": "files"},
                   quiet=not args.verbose)
    say("Airflow: insights over them (forecast of the month in progress, budgets and their alerts, anomalies)")
    runner.run_dag("insights", {"start": start.isoformat(), "end": end.isoformat()}, quiet=not args.verbose)
    say(f"Airflow: billing_monthly for {period} (mart checks, drafts, completeness, final invoices, "
        "corrections, finance report)")
    runner.run_dag("billing_monthly", {"period": period}, quiet=not args.verbose)
    out = settings.reports_out.rstrip("/")
    say(f"invoices: {out}/{period}/")
    print()
    print(summary.render(summary.month_summary(period)))
    print()
    current = budgets.latest_month(settings)
    for month in dict.fromkeys([period, str(current)]):  # the billed month's budgets, then this month's
        print(f"Budgets — {month}")
        print(budgets.render_status(month, budgets.status(month, settings)))
        print()
    found = anomalies.listing("open")
    first, last = month_start.date(), month_end.date()
    largest = sorted((r for r in found if first <= r["first_day"] < last),
                     key=lambda r: (-abs(r["actual"] - r["expected"]), r["anomaly_id"]))[:3]
    print(f"Anomalies — {len(found)} open (chargeback anomalies list explains each); the largest of {period}:")
    print(anomalies.render(largest, "open"))
    print()
    print(f"Recommendations — chargeback recommend --period {period} (each saving the month re-priced):")
    print("\n".join(recommend.render(recommend.listing(period, settings=settings), period).splitlines()[:7]))
    print()
    say(f"finance report: {out}/{period}/finance-report.pdf")
    say(f"forecast of {current}: chargeback forecast --month {current}; budgets: chargeback budgets list "
        f"--month {current}; pipeline: chargeback status")
    print()
    print(_demo_dashboard_users(configuration.read(), ids))
    say("done")
    return 0


def _demo_dashboard_users(cfg, ids: list[str]) -> str:
    """Three dashboard users with fresh passwords (finance, an engineer, the organisation of the
    first simulated tenant), and how to open the dashboard: the demo's last lines."""
    import secrets

    from chargeback.dashboard import server
    from chargeback.platform import access

    organisation = next(t.organisation for t in cfg.tenants if t.tenant_id == ids[0])
    users = [("finance", "finance", [], "every tenant, billing e-mails, invoices"),
             ("engineer", "engineer", [], "every tenant's usage, pipeline health"),
             ("tenant", "tenant", [access.Scope("organisation", organisation)], f"the tenants of {organisation} only")]
    lines = [f"Dashboard — make dashboard (or chargeback dashboard --port {server.DEFAULT_PORT}), then open"
             f" {server.url()} and sign in as:"]
    for name, role, scopes, sees in users:
        password = secrets.token_urlsafe(9)
        access.add_user(name, role, scopes, password)
        lines.append(f"  {name:<9} {password}   ({sees})")
    lines.append("  (passwords are new each demo; chargeback users add NAME --role … --scope … adds more)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chargeback", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"chargeback {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show pipeline logs")
    sub = p.add_subparsers(dest="command", required=True)

    def window_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--month", help="a whole month, YYYY-MM")
        sp.add_argument("--start", help="window start, ISO-8601 UTC (whole hour)")
        sp.add_argument("--end", help="window end (exclusive), ISO-8601 UTC (whole hour)")

    sp = sub.add_parser("warehouse", help="start the embedded warehouse, print its DSN or dbt's env, or stop it")
    sp.add_argument("action", choices=["start", "migrate", "dsn", "env", "stop"])
    sp.set_defaults(func=cmd_warehouse)

    sp = sub.add_parser("config", help="validate (check) or validate and apply the configuration")
    sp.add_argument("action", choices=["check", "apply"])
    sp.set_defaults(func=cmd_config)

    sp = sub.add_parser("simulate", help="write simulated snapshot files to the landing location")
    window_args(sp)
    sp.add_argument("--tenants", type=int, default=50)
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--format", choices=["mixed", "jsonl", "csv"], default="mixed")
    sp.add_argument("--sources", type=int, default=0,
                    help="log groups and query principals per tenant, with labels (default 0: tenant totals only;"
                         " the totals are the same either way)")
    sp.add_argument("--landing", help="landing location (default $CHARGEBACK_LANDING or ./landing)")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("load", help="extract, stage, gate and publish a window of snapshots")
    window_args(sp)
    sp.add_argument("--source", choices=["files", "simulator"], default=None)
    sp.add_argument("--tenants", type=int, default=None, help="simulator: first N tenants")
    sp.add_argument("--seed", type=int, default=42, help="simulator: seed")
    sp.set_defaults(func=cmd_load)

    sp = sub.add_parser("quarantine", help="list quarantined usage rows, or replay them after fixing the cause")
    sp.add_argument("action", choices=["list", "replay"])
    sp.add_argument("--status", choices=["open", "replayed", "superseded"], help="list: only rows in this status")
    sp.add_argument("--load", type=int, help="only rows of this load run")
    sp.add_argument("--file", help="only rows of this landed file (its URL, as listed)")
    sp.add_argument("--all", action="store_true", help="replay: every landed hour with open rows")
    sp.set_defaults(func=cmd_quarantine)

    sp = sub.add_parser("transform", help="dbt build (a window, or everything) and the mart checks")
    window_args(sp)
    sp.add_argument("--full-refresh", action="store_true",
                    help="drop and rebuild every mart from raw usage (after an upgrade changed a mart's columns)")
    sp.set_defaults(func=cmd_transform)

    sp = sub.add_parser("invoices", help="render a month's draft invoices; verify issued PDFs")
    sp.add_argument("--period", help="YYYY-MM")
    sp.add_argument("--workers", type=int, default=2)
    sp.set_defaults(func=cmd_invoices)
    actions = sp.add_subparsers(dest="invoices_action")
    verify = actions.add_parser("verify", help="re-hash every issued PDF against the recorded sha256 and check its "
                                "embedded lines against the warehouse's frozen lines")
    verify.add_argument("--period", help="YYYY-MM (default: every period)")
    verify.set_defaults(func=cmd_invoices_verify)

    sp = sub.add_parser("close", help="close a month: drafts during the grace period, then final invoices "
                        "and credit/debit notes (docs/MONTH_CLOSE.md)")
    sp.add_argument("--period", required=True, help="YYYY-MM")
    sp.add_argument("--as-of", help="ISO instant the grace period is judged at (default: now)")
    sp.add_argument("--override-incomplete", metavar="REASON",
                    help="close although hours of usage are missing; recorded and printed on the invoices")
    sp.add_argument("--by", metavar="NAME", help="who decides the override")
    sp.add_argument("--workers", type=int, default=2)
    sp.set_defaults(func=cmd_close)

    sp = sub.add_parser("report", help="write a report of a month")
    kinds = sp.add_subparsers(dest="report_kind", required=True)
    sp = kinds.add_parser("finance", help="the finance report PDF: both ledgers by organisation, business unit "
                          "and team, margin, idle and shared cost, 12-month trend, top movers, budgets "
                          "(docs/INSIGHTS.md)")
    sp.add_argument("--month", required=True, help="YYYY-MM")
    sp.add_argument("--out", help="PDF path or URL (default: <reports_out>/<YYYY-MM>/finance-report.pdf)")
    sp.set_defaults(func=cmd_report_finance)

    sp = sub.add_parser("forecast", help="month-end forecasts per tenant (P10/P50/P90 of the billed amount), "
                        "stored in insights.forecasts; backtest: replay past months (docs/INSIGHTS.md)")
    sp.add_argument("forecast_action", nargs="?", choices=["backtest"], help="replay past months instead")
    sp.add_argument("--month", help="YYYY-MM (default: the month of the last usage in the marts)")
    sp.add_argument("--as-of", help="ISO instant: use only usage of the hours before it (default: all)")
    sp.add_argument("--months", help="backtest: YYYY-MM[,YYYY-MM...] (default: the last invoiced month)")
    sp.set_defaults(func=cmd_forecast)

    sp = sub.add_parser("summary", help="print the finance summary of a month")
    sp.add_argument("--period", required=True, help="YYYY-MM")
    sp.set_defaults(func=cmd_summary)

    sp = sub.add_parser("status", help="one screen: usage through, marts' last builds, last runs, open "
                                       "quarantine and holds, drafts waiting for the grace period, budget alerts")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("budgets", help="evaluate budgets and send their alerts once (check), or print their "
                        "state (list) (docs/INSIGHTS.md)")
    sp.add_argument("budgets_action", choices=["check", "list"])
    sp.add_argument("--month", help="YYYY-MM (default: the month of the last usage in the marts)")
    sp.set_defaults(func=cmd_budgets)

    sp = sub.add_parser("anomalies", help="detect anomalies on complete days (detect), print them with their "
                        "explanation (list), acknowledge or resolve one (docs/INSIGHTS.md)")
    sp.add_argument("anomalies_action", choices=["detect", "list", "ack", "resolve"])
    sp.add_argument("id", nargs="?", type=int, help="the anomaly (ack, resolve)")
    sp.add_argument("--start", help="detect: first UTC day, YYYY-MM-DD (default: the last complete day)")
    sp.add_argument("--end", help="detect: last UTC day (default: --start)")
    sp.add_argument("--today", action="store_true", help="detect: the day in progress too, by the hour so far")
    sp.add_argument("--status", default="open", choices=["open", "acknowledged", "resolved", "all"])
    sp.add_argument("--tenant", help="list: one tenant's")
    sp.add_argument("--as", dest="kind", choices=["expected", "planned", "problem"], help="ack: what it is")
    sp.add_argument("--by", help="ack, resolve: who")
    sp.add_argument("--reason", help="ack, resolve: why")
    sp.set_defaults(func=cmd_anomalies)

    sp = sub.add_parser("whatif", help="re-price a tenant's month with changes; old and new invoice line by line "
                        "(docs/INSIGHTS.md)")
    sp.add_argument("--period", required=True, help="YYYY-MM")
    sp.add_argument("--tenant", required=True)
    sp.add_argument("--set", action="append", metavar="CHANGE",
                    help="retention:<source>=<N>d, retention=<N>d, drop:<source>, sample:<source>=<f>,"
                         " scans:<source>=<f>, commitment=<amount>, price_book=<book> (repeatable)")
    sp.set_defaults(func=cmd_whatif)

    sp = sub.add_parser("recommend", help="recommendations of a month with their savings (each the month re-priced "
                        "with the change), or accept/dismiss one (docs/INSIGHTS.md)")
    sp.add_argument("recommend_action", nargs="?", choices=["accept", "dismiss"])
    sp.add_argument("id", nargs="?", type=int, help="the recommendation (accept, dismiss)")
    sp.add_argument("--period", help="YYYY-MM: the month re-priced (the tenants' last full month)")
    sp.add_argument("--tenant", help="one tenant's")
    sp.add_argument("--by", help="accept, dismiss: who")
    sp.add_argument("--reason", help="accept, dismiss: why")
    sp.set_defaults(func=cmd_recommend)

    sp = sub.add_parser("usage", help="a month's usage per tenant and meter, as known at an instant "
                        "(explain a past invoice as it stood on its issue day)")
    sp.add_argument("--period", required=True, help="YYYY-MM")
    sp.add_argument("--as-of", help="count only snapshots learned at or before this ISO-8601 instant"
                    " (default: now)")
    sp.set_defaults(func=cmd_usage)

    sp = sub.add_parser("export", help="export a month in an exchange format")
    formats = sp.add_subparsers(dest="export_format", required=True)
    sp = formats.add_parser("focus", help="FinOps FOCUS 1.2 CSV (and Parquet) of a month's billed and "
                            "allocated charges (docs/FOCUS.md)")
    sp.add_argument("--period", required=True, help="YYYY-MM")
    sp.add_argument("--out", required=True, help="CSV file; the Parquet goes next to it (FILE.parquet)")
    sp.add_argument("--format", choices=["both", "csv", "parquet"], default="both",
                    help="both (default), csv, or parquet (written to --out)")
    sp.add_argument("--validate", action="store_true",
                    help="run the FinOps focus-validator on the files (make focus-validator)")
    sp.set_defaults(func=cmd_export_focus)

    sp = sub.add_parser("dashboard", help="serve the dashboard (docs/DASHBOARD.md) until interrupted")
    sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--address", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    sp.set_defaults(func=cmd_dashboard)

    sp = sub.add_parser("users", help="dashboard users: add (or change) one, list them, remove one (docs/ACCESS.md)")
    sp.add_argument("users_action", choices=["add", "list", "remove"])
    sp.add_argument("name", nargs="?")
    sp.add_argument("--role", choices=["finance", "engineer", "tenant"], help="add: what the user may open")
    sp.add_argument("--scope", action="append", default=[],
                    help="add: all, org:NAME, bu:NAME, team:NAME or tenant:ID (repeatable; finance and engineers:"
                         " all by default)")
    sp.add_argument("--password-stdin", action="store_true", help="add: read the password from stdin")
    sp.set_defaults(func=cmd_users)

    sp = sub.add_parser("bi", help="a read-only login for Metabase, Superset or psql that sees only its scope")
    sp.add_argument("bi_action", choices=["grant", "revoke"])
    sp.add_argument("login")
    sp.add_argument("--scope", action="append", default=[], help="grant: all, org:NAME, bu:NAME, team:NAME or"
                    " tenant:ID (repeatable)")
    sp.add_argument("--password-stdin", action="store_true", help="grant: read the login's password from stdin")
    sp.add_argument("--personal-data", action="store_true", help="grant: may read billing e-mails (finance)")
    sp.set_defaults(func=cmd_bi)

    sp = sub.add_parser("demo", help="simulate three months and the month to date, run the DAGs through Airflow")
    sp.add_argument("--tenants", type=int, default=50)
    sp.add_argument("--period", help="the month to bill, YYYY-MM (default: the last closed month)")
    sp.add_argument("--through", help="simulate usage up to this instant (default: the last complete hour)")
    sp.add_argument("--sources", type=int, default=DEMO_SOURCES,
                    help=f"log groups and query principals per tenant (default {DEMO_SOURCES}; 0: none)")
    sp.add_argument("--seed", type=int, default=42)
    sp.set_defaults(func=cmd_demo)
    return p


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can act on. Evaluated only when something was raised, so the
    heavier imports (WeasyPrint via invoices) cost nothing on the success path."""
    import psycopg

    from chargeback.billing.document import InvoiceError
    from chargeback.billing.focus import FocusExportError
    from chargeback.engine.configuration import ConfigError
    from chargeback.engine.transform import TransformError
    from chargeback.ingest.load import LoadError
    from chargeback.ingest.readers import StorageError
    from chargeback.ingest.simulate import SimulationRefused
    from chargeback.orchestration.runner import AirflowRunFailed
    from chargeback.platform.freshness import StaleMarts
    from chargeback.platform.validation import ValidationError
    from chargeback.platform.warehouse import WarehouseError

    return (ConfigError, LoadError, ValidationError, TransformError, InvoiceError, StaleMarts,
            AirflowRunFailed, WarehouseError, FocusExportError, ValueError, psycopg.OperationalError,
            psycopg.errors.UndefinedTable, SimulationRefused, StorageError)


class _EventLines(logging.Handler):
    """Prints the lines of ``chargeback.platform.events`` (a refusal, a quarantine) as they
    are — they are written for the user — and remembers them, so the exception that
    follows a refusal does not print the same line again."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.shown: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.shown.add(line)
        print(line, file=sys.stderr, flush=True)


def _failure_lines(command: str, exc: BaseException, shown: set[str]) -> list[str]:
    """What an expected failure prints: its lines not printed already, the first prefixed
    with the command unless it is an event line (``chargeback refusal: …``)."""
    import psycopg

    from chargeback.platform.warehouse import WarehouseError

    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, psycopg.errors.UndefinedTable):
        text = (f"the marts are missing ({exc.diag.message_primary}) — build them first"
                " (chargeback transform)")
    elif isinstance(exc, WarehouseError | psycopg.OperationalError):
        text = " ".join(text.split())  # libpq's reason spans lines
        if "warehouse" not in text:
            text = f"cannot connect to the warehouse: {text}"
        text += " — start it (chargeback warehouse start) or fix WAREHOUSE_DSN"
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if lines[0] in shown:  # a refusal: its one line says what, why and what to do
        return []
    first = lines[0] if lines[0].startswith("chargeback ") else f"chargeback {command}: error: {lines[0]}"
    return [first, *(line for line in lines[1:] if line not in shown)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    events_log = logging.getLogger("chargeback.platform.events")
    lines = _EventLines(logging.INFO if args.verbose else logging.WARNING)
    propagate = events_log.propagate
    events_log.addHandler(lines)
    events_log.propagate = False
    try:
        return args.func(args)
    except _expected_errors() as exc:
        for line in _failure_lines(args.command, exc, lines.shown):
            print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        events_log.removeHandler(lines)
        events_log.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
