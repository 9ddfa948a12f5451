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
from conftest import database_of_its_own
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
PRICE_CHANGE = dt.date(2026, 10, 5)  # the enterprise book's ingest prices x 1.6 (t001, t004)
RETENTION_MOVE = dt.date(2026, 10, 1)  # t038's biggest log group: 30 -> 365 days
MODELS = "+fct_usage_hourly +int_usage_retention_hourly +int_usage_sources_daily +dim_tenants +dim_meters"


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
            publish_simulated(TENANTS, START, END, seed=SEED, sources=SOURCES, injections=(SPIKE, SILENT))
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
        *anomaly_quality.injection_labels([SPIKE, SILENT]),
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
