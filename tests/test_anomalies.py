"""Anomalies on a simulated warehouse with labelled causes: a noisy log group, a silent producer,
a price change and a move into a dearer retention class — each found on its day, with the
injected cause as its largest effect, explained to the cent; raised once across replays; acknowledged
and resolved with who and why; sent through a real SMTP server."""

from __future__ import annotations

import datetime as dt
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from chargeback.engine import repricing, transform
from chargeback.ingest import simulate
from chargeback.insights import anomalies, anomaly_config, anomaly_quality
from chargeback.platform import warehouse
from conftest import alert_environ, database_of_its_own
from snapshots import publish_simulated

START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
SEED = 7
SOURCES = 4
TENANTS = ["t001", "t004", "t011", "t012", "t014", "t038"]
SPIKE = simulate.Injection("source_spike", "t011", dt.datetime(2026, 10, 8, tzinfo=dt.UTC),
                           dt.datetime(2026, 10, 9, tzinfo=dt.UTC), rank=1, factor=6.0)
SILENT = simulate.Injection("silent_producer", "t012", dt.datetime(2026, 10, 12, tzinfo=dt.UTC),
                            dt.datetime(2026, 10, 13, tzinfo=dt.UTC), rank=0)

def _shift(tenant_id: str, day: dt.datetime) -> tuple[simulate.Injection, simulate.Injection]:
    """The tenant's biggest log group silent for a day and its second sending as much more as makes
    the total about the same: a shift between sources that the tenant's total hides."""
    groups = simulate.tenant_sources(SEED, tenant_id, SOURCES).log_groups
    total = sum(g.weight for g in groups)
    first, second = groups[0].weight / total, groups[1].weight / total
    factor = 1 + (1 / (1 - first) - 1) / second
    end = day + dt.timedelta(days=1)
    return (simulate.Injection("silent_producer", tenant_id, day, end, rank=1),
            simulate.Injection("source_spike", tenant_id, day, end, rank=2, factor=factor))


SHIFT = _shift("t014", dt.datetime(2026, 10, 14, tzinfo=dt.UTC))
STORM = simulate.Injection("query_storm", "t004", dt.datetime(2026, 10, 16, tzinfo=dt.UTC),
                           dt.datetime(2026, 10, 17, tzinfo=dt.UTC), rank=1, factor=8.0)
PRICE_CHANGE = dt.date(2026, 10, 5)  # the enterprise book's ingest prices x 1.6 (t001, t004)
RETENTION_MOVE = dt.date(2026, 10, 1)  # t038's biggest log group: 30 -> 365 days
MODELS = ("+fct_usage_hourly +int_usage_retention_hourly +int_usage_sources_daily +dim_tenants +dim_meters"
          " +int_ledger_daily")


def _config(root: Path, target: Path) -> None:
    """The shipped configuration with the price change and the retention move."""
    shutil.copytree(root / "config", target)
    books = yaml.safe_load((target / "price_books.yml").read_text())
    enterprise = next(b for b in books["price_books"] if b["price_book"] == "enterprise")
    dearer = yaml.safe_load(yaml.safe_dump(enterprise))
    enterprise["valid_to"] = PRICE_CHANGE
    dearer["valid_from"] = PRICE_CHANGE
    for tier in dearer["prices"]["ingested_gb"]["tiers"]:
        tier["unit_price"] = str(Decimal(tier["unit_price"]) * Decimal("1.6"))
    books["price_books"].append(dearer)
    (target / "price_books.yml").write_text(yaml.safe_dump(books, sort_keys=False))
    tenants = yaml.safe_load((target / "tenants.yml").read_text())
    t038 = next(t for t in tenants["tenants"] if t["tenant_id"] == "t038")
    biggest = simulate.tenant_sources(SEED, "t038", SOURCES).log_groups[0].name
    t038["terms"] = [{"valid_from": RETENTION_MOVE, "source_retention_days": {biggest: 365}}]
    (target / "tenants.yml").write_text(yaml.safe_dump(tenants, sort_keys=False))
    # the shipped tenants are small (a few USD a day): floors of 1 USD and 2 % of the tenant's day
    (target / "anomalies.yml").write_text(yaml.safe_dump({"defaults": {"min_amount": "1.00", "min_share": 0.02}}))


@pytest.fixture(scope="module")
def history(test_warehouse, tmp_path_factory):
    from chargeback.platform.settings import get_settings

    config_dir = tmp_path_factory.mktemp("anomalies") / "config"
    _config(get_settings().root, config_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_CONFIG_DIR", str(config_dir))
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")
        with database_of_its_own("anomalies"):
            publish_simulated(TENANTS, START, END, seed=SEED, sources=SOURCES,
                              injections=(SPIKE, SILENT, *SHIFT, STORM))
            transform.build(START, END, select=MODELS)
            with warehouse.connect() as conn:
                findings = anomalies.find(conn, dt.date(2026, 9, 29), dt.date(2026, 10, 19),
                                          anomaly_config.read(config_dir))
            yield findings


def _one(findings, tenant_id, meter, day):
    found = [f for f in findings if (f.tenant_id, f.meter, f.day) == (tenant_id, meter, day)]
    assert found, f"no anomaly of {tenant_id} {meter} on {day}: {[(f.tenant_id, f.meter, f.day) for f in findings]}"
    return found[0]


@pytest.mark.warehouse
def test_a_noisy_log_group_is_a_spike_of_volume_led_by_that_log_group(history):
    f = _one(history, "t011", "ingested_gb", SPIKE.start.date())
    biggest = simulate.tenant_sources(SEED, "t011", SOURCES).log_groups[0].name
    assert f.direction == "spike"
    assert f.explanation.largest_effect == "volume"
    assert f.explanation.contributors[0].component.source == biggest
    assert f.explanation.volume + f.explanation.rate + f.explanation.mix == f.explanation.change
    assert biggest in f.sentence
    assert "rose" in f.sentence


@pytest.mark.warehouse
def test_a_silent_producer_is_a_drop_that_says_data_may_be_missing(history):
    f = _one(history, "t012", "ingested_gb", SILENT.start.date())
    assert f.direction == "drop"
    assert f.explanation.actual == Decimal("0.00")
    assert f.explanation.largest_effect == "volume"
    assert f.may_be_missing_data
    assert "completeness" in f.sentence


@pytest.mark.warehouse
def test_a_shift_between_log_groups_that_the_total_hides_is_found_per_source(history):
    day = SHIFT[0].start.date()
    groups = simulate.tenant_sources(SEED, "t014", SOURCES).log_groups
    found = {f.source: f for f in history if (f.tenant_id, f.meter, f.day) == ("t014", "ingested_gb", day)}
    assert anomalies.ALL_SOURCES not in found  # the meter as a whole stayed in line
    silent, busier = found[groups[0].name], found[groups[1].name]
    assert (silent.direction, silent.explanation.actual, silent.may_be_missing_data) == ("drop", Decimal("0.00"), True)
    assert busier.direction == "spike"
    assert f"t014's billed ingested_gb from {groups[1].name} on {day} rose" in busier.sentence
    for f in (silent, busier):
        assert {c.component.source for c in f.explanation.contributors} == {f.source}
        assert f.explanation.volume + f.explanation.rate + f.explanation.mix == f.explanation.change


@pytest.mark.warehouse
def test_a_query_storm_the_bill_hardly_notices_is_an_anomaly_of_the_cost_to_serve(history):
    """Query CPU is billed at 0.0003 USD a second and costs the compute pool far more: eight times a
    principal's queries move the tenant's cost to serve, not its bill."""
    day = STORM.start.date()
    top = simulate.tenant_sources(SEED, "t004", SOURCES).principals[0].name
    cost = [f for f in history if (f.tenant_id, f.meter, f.day, f.ledger) == ("t004", "query_cpu_seconds", day,
                                                                             "cost")]
    assert cost, [(f.tenant_id, f.meter, f.day, f.ledger) for f in history if f.day == day]
    f = cost[0]
    assert f.direction == "spike"
    assert f.explanation.largest_effect == "volume"
    assert f.explanation.contributors[0].component.source == top
    assert f"t004's cost to serve of query_cpu_seconds on {day} rose" in f.sentence
    assert not [b for b in history if (b.tenant_id, b.meter, b.day, b.ledger) == ("t004", "query_cpu_seconds", day,
                                                                                 "billed")]


@pytest.mark.warehouse
def test_the_day_in_progress_is_checked_by_the_hour_and_raised_once_with_the_whole_day(history):
    config = anomaly_config.read()
    noon = dt.datetime(2026, 10, 8, 12, tzinfo=dt.UTC)
    with warehouse.connect() as conn:
        today = anomalies.find_today(conn, noon, config)
        quiet = anomalies.find_today(conn, noon + dt.timedelta(days=1), config)
        assert anomalies.find_today(conn, noon.replace(hour=0), config) == []  # no hour of the day yet
        f = _one(today, "t011", "ingested_gb", SPIKE.start.date())
        assert "on 2026-10-08 to 12:00 UTC (the day so far) rose" in f.sentence
        assert f.explanation.largest_effect == "volume"
        assert f.explanation.actual < _one(history, "t011", "ingested_gb", SPIKE.start.date()).explanation.actual
        assert not [q for q in quiet if q.tenant_id == "t011"]
        # raised by the hour, then found again when the day is complete: one anomaly, its day updated
        raised, _, _ = anomalies.record(conn, [f], noon, [])
        again = anomalies.record(conn, [x for x in history if x.tenant_id == "t011" and x.day == f.day], noon, [])
        assert (len(raised), again) == (1, ([], 0, 1))
        conn.rollback()


@pytest.mark.warehouse
@pytest.mark.parametrize("tenant_id", ["t001", "t004"])
def test_a_price_change_is_a_rate_effect_naming_the_new_version(history, tenant_id):
    f = _one(history, tenant_id, "ingested_gb", PRICE_CHANGE)
    assert f.direction == "spike"
    assert f.explanation.largest_effect == "rate"
    assert [v["valid_from"] for v in f.price_versions] == ["2020-01-01", f"{PRICE_CHANGE}"]
    assert f"version of {PRICE_CHANGE} in force" in f.sentence


@pytest.mark.warehouse
def test_a_move_into_a_dearer_retention_class_is_a_mix_effect(history):
    f = _one(history, "t038", "stored_gb", RETENTION_MOVE)
    biggest = simulate.tenant_sources(SEED, "t038", SOURCES).log_groups[0].name
    assert f.explanation.largest_effect == "mix"
    top = f.explanation.contributors[0].component
    assert (top.source, top.retention_days) == (biggest, 365)


@pytest.mark.warehouse
def test_every_explanation_adds_up_to_the_change_to_the_cent(history):
    assert history
    for f in history:
        e = f.explanation
        assert e.volume + e.rate + e.mix == e.actual - e.expected
        assert all(x == x.quantize(Decimal("0.01")) for x in (e.volume, e.rate, e.mix, e.expected, e.actual))


@pytest.mark.warehouse
def test_the_days_of_a_month_add_up_to_its_invoice_usage_lines(history):
    """What each day added, summed over September, is the month's usage lines priced at once."""
    month = dt.date(2026, 9, 1)
    with warehouse.connect() as conn:
        catalog = repricing.load_catalog(conn)
        series = anomalies.day_amounts(conn, catalog, month, dt.date(2026, 9, 30))
        usage = repricing.read_daily_usage(conn, month)
        kept = repricing.read_daily_classes(conn, month)
    for tenant_id in TENANTS:
        priced = repricing.price_month(catalog, tenant_id, month, usage[tenant_id], classes=kept.get(tenant_id))
        for meter, amount in priced.meter_amounts.items():
            days = series.exact[tenant_id, meter]
            assert sum((a for parts in days.values() for _, a in parts.values()), Decimal(0)) == amount


@pytest.mark.warehouse
def test_every_finding_has_a_labelled_cause_and_every_injected_one_is_found_with_its_effect(history):
    standard = ["t011", "t012", "t014", "t038"]
    labels = [
        *anomaly_quality.injection_labels([SPIKE, SILENT, *SHIFT, STORM]),
        *anomaly_quality.lasting_change(["t001", "t004"], "ingested_gb", PRICE_CHANGE, "rate", "price change"),
        *anomaly_quality.lasting_change(["t038"], "stored_gb", RETENTION_MOVE, "mix", "retention move"),
        # the shipped standard book lowers its ingest prices by 10 % on 15 October
        *anomaly_quality.lasting_change(standard, "ingested_gb", dt.date(2026, 10, 15), "rate", "price change",
                                        injected=False),
        *anomaly_quality.burst_labels(SEED, TENANTS, START, END),
    ]
    score = anomaly_quality.score(history, labels)
    assert score.unlabelled == ()
    assert score.missed == ()
    assert score.wrong_cause == ()
    assert (score.precision, score.recall, score.cause_accuracy) == (1.0, 1.0, 1.0)


def _episodes(findings) -> int:
    """Runs of consecutive days of one series in one direction."""
    runs, last = 0, {}
    for f in sorted(findings, key=lambda f: f.day):
        key = (f.tenant_id, f.meter, f.direction)
        if last.get(key) != f.day - dt.timedelta(days=1):
            runs += 1
        last[key] = f.day
    return runs


@pytest.mark.warehouse
def test_anomalies_are_raised_once_sent_as_a_daily_digest_and_acknowledged_with_who_and_why(
        history, smtp_server, webhook_server, capsys):
    from chargeback.cli import main

    box, _ = smtp_server
    env = alert_environ(smtp_server, webhook_server)
    first, last = dt.date(2026, 9, 29), dt.date(2026, 10, 19)
    config = anomaly_config.AnomalyConfig(anomaly_config.read().thresholds, delivery="digest", digest_hour_utc=8)
    morning = dt.datetime(2026, 10, 20, 7, tzinfo=dt.UTC)

    # recorded before anything is sent; the digest waits for its hour
    outcome = anomalies.run(first, last, environ=env, now=morning, config=config)
    assert (outcome.findings, len(outcome.raised), outcome.delivered) == (len(history), _episodes(history), 0)
    assert outcome.extended == len(history) - _episodes(history)
    assert box.messages == []
    with warehouse.connect() as conn:
        days = conn.execute("select count(*) from insights.anomaly_days").fetchone()[0]
        lines = conn.execute("select count(*) from pipeline.events where details ? 'anomaly_id'").fetchone()[0]
        spike = conn.execute(
            "select volume, rate, mix, actual - expected, channels_pending from insights.anomalies"
            " where tenant_id = 't011' and first_day = %s", (SPIKE.start.date(),)).fetchone()
    assert (days, lines) == (len(history), len(outcome.raised))
    assert spike[0] + spike[1] + spike[2] == spike[3]
    assert spike[4] == ["email", "webhook:default"]

    # one message for all of them at the digest hour, and only once that day
    assert anomalies.deliver_pending(config, environ=env, now=morning.replace(hour=9)) == (len(outcome.raised), [])
    assert anomalies.deliver_pending(config, environ=env, now=morning.replace(hour=10)) == (0, [])
    ((to, message),) = box.messages
    assert to == ["finops@example.com"]
    assert f"{len(outcome.raised)} new" in message["Subject"]
    ((_, _, posted),) = webhook_server.posts
    assert "t011 ingested_gb 2026-10-08" in posted["text"]

    # a replay (or a restatement) of the same days raises and sends nothing again
    again = anomalies.run(first, last, environ=env, now=morning.replace(hour=11), config=config)
    assert (again.raised, again.extended, again.updated) == ([], 0, len(history))
    assert len(box.messages) == 1

    # acknowledged with who and why, then resolved; a resolved one cannot be acknowledged
    spike_id = next(r["anomaly_id"] for r in anomalies.listing("open") if r["tenant_id"] == "t011")
    assert main(["anomalies", "ack", str(spike_id), "--as", "problem", "--by", "dana",
                 "--reason", "debug logging left on in payments"]) == 0
    assert "acknowledged (problem by dana: debug logging left on in payments)" in capsys.readouterr().out
    anomalies.resolve(spike_id, "dana", "debug logging off since 9 October")
    with pytest.raises(ValueError, match="is resolved"):
        anomalies.acknowledge(spike_id, "expected", "omar", "too late")
    assert main(["anomalies", "ack", "999999", "--as", "planned", "--by", "x", "--reason", "y"]) == 1
    assert main(["anomalies", "list", "--tenant", "t011", "--status", "resolved"]) == 0
    out = capsys.readouterr().out
    assert f"#{spike_id}  t011  ingested_gb  2026-10-08  spike  resolved" in out
    assert "volume +" in out
    assert "largest contributors" in out
    anomalies.run(first, last, environ=env, now=morning.replace(hour=12), config=config)
    assert [r["status"] for r in anomalies.listing("all") if r["anomaly_id"] == spike_id] == ["resolved"]
