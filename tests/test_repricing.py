"""Re-pricing from daily usage (chargeback.engine.repricing) is the warehouse's pricing engine:
for every tenant of a simulated month, it reproduces ``marts.fct_invoices`` and the per-meter
amounts of ``marts.fct_invoice_lines`` to the cent.

October 2026 is simulated (the simulator's rows, published) and built by the real dbt: the standard price
book changes on 15 October, so its tenants' months have two segments; the shipped tenants cover
both books, discounts, retention classes, a commitment with an uplift (t007's terms start that
month), and a commitment without usage (t008).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from chargeback.engine import repricing, transform
from chargeback.engine.pricing import Price, Segment, Tier
from chargeback.platform import warehouse
from conftest import database_of_its_own
from snapshots import publish_simulated

D = Decimal
OCTOBER = dt.date(2026, 10, 1)
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
TENANTS = ["t001", "t002", "t003", "t004", "t007", "t009", "t010", "t011", "t012"]


@pytest.fixture(scope="module")
def october(test_warehouse):
    with database_of_its_own("repricing"), pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")  # only tests whose models are all built
        publish_simulated(TENANTS, START, END, seed=23)
        transform.build(START, END, select="+fct_invoices dim_tenants dim_meters fct_usage_hourly")
        yield


@pytest.mark.warehouse
def test_repricing_daily_usage_reproduces_every_invoice_and_meter_amount_to_the_cent(october):
    with warehouse.connect() as conn:
        catalog = repricing.load_catalog(conn)
        usage = repricing.read_daily_usage(conn, OCTOBER)
        classes = repricing.read_daily_classes(conn, OCTOBER)
        invoices = {row[0]: row[1:] for row in conn.execute(
            "select tenant_id, total, usage_total, commitment_true_up + overage_uplift, currency, line_count"
            " from marts.fct_invoices where invoice_month = %s", (OCTOBER,))}
        meters = {(t, m): a for t, m, a in conn.execute(
            "select tenant_id, meter, sum(amount) from marts.fct_invoice_lines"
            " where invoice_month = %s and meter is not null group by tenant_id, meter", (OCTOBER,))}
    priced = repricing.price_months(catalog, OCTOBER, usage, classes=classes)

    assert set(invoices) == {*TENANTS, "t008"}
    assert set(priced) == set(invoices)
    assert {t: (p.total, p.usage_total, p.contract_total, p.currency, len(p.lines)) for t, p in priced.items()} \
        == invoices
    assert {(t, m): a for t, p in priced.items() for m, a in p.meter_amounts.items()} == meters
    # the month is the interesting one: two price versions, a true-up, an uplift
    assert len({pl.line.price_valid_from for pl in priced["t009"].lines}) == 2
    assert priced["t008"].total == D("20000.00")
    assert [pl.line.line_type for pl in priced["t007"].lines if pl.meter is None] in (["overage_uplift"],
                                                                                        ["commitment_true_up"])


@pytest.fixture(scope="module")
def october_with_classes(test_warehouse, tmp_path_factory):
    """October 2026 of t001 and t003 whose stored data comes from two sources, one kept for a
    retention class of its own (t001: audit-logs 365 days beside its 90; t003: 30 beside its 7)."""
    import shutil

    import yaml

    from chargeback.engine import configuration
    from conftest import ROOT

    config_dir = tmp_path_factory.mktemp("repricing-classes-config")
    shutil.copytree(ROOT / "config", config_dir, dirs_exist_ok=True)
    doc = yaml.safe_load((config_dir / "tenants.yml").read_text())
    for tenant in doc["tenants"]:
        if tenant["tenant_id"] in ("t001", "t003"):
            for terms in tenant["terms"]:
                terms["source_retention_days"] = {"audit-logs": 365 if tenant["tenant_id"] == "t001" else 30}
    (config_dir / "tenants.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with database_of_its_own("repricing_classes"), pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")
        patch.setenv("CHARGEBACK_CONFIG_DIR", str(config_dir))
        configuration.load(config_dir)
        publish_simulated(["t001", "t003"], START, END, seed=29)
        with warehouse.connect() as conn:  # 40 % of each stored_gb hour (and of ingest) kept by audit-logs
            conn.execute("""
                insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,
                                                 kind, source_file, source_line, load_id, source)
                select snapshot_id || '-audit', tenant_id, meter, round(value * 0.4, 6), unit, hour_start,
                       emitted_at, kind, source_file, source_line, load_id, 'audit-logs'
                from raw.usage_snapshots where meter in ('stored_gb', 'ingested_gb')""")
            conn.execute("""
                update raw.usage_snapshots set value = value - round(value * 0.4, 6), source = 'app'
                where meter in ('stored_gb', 'ingested_gb') and source <> 'audit-logs'""")
        transform.build(START, END, select="+fct_invoices dim_tenants dim_meters fct_usage_hourly")
        yield


@pytest.mark.warehouse
@pytest.mark.skipif("retention_days" not in {f.name for f in dataclasses.fields(Segment)},
                    reason="per-source retention classes are not priced by this tree's engine.pricing")
def test_repricing_prices_sources_with_a_retention_class_of_their_own_like_the_invoices(october_with_classes):
    with warehouse.connect() as conn:
        catalog = repricing.load_catalog(conn)
        usage = repricing.read_daily_usage(conn, OCTOBER)
        classes = repricing.read_daily_classes(conn, OCTOBER)
        lines = {(t, m, tier): a for t, m, tier, a in conn.execute(
            "select tenant_id, meter, tier, sum(amount) from marts.fct_invoice_lines"
            " where invoice_month = %s and meter is not null group by tenant_id, meter, tier", (OCTOBER,))}
        totals = dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                   (OCTOBER,)).fetchall())
    priced = repricing.price_months(catalog, OCTOBER, usage, classes=classes, tenant_ids=["t001", "t003"])
    assert set(classes) == {"t001", "t003"}
    assert {t: p.total for t, p in priced.items()} == {t: totals[t] for t in ("t001", "t003")}
    ours: dict = {}
    for t, p in priced.items():
        for pl in p.lines:
            ours[t, pl.meter, pl.line.tier] = ours.get((t, pl.meter, pl.line.tier), D(0)) + pl.line.amount
    assert ours == lines
    # two stored_gb lines each: the default class and audit-logs' (t001: 90 and 365 days -> tiers 3, 4)
    assert sorted(k[2] for k in lines if k[:2] == ("t001", "stored_gb")) == [3, 4]
    assert sorted(k[2] for k in lines if k[:2] == ("t003", "stored_gb")) == [1, 2]


def catalog_of(price: Price, kind: str = "counter") -> repricing.Catalog:
    book = repricing.BookVersion("b", dt.date(2020, 1, 1), None, "USD", {"m": price})
    return repricing.Catalog({"m": kind}, {"b": (book,)}, {"x": repricing.Tenant("x", "b", "O", "BU", "T")}, {})


def test_price_month_prices_each_day_under_the_version_in_force_and_applies_terms():
    old = Price(dt.date(2020, 1, 1), "per_unit", (Tier(1, D(0), None, D("0.10")),))
    new = Price(dt.date(2026, 10, 15), "per_unit", (Tier(1, D(0), None, D("0.20")),))
    books = (repricing.BookVersion("b", dt.date(2020, 1, 1), dt.date(2026, 10, 15), "USD", {"m": old}),
             repricing.BookVersion("b", dt.date(2026, 10, 15), None, "USD", {"m": new}))
    terms = repricing.Terms(discount_percent=D("10"), monthly_commitment=D("100.00"))
    catalog = repricing.Catalog({"m": "counter"}, {"b": books},
                                {"x": repricing.Tenant("x", "b", "O", "BU", "T")},
                                {"x": ((dt.date(2026, 1, 1), None, terms),)})
    usage = {"m": {dt.date(2026, 10, d): D(10) for d in range(1, 32)}}  # 140 before the 15th, 170 from it
    priced = repricing.price_month(catalog, "x", OCTOBER, usage)
    # 140 x 0.10 = 14.00 less 1.40; 170 x 0.20 = 34.00 less 3.40; true-up to 100
    assert [(pl.line.list_amount, pl.line.amount) for pl in priced.lines] == [
        (D("14.00"), D("12.60")), (D("34.00"), D("30.60")), (D("56.80"), D("56.80"))]
    assert priced.total == D("100.00")
    assert priced.meter_amounts == {"m": D("43.20")}


def test_a_gauge_is_priced_in_unit_months_of_the_months_hours():
    price = Price(dt.date(2020, 1, 1), "per_unit", (Tier(1, D(0), None, D("0.03")),))
    usage = {"m": {dt.date(2026, 11, d): D(24 * 1000) for d in range(1, 31)}}  # 1,000 GB every hour
    priced = repricing.price_month(catalog_of(price, "gauge"), "x", dt.date(2026, 11, 1), usage)
    assert priced.lines[0].line.quantity == D("1000.000000000000")
    assert priced.total == D("30.00")


def test_usage_outside_the_month_or_unpriced_is_refused():
    price = Price(dt.date(2020, 1, 1), "per_unit", (Tier(1, D(0), None, D("0.03")),))
    with pytest.raises(ValueError, match="not in the month 2026-11"):
        repricing.price_month(catalog_of(price), "x", dt.date(2026, 11, 1), {"m": {dt.date(2026, 12, 1): D(1)}})
    with pytest.raises(ValueError, match="no version of price book 'b' prices the meter on 2019-01-01"):
        repricing.price_month(catalog_of(price), "x", dt.date(2019, 1, 1), {"m": {dt.date(2019, 1, 1): D(1)}})


def test_usage_summed_per_price_version_prices_the_same():
    old = Price(dt.date(2020, 1, 1), "graduated", (Tier(1, D(0), D(200), D("0.10")), Tier(2, D(200), None, D("0.05"))))
    new = Price(dt.date(2026, 10, 15), "graduated", (Tier(1, D(0), D(200), D("0.20")),
                                                      Tier(2, D(200), None, D("0.15"))))
    books = (repricing.BookVersion("b", dt.date(2020, 1, 1), dt.date(2026, 10, 15), "USD", {"m": old}),
             repricing.BookVersion("b", dt.date(2026, 10, 15), None, "USD", {"m": new}))
    catalog = repricing.Catalog({"m": "counter"}, {"b": books}, {"x": repricing.Tenant("x", "b", "O", "BU", "T")}, {})
    usage = {"m": {dt.date(2026, 10, d): D(d) for d in range(1, 32)}}
    compact = repricing.by_version(catalog, "x", usage)
    assert compact == {"m": {dt.date(2026, 10, 1): D(105), dt.date(2026, 10, 15): D(391)}}
    assert repricing.price_month(catalog, "x", OCTOBER, compact).lines == \
        repricing.price_month(catalog, "x", OCTOBER, usage).lines


@pytest.mark.skipif("retention_days" not in {f.name for f in dataclasses.fields(Segment)},
                    reason="per-source retention classes are not priced by this tree's engine.pricing")
def test_sources_kept_for_a_class_of_their_own_are_priced_at_it():
    tiers = (Tier(1, D(0), None, D("0.02"), 7), Tier(2, D(0), None, D("0.03"), 30), Tier(3, D(0), None, D("0.05"), 90))
    price = Price(dt.date(2020, 1, 1), "retention", tiers)
    day = dt.date(2026, 10, 1)
    # 100 GB in all: 40 kept by a source for 90 days, 10 by one for 15 days (the 30-day class, as the default)
    priced = repricing.price_month(catalog_of(price), "x", OCTOBER, {"m": {day: D(100)}},
                                   classes={"m": {90: {day: D(40)}, 15: {day: D(10)}}})
    assert [(pl.line.tier, pl.line.quantity, pl.line.amount) for pl in priced.lines] == [
        (2, D("60.000000000000"), D("1.80")), (3, D("40.000000000000"), D("2.00"))]
    # all of it kept by the 90-day source: the default class shows no line
    priced = repricing.price_month(catalog_of(price), "x", OCTOBER, {"m": {day: D(40)}},
                                   classes={"m": {90: {day: D(40)}}})
    assert [(pl.line.tier, pl.line.amount) for pl in priced.lines] == [(3, D("2.00"))]
