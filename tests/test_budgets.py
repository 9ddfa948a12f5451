"""Budgets and budget alerts (docs/INSIGHTS.md, "Budgets and alerts").

``config/budgets.yml`` is validated with file, budget and field in every message (pure tests).
Against the warehouse: the worked example's tenants (globex and initech moved into one
organisation, Umbrella) with the example's hourly usage for the first ten days of September 2026,
built by dbt; budgets evaluated to the cent, thresholds that fire once across replays and a
restatement, to a real SMTP server (aiosmtpd) and a real HTTP receiver, a failed channel retried
without sending the others twice, the pace rule and the forecast threshold.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import yaml

from chargeback.engine import configuration, transform
from chargeback.engine.config_schema import ConfigError
from chargeback.insights import budget_config, budgets
from chargeback.platform import warehouse
from conftest import alert_environ

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worked_example"
START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
THROUGH = dt.datetime(2026, 9, 11, tzinfo=dt.UTC)  # ten days of thirty: 33.33 % of the month
D = Decimal
UNITS = {"ingested_gb": "GB", "stored_gb": "GB", "scanned_gb": "GB", "query_cpu_seconds": "s", "alerts_fired": "alerts"}


def _config_dir(folder: Path, budgets_yml: str | None = None) -> Path:
    """The worked example's configuration, globex and initech in organisation Umbrella, and ``budgets_yml``."""
    shutil.copytree(EXAMPLE / "config", folder, dirs_exist_ok=True)
    tenants = yaml.safe_load((folder / "tenants.yml").read_text())
    for t in tenants["tenants"]:
        if t["tenant_id"] in ("globex", "initech"):
            t["organisation"] = "Umbrella"
    (folder / "tenants.yml").write_text(yaml.safe_dump(tenants, sort_keys=False))
    if budgets_yml is not None:
        (folder / "budgets.yml").write_text(budgets_yml)
    return folder


def _problems(folder: Path, text: str) -> list[str]:
    _config_dir(folder, text)
    with pytest.raises(ConfigError) as info:
        budget_config.read(folder)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid configuration:"
    return [line.removeprefix(f"{folder / 'budgets.yml'}: ") for line in lines[1:]]


# --------------------------------------------------------------------------- the file (pure)

def test_every_problem_names_the_file_the_budget_and_the_field(tmp_path):
    text = """
budgets:
  - budget: umbrella
    scope: {organisation: Umbrella}
    amount: 1000.5
    currency: USD
    valid_from: 2026-01-01
  - budget: bad-scope
    scope: {organisation: Umbrella, team: payments}
    amount: "10.00"
    currency: usd
    valid_from: 2026-01-15
  - budget: noisy
    scope: {tenant: acme}
    amount: "10.00"
    currency: USD
    valid_from: 2026-01-01
    thresholds: {actual: ["80", "80"], forecast: ["0"], pace: "120"}
    recipients: {email: ["finance at acme"], webhook: "https://hooks.example/x"}
"""
    assert _problems(tmp_path, text) == [
        'budgets budget umbrella (from 2026-01-01), field amount: write amounts as text ("1000.5"), not as a YAML'
        " number: it would lose cents",
        "budgets budget bad-scope (from 2026-01-15), field scope: a scope is one of: {organisation}, {organisation,"
        " business_unit}, {organisation, business_unit, team}, {tenant}, {tenant, source} or {label, value}; got"
        " {organisation, team}",
        "budgets budget bad-scope (from 2026-01-15), field currency: String should match pattern '^[A-Z]{3}$'",
        "budgets budget noisy (from 2026-01-01), field thresholds.actual: a threshold is listed twice: 80, 80",
        "budgets budget noisy (from 2026-01-01), field thresholds.forecast: a threshold is a percentage of the"
        " budget above 0 and at most 1000, not 0",
        "budgets budget noisy (from 2026-01-01), field thresholds.pace: Input should be less than or equal to 100",
        "budgets budget noisy (from 2026-01-01), field recipients.email: not an e-mail address: 'finance at acme'",
        "budgets budget noisy (from 2026-01-01), field recipients.webhook: String should match pattern"
        " '^[a-z][a-z0-9_]{0,39}$'",
    ]


def test_scopes_must_exist_and_versions_must_not_overlap(tmp_path):
    text = """
budgets:
  - {budget: a, scope: {organisation: Umbrela}, amount: "1.00", currency: USD, valid_from: 2026-01-01}
  - {budget: b, scope: {organisation: Umbrella, business_unit: Products}, amount: "1.00", currency: USD,
     valid_from: 2026-01-01}
  - {budget: c, scope: {organisation: Acme, business_unit: Products, team: payments}, amount: "1.00",
     currency: USD, valid_from: 2026-01-01}
  - {budget: d, scope: {tenant: hooli, source: app-logs}, amount: "1.00", currency: USD, valid_from: 2026-01-01}
  - {budget: e, scope: {tenant: acme}, amount: "1.00", currency: USD, valid_from: 2026-01-01}
  - {budget: e, scope: {tenant: acme}, amount: "2.00", currency: USD, valid_from: 2026-06-01, valid_to: 2026-09-01}
  - {budget: f, scope: {tenant: acme}, amount: "2.00", currency: USD, valid_from: 2026-06-15}
"""
    assert _problems(tmp_path, text) == [
        "budgets budget f (from 2026-06-15), field (entry): a budget starts on the first day of a month, not"
        " 2026-06-15",
        "budgets budget a (from 2026-01-01), field scope.organisation: no tenant of tenants.yml is in organisation"
        " 'Umbrela'",
        "budgets budget b (from 2026-01-01), field scope.business_unit: no tenant of tenants.yml is in business unit"
        " 'Products' of Umbrella",
        "budgets budget c (from 2026-01-01), field scope.team: no tenant of tenants.yml is in team 'payments' of"
        " Acme / Products",
        "budgets budget d (from 2026-01-01), field scope.tenant: tenant 'hooli' is not in tenants.yml",
        "budgets budget e: the version from 2026-01-01 (open-ended) overlaps the version from 2026-06-01",
    ]


def test_defaults_fill_what_a_budget_leaves_out(tmp_path):
    _config_dir(tmp_path, """
defaults:
  ledger: cost
  thresholds: {actual: ["90"]}
  recipients: {webhook: finance}
budgets:
  - {budget: silent, scope: {organisation: Umbrella}, amount: "100.00", currency: USD, valid_from: 2026-01-01}
  - budget: own
    scope: {tenant: acme}
    ledger: billed
    amount: "100.00"
    currency: USD
    valid_from: 2026-01-01
    valid_to: 2026-10-01
    thresholds: {actual: [], forecast: ["120", "100"], pace: null}
    recipients: {email: [finance@acme.example]}
""")
    silent, own = budget_config.read(tmp_path)
    assert (silent.level, silent.scope.key, silent.ledger, silent.actual, silent.forecast, silent.pace,
            silent.email, silent.webhook) == ("organisation", "Umbrella", "cost", (D(90),), (D(100),), D(20), None,
                                              "finance")
    assert (own.level, own.ledger, own.actual, own.forecast, own.pace, own.email, own.webhook) == (
        "tenant", "billed", (), (D(100), D(120)), None, ("finance@acme.example",), None)
    assert own.in_force(dt.date(2026, 9, 1))
    assert not own.in_force(dt.date(2026, 10, 1))
    (tmp_path / "budgets.yml").unlink()
    assert budget_config.read(tmp_path) == []  # no file: no budgets


def test_the_shipped_budgets_are_valid():
    shipped = budget_config.read()
    assert {b.budget for b in shipped} >= {"globex", "acme-retail-cost", "t026"}


def test_the_predicted_breach_date_follows_the_p50_path():
    end = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    # 40 of 100 used after 10 days, P50 160: the remaining 120 accrue over 20 days, 60 more take 10
    assert budgets.breach_date(D(100), D(40), D(160), THROUGH, end) == dt.date(2026, 9, 21)
    assert budgets.breach_date(D(100), D(40), D(100), THROUGH, end) is None  # P50 at the budget: not above it
    assert budgets.breach_date(D(100), D(40), None, THROUGH, end) is None
    assert budgets.breach_date(D(100), D(99), D(1000), THROUGH, end) == dt.date(2026, 9, 11)


def test_an_alert_line_escapes_and_bounds_tenant_text(tmp_path):
    _config_dir(tmp_path, """
budgets:
  - {budget: src, scope: {tenant: acme, source: "app"}, amount: "100.00", currency: USD, valid_from: 2026-01-01}
""")
    [b] = budget_config.read(tmp_path)
    hostile = "log\x1b[31m\u202e <!channel> <https://evil.example|fix> " + "x" * 500
    e = budgets.Evaluation(b, dt.date(2026, 9, 1), "over", THROUGH, D("120.00"), D("33.33"),
                           contributors=(budgets.Contributor(hostile, D("120.00")),),
                           crossed=(("actual:100", "actual", D(100)),))
    line = budgets.alert_event(e, list(e.crossed)).bounded_line(budgets.LINE_PART_LIMIT)
    assert line.startswith("chargeback notice: budget src (source acme / app, billed) at 2026-09, usage through"
                           " 2026-09-11T00:00Z: reached 100 % of the budget: 120.00 USD of 100.00 USD (120 %)"
                           " used with 33.33 % of the month elapsed; forecast: none yet; over budget — biggest items:"
                           " log\\x1b[31m\\u202e <!channel> <https://evil.example|fix> xxx")
    assert line.endswith("|fix> xxx… 120.00 USD (chargeback budgets list --month 2026-09)")  # the name cut at 60
    assert not any(ord(c) < 32 or c == "\u202e" for c in line)


# --------------------------------------------------------------------------- the warehouse

@pytest.fixture(scope="module")
def ten_days(test_warehouse, tmp_path_factory) -> Iterator[Path]:
    """The example's usage for 1–10 September in a database of its own; yields its config folder."""
    name = f"{os.environ['CHARGEBACK_DATABASE']}_budgets"
    folder = _config_dir(tmp_path_factory.mktemp("budgets-config"))
    warehouse.drop_database(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_DATABASE", name)
        patch.setenv("CHARGEBACK_CONFIG_DIR", str(folder))
        warehouse.ensure_schema()
        configuration.load()
        _publish_example(START, THROUGH)
        transform.build(START, THROUGH)
        yield folder


def _publish_example(start: dt.datetime, end: dt.datetime) -> None:
    """The worked example's hourly usage of ``[start, end)`` straight into raw.usage_snapshots."""
    spec = yaml.safe_load((EXAMPLE / "usage.yml").read_text())["hourly_usage"]
    with warehouse.connect() as conn, conn.cursor() as cur, cur.copy(
            "copy raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at, kind,"
            " source_file, source_line, load_id) from stdin") as copy:
        hour = start
        while hour < end:
            for tenant, meters in spec.items():
                for meter, value in meters.items():
                    copy.write_row((f"example/{tenant}/{meter}/{hour:%Y%m%d%H}", tenant, meter, str(value),
                                    UNITS[meter], hour, hour + dt.timedelta(minutes=5),
                                    "gauge" if meter == "stored_gb" else "counter", "example", 1, 0))
            hour += dt.timedelta(hours=1)


def _budgets(folder: Path, text: str) -> None:
    (folder / "budgets.yml").write_text(text)


def _alerts(*budget_ids: str) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(
            "select budget_id, threshold, actual, used_percent, elapsed_percent, forecast_p50, breach_date,"
            " usage_through, channels_pending, delivery_attempts, delivered_at is not null from insights.budget_alerts"
            " where budget_id = any(%s) order by alert_id", (list(budget_ids),)).fetchall()


def _event_lines(budget_id: str) -> list[str]:
    with warehouse.connect() as conn:
        return [r[0] for r in conn.execute(
            "select line from pipeline.events where kind = 'notice' and details->>'budget' = %s order by event_id",
            (budget_id,)).fetchall()]


@pytest.mark.warehouse
def test_actuals_contributors_and_states_to_the_cent(ten_days):
    _budgets(ten_days, """
budgets:
  - {budget: umbrella-billed, scope: {organisation: Umbrella}, amount: "10000.00", currency: USD,
     valid_from: 2026-01-01}
  - {budget: umbrella-cost, scope: {organisation: Umbrella}, ledger: cost, amount: "10000.00", currency: USD,
     valid_from: 2026-01-01}
  - {budget: acme, scope: {organisation: Acme, business_unit: Products, team: search}, amount: "5000.00",
     currency: USD, valid_from: 2026-01-01}
  - {budget: initech, scope: {tenant: initech}, ledger: cost, amount: "100.00", currency: USD,
     valid_from: 2026-01-01}
  - {budget: later, scope: {tenant: acme}, amount: "1.00", currency: USD, valid_from: 2026-10-01}
  - {budget: initech-unattributed, scope: {tenant: initech, source: (none)}, ledger: cost, amount: "500.00",
     currency: USD, valid_from: 2026-01-01}
""")
    evaluations = {e.budget.budget: e for e in budgets.evaluate("2026-09", budget_config.read(ten_days))}

    assert sorted(evaluations) == ["acme", "initech", "initech-unattributed", "umbrella-billed",
                                   "umbrella-cost"]  # 'later' is not in force in September
    for e in evaluations.values():
        assert (e.usage_through, e.elapsed_percent) == (THROUGH, D("33.33"))
        assert e.forecast_state == ("not_available" if e.budget.level == "source" else "missing")
    umbrella = evaluations["umbrella-billed"]
    assert (umbrella.actual, umbrella.used_percent, umbrella.state) == (D("5000.00"), D("50.00"), "ok")
    assert umbrella.contributors == (budgets.Contributor("globex", D("3000.00")),
                                     budgets.Contributor("initech", D("2000.00")))
    assert [c[0] for c in umbrella.crossed] == ["actual:50"]
    # cost to serve: a third of the worked example's September (docs/WORKED_EXAMPLE.md: 3,153.60 and 2,721.60)
    cost = evaluations["umbrella-cost"]
    assert (cost.actual, cost.state, cost.crossed) == (D("1958.40"), "ok", ())
    assert cost.contributors == (budgets.Contributor("globex", D("1051.20")),
                                 budgets.Contributor("initech", D("907.20")))
    acme = evaluations["acme"]
    assert (acme.actual, acme.used_percent, acme.state, acme.crossed) == (D("1808.62"), D("36.17"), "ok", ())
    # a tenant's contributors are its sources: the example's usage has none, shared cost is '(shared)'
    initech = evaluations["initech"]
    assert (initech.actual, initech.state, initech.breach_date) == (D("907.20"), "over", dt.date(2026, 9, 2))
    assert initech.contributors == (budgets.Contributor("(none)", D("564.00")),
                                    budgets.Contributor("(shared)", D("343.20")))
    assert [c[0] for c in initech.crossed] == ["actual:50", "actual:80", "actual:100", "pace:20"]
    # a source: the tenant's showback by source (usage without a source is '(none)'), its meters the contributors;
    # 56.40 a day, so its cumulative cost reaches 500.00 on the ninth
    unattributed = evaluations["initech-unattributed"]
    assert (unattributed.actual, unattributed.state, unattributed.breach_date) == (
        D("564.00"), "over", dt.date(2026, 9, 9))
    assert unattributed.contributors == (budgets.Contributor("ingested_gb", D("180.00")),
                                         budgets.Contributor("scanned_gb", D("156.00")),
                                         budgets.Contributor("stored_gb", D("120.00")))  # query_cpu_seconds 108.00


@pytest.mark.warehouse
def test_a_threshold_fires_once_across_three_replays_and_a_restatement(ten_days, smtp_server, webhook_server):
    _budgets(ten_days, """
budgets:
  - budget: umbrella-once
    scope: {organisation: Umbrella}
    amount: "6000.00"
    currency: USD
    valid_from: 2026-01-01
    thresholds: {actual: ["50", "80"], pace: null}
""")
    env = alert_environ(smtp_server, webhook_server)

    first = budgets.check("2026-09", environ=env)
    # three replays: the check run again (a retried task), the usage published and built again and
    # checked, and checked once more
    assert budgets.check("2026-09", environ=env).fired == []
    _publish_again()
    transform.build(START, THROUGH)
    assert budgets.check("2026-09", environ=env).fired == []
    assert budgets.check("2026-09", environ=env).fired == []

    [line] = {fired_line for _, _, fired_line in first.fired}  # one line for the thresholds fired together
    assert [(b, t) for b, t, _ in first.fired] == [("umbrella-once", "actual:50"), ("umbrella-once", "actual:80")]
    assert first.delivered == 1
    box, _ = smtp_server
    assert [(to, m["Subject"], m.get_content().splitlines()[0]) for to, m in box.messages] == [
        (["finops@example.com"], line[:147] + "...", line)]
    assert webhook_server.posts == [("/default", "application/json", {"text": line})]
    assert _event_lines("umbrella-once") == [line]
    assert line == (
        "chargeback notice: budget umbrella-once (organisation Umbrella, billed) at 2026-09, usage through"
        " 2026-09-11T00:00Z: reached 50 and 80 % of the budget: 5,000.00 USD of 6,000.00 USD (83.33 %) used with"
        " 33.33 % of the month elapsed; forecast: none yet; no breach predicted"
        " — biggest tenants: globex 3,000.00 USD, initech 2,000.00 USD (chargeback budgets list --month 2026-09)")
    assert _alerts("umbrella-once") == [
        ("umbrella-once", "actual:50", D("5000.00"), D("83.33"), D("33.33"), None, None, THROUGH, [], 1, True),
        ("umbrella-once", "actual:80", D("5000.00"), D("83.33"), D("33.33"), None, None, THROUGH, [], 1, True),
    ]

    # a restatement that drops below the thresholds and rises again: no alert, no flapping
    _budgets(ten_days, (ten_days / "budgets.yml").read_text().replace('"6000.00"', '"60000.00"'))
    below = budgets.check("2026-09", environ=env)
    assert (below.fired, below.evaluations[0].state, below.evaluations[0].used_percent) == ([], "ok", D("8.33"))
    _budgets(ten_days, (ten_days / "budgets.yml").read_text().replace('"60000.00"', '"6000.00"'))
    assert budgets.check("2026-09", environ=env).fired == []
    assert len(box.messages) == len(webhook_server.posts) == 1
    assert len(_alerts("umbrella-once")) == 2
    with pytest.raises(psycopg.errors.InsufficientPrivilege), warehouse.connect() as conn:
        conn.execute("delete from insights.budget_alerts")  # the pipeline cannot forget what it sent


def _publish_again() -> None:
    """A replay: the same snapshots of the ten days deleted and published again."""
    with warehouse.connect() as conn:
        conn.execute("delete from raw.usage_snapshots where hour_start >= %s and hour_start < %s", (START, THROUGH))
    _publish_example(START, THROUGH)


@pytest.mark.warehouse
def test_a_channel_that_fails_is_retried_without_sending_the_others_again(ten_days, smtp_server, webhook_server):
    _budgets(ten_days, """
budgets:
  - budget: acme-retry
    scope: {tenant: acme}
    amount: "1000.00"
    currency: USD
    valid_from: 2026-01-01
    thresholds: {actual: ["100"], pace: null}
    recipients: {email: [search-lead@acme.example], webhook: finance}
""")
    first = budgets.check("2026-09", environ=alert_environ(smtp_server))  # CHARGEBACK_ALERT_WEBHOOK_FINANCE unset
    assert (first.delivered, first.failures) == (0, [
        "budget acme-retry 2026-09: could not deliver to webhook:finance: CHARGEBACK_ALERT_WEBHOOK_FINANCE is not"
        " set (tried again at the next check)"])
    [alert] = _alerts("acme-retry")
    assert alert[8:] == (["webhook:finance"], 1, False)
    box, _ = smtp_server
    assert [to for to, _ in box.messages] == [["search-lead@acme.example"]]

    url = f"http://127.0.0.1:{webhook_server.server_address[1]}/finance"
    second = budgets.check("2026-09", environ=alert_environ(smtp_server, CHARGEBACK_ALERT_WEBHOOK_FINANCE=url))
    assert (second.fired, second.delivered, second.failures) == ([], 1, [])
    assert [to for to, _ in box.messages] == [["search-lead@acme.example"]]  # not mailed twice
    [(path, _, posted)] = webhook_server.posts
    assert path == "/finance"
    assert posted["text"].startswith("chargeback notice: budget acme-retry (tenant acme, billed) at 2026-09")
    assert _alerts("acme-retry")[0][8:] == ([], 2, True)


@pytest.mark.warehouse
def test_the_pace_rule_fires_when_spending_runs_ahead_of_the_month(ten_days):
    # globex: 3,000.00 billed after a third of the month (its commitment, owed in full from the first day)
    _budgets(ten_days, """
budgets:
  - {budget: globex-pace, scope: {tenant: globex}, amount: "5000.00", currency: USD, valid_from: 2026-01-01,
     thresholds: {actual: ["100"]}}
  - {budget: globex-no-pace, scope: {tenant: globex}, amount: "6000.00", currency: USD, valid_from: 2026-01-01,
     thresholds: {actual: ["100"]}}
  - {budget: globex-pace-10, scope: {tenant: globex}, amount: "6000.00", currency: USD, valid_from: 2026-01-01,
     thresholds: {actual: ["100"], pace: "10"}}
""")
    outcome = budgets.check("2026-09", environ={})
    # 60 % used - 33.33 % elapsed = 26.67 points > 20; 50 % - 33.33 % = 16.67 points: over 10, not over 20
    assert [(b, t) for b, t, _ in outcome.fired] == [("globex-pace", "pace:20"), ("globex-pace-10", "pace:10")]
    states = {e.budget.budget: (e.state, e.used_percent) for e in outcome.evaluations}
    assert states == {"globex-pace": ("at_risk", D("60.00")), "globex-no-pace": ("ok", D("50.00")),
                      "globex-pace-10": ("at_risk", D("50.00"))}
    assert "ahead of the month's pace by more than 20 points: 3,000.00 USD of 5,000.00 USD (60 %) used" \
        " with 33.33 % of the month elapsed" in outcome.fired[0][2]


@pytest.mark.warehouse
def test_the_forecast_threshold_fires_on_the_scopes_p50_with_its_breach_date(ten_days):
    _budgets(ten_days, """
budgets:
  - {budget: umbrella-forecast, scope: {organisation: Umbrella}, amount: "8000.00", currency: USD,
     valid_from: 2026-01-01, thresholds: {actual: [], pace: null}}
""")
    as_of = THROUGH
    with warehouse.connect() as conn:
        conn.execute("delete from insights.forecasts where forecast_month = '2026-09-01'")
        conn.execute("insert into insights.forecasts (forecast_month, as_of, tenant_id, meter, ledger, method,"
                     " history_days, status, amount_p10, amount_p50, amount_p90, actual_to_date, currency) values"
                     " ('2026-09-01', %s, 'globex', '(all)', 'billed', 'trend', 10, 'too_early', null, null, null,"
                     "  3000.00, 'USD')", (as_of - dt.timedelta(days=3),))
    early = budgets.check("2026-09", environ={})
    assert (early.fired, early.evaluations[0].forecast_state, early.evaluations[0].note) == (
        [], "too_early", "forecast thresholds not evaluated: the forecast says it is too early in the month")

    with warehouse.connect() as conn:
        conn.execute("insert into insights.forecasts (forecast_month, as_of, tenant_id, meter, ledger, method,"
                     " history_days, status, amount_p10, amount_p50, amount_p90, actual_to_date, currency) values"
                     " ('2026-09-01', %(a)s, 'globex', '(all)', 'billed', 'trend', 10, 'ok', 3000.00, 3100.00,"
                     "  3300.00, 3000.00, 'USD'),"
                     " ('2026-09-01', %(a)s, 'initech', '(all)', 'billed', 'trend', 10, 'ok', 5500.00, 6000.00,"
                     "  6600.00, 2000.00, 'USD')", {"a": as_of})
    outcome = budgets.check("2026-09", environ={})

    [e] = outcome.evaluations
    # P50 9,100.00 > 8,000.00; from 5,000.00 on 11 Sep 00:00 the path gains 4,100.00 in 20 days:
    # 3,000.00 more takes 3000/4100 x 20 days = 14.63 days -> 25 September
    assert (e.actual, e.forecast_p50, e.forecast_state, e.forecast_as_of, e.breach_date, e.state) == (
        D("5000.00"), D("9100.00"), "ok", as_of, dt.date(2026, 9, 25), "at_risk")
    assert [(b, t) for b, t, _ in outcome.fired] == [("umbrella-forecast", "forecast:100")]
    assert "forecast P50 9,100.00 USD (113.75 %); predicted to exceed the budget on 2026-09-25" in outcome.fired[0][2]
    [row] = budgets.status("2026-09")
    assert (row["state"], row["forecast_p50"], row["breach_date"], row["fired"]) == (
        "at_risk", D("9100.00"), dt.date(2026, 9, 25), ["forecast:100"])


@pytest.mark.warehouse
def test_a_channel_that_keeps_failing_is_given_up_after_five_attempts_with_one_line(ten_days):
    _budgets(ten_days, """
budgets:
  - {budget: acme-nowhere, scope: {tenant: acme}, amount: "1000.00", currency: USD, valid_from: 2026-01-01,
     thresholds: {actual: ["100"], pace: null}, recipients: {webhook: nowhere}}
""")
    failures = [budgets.check("2026-09", environ={}).failures for _ in range(6)]

    retry = ("budget acme-nowhere 2026-09: could not deliver to webhook:nowhere: CHARGEBACK_ALERT_WEBHOOK_NOWHERE is"
             " not set (tried again at the next check)")
    given_up = ("chargeback notice: budget acme-nowhere alert of 2026-09: not delivered after 5 attempts:"
                " webhook:nowhere: CHARGEBACK_ALERT_WEBHOOK_NOWHERE is not set — fix the channel; the alert's line"
                " is in pipeline.events and insights.budget_alerts")
    assert failures == [[retry]] * 4 + [[given_up], []]
    assert _alerts("acme-nowhere")[0][8:] == (["webhook:nowhere"], 5, False)
    assert _event_lines("acme-nowhere")[1:] == [given_up]


def test_which_thresholds_are_crossed(tmp_path):
    _config_dir(tmp_path, """
budgets:
  - {budget: b, scope: {tenant: acme}, amount: "1000.00", currency: USD, valid_from: 2026-01-01,
     thresholds: {actual: ["50", "80", "100"], forecast: ["100", "120"], pace: "20"}}
""")
    [b] = budget_config.read(tmp_path)
    days = dt.timedelta(days=10)
    assert [c[0] for c in budgets._crossed(b, D("800.00"), D("33.33"), D("1200.00"), days)] == [
        "actual:50", "actual:80", "forecast:100", "pace:20"]  # P50 at 120 %: not above it
    assert [c[0] for c in budgets._crossed(b, D("799.99"), D("60.00"), D("1200.01"), days)] == [
        "actual:50", "forecast:100", "forecast:120"]  # 79.999 % used - 60 % elapsed: not over 20 points
    assert [c[0] for c in budgets._crossed(b, D("600.00"), D("2.90"), None, dt.timedelta(hours=71))] == [
        "actual:50"]  # no forecast; the pace rule waits for 72 hours
    assert [c[0] for c in budgets._crossed(b, D("1000.00"), D("100"), None, dt.timedelta(days=30))] == [
        "actual:50", "actual:80", "actual:100"]


@pytest.mark.warehouse
def test_a_cost_budget_counts_the_days_with_usage_not_pool_cost_spread_over_the_rest_of_the_month(ten_days):
    """A build without a window spreads pool cost over hours after the last known one; a cost budget
    on 10 September must not count the days nobody has used yet."""
    _budgets(ten_days, """
budgets:
  - {budget: umbrella-cost, scope: {organisation: Umbrella}, ledger: cost, amount: "10000.00", currency: USD,
     valid_from: 2026-01-01}
""")
    transform.build()  # everything, no window: the marts hold September's cost for every hour
    with warehouse.connect() as conn:
        whole = conn.execute("select sum(cost_to_serve) from marts.int_ledger_daily where tenant_id in"
                             " ('globex', 'initech') and ledger_day >= '2026-09-01'").fetchone()[0]
    (cost,) = budgets.evaluate("2026-09", budget_config.read(ten_days))
    assert whole > D("2000")  # cost of days after the tenth is in the marts …
    assert (cost.usage_through, cost.actual) == (THROUGH, D("1958.40"))  # … the budget counts ten days of it
