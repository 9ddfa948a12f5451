"""Pricing, checked three ways, to the cent.

1. The reference pricer (``chargeback.engine.pricing``, pure Python) on hand-computed cases.
2. Property-based: the dbt models' SQL (``fct_invoice_lines`` as dbt compiles it, run on the
   real PostgreSQL) agrees with the reference for random price books (every model, random
   tiers, allowances and packages, up to three versions in a month), random usage and terms.
   Each hypothesis example is a batch of scenarios priced in one round trip.
3. A month end to end: a small price book using every model (YAML in a temporary
   configuration directory), raw usage of three tenants, ``transform.build``, every line and
   total checked, and the PDFs rendered and read back.

The warehouse parts use a database of their own (``<session database>_pricing``): their
configuration is not the shipped one.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pypdf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargeback.billing import invoices
from chargeback.engine import configuration, transform
from chargeback.engine.pricing import Line, Price, Segment, Tier, contract_lines, price_meter_month
from chargeback.platform import warehouse
from chargeback.platform.settings import get_settings

D = Decimal
ROOT = Path(__file__).resolve().parents[1]
OLD = dt.date(2020, 1, 1)


def summary(lines: list[Line]) -> list[tuple]:
    """What a reader checks on an invoice: type, tier, quantity, list amount, discount, amount."""
    return [(x.line_type, x.tier, x.quantity, x.list_amount, x.discount_amount, x.amount) for x in lines]


def per_unit(price: str, valid_from: dt.date = OLD, free: str = "0") -> Price:
    return Price(valid_from, "per_unit", (Tier(1, D(0), None, D(price)),), free_allowance=D(free))


def tiered(model: str, *tiers: tuple[str | None, str], valid_from: dt.date = OLD, free: str = "0") -> Price:
    """``tiered("graduated", ("1000", "0.50"), (None, "0.40"))``: (up_to, unit_price) pairs."""
    rows, lower = [], D(0)
    for n, (up_to, price) in enumerate(tiers, 1):
        rows.append(Tier(n, lower, None if up_to is None else D(up_to), D(price)))
        lower = D(up_to) if up_to is not None else lower
    return Price(valid_from, model, tuple(rows), free_allowance=D(free))


# --------------------------------------------------------------------------- the reference pricer


def test_per_unit_price_rounds_half_up():
    # 1212.5 s x 0.0004 = 0.485 -> 0.49 (banker's rounding would give 0.48)
    lines = price_meter_month([Segment(per_unit("0.0004"), D("1212.5"))])
    assert summary(lines) == [("usage", 1, D("1212.5"), D("0.49"), D("0.00"), D("0.49"))]


def test_graduated_price_crosses_two_tier_boundaries():
    price = tiered("graduated", ("1000", "0.50"), ("10000", "0.40"), (None, "0.30"))
    lines = price_meter_month([Segment(price, D(12000))])
    assert summary(lines) == [
        ("usage", 1, D(1000), D("500.00"), D("0.00"), D("500.00")),
        ("usage", 2, D(9000), D("3600.00"), D("0.00"), D("3600.00")),
        ("usage", 3, D(2000), D("600.00"), D("0.00"), D("600.00")),
    ]


def test_volume_price_takes_the_tier_of_the_months_total_for_every_unit():
    price = tiered("volume", ("10000", "0.005"), ("100000", "0.004"), (None, "0.003"))
    # the upper bound belongs to its tier; one half GB more moves every unit to tier 2
    assert summary(price_meter_month([Segment(price, D(10000))])) == [
        ("usage", 1, D(10000), D("50.00"), D("0.00"), D("50.00"))]
    assert summary(price_meter_month([Segment(price, D("10000.5"))])) == [
        ("usage", 2, D("10000.5"), D("40.00"), D("0.00"), D("40.00"))]  # 40.002


def test_package_price_counts_started_blocks():
    price = Price(OLD, "package", package_size=D(100), package_price=D("1.00"))
    assert [(x.packages, x.list_amount) for x in price_meter_month([Segment(price, D(250))])] == [(3, D("3.00"))]
    assert [(x.packages, x.list_amount) for x in price_meter_month([Segment(price, D(300))])] == [(3, D("3.00"))]
    assert [(x.packages, x.list_amount) for x in price_meter_month([Segment(price, D("0.5"))])] == [(1, D("1.00"))]


def test_free_allowance_is_a_line_of_its_own_at_price_zero():
    price = tiered("graduated", ("1000", "0.50"), (None, "0.40"), free="5")
    assert summary(price_meter_month([Segment(price, D(3))])) == [
        ("free_allowance", None, D(3), D(0), D(0), D(0))]
    assert summary(price_meter_month([Segment(price, D("7.5"))])) == [
        ("free_allowance", None, D(5), D(0), D(0), D(0)),
        ("usage", 1, D("2.5"), D("1.25"), D("0.00"), D("1.25")),
    ]


def test_retention_class_picks_the_smallest_tier_at_least_as_long():
    price = Price(OLD, "retention", tuple(
        Tier(n, D(0), None, D(p), days) for n, (days, p) in enumerate(
            [(7, "0.02"), (30, "0.03"), (90, "0.05"), (365, "0.08")], 1)))
    prices = {days: price_meter_month([Segment(price, D(72000))], divisor=720, retention_days=days)[0]
              for days in (7, 30, 45, 365)}
    assert {days: (x.tier, x.quantity, x.unit_price, x.list_amount) for days, x in prices.items()} == {
        7: (1, D(100), D("0.02"), D("2.00")),
        30: (2, D(100), D("0.03"), D("3.00")),
        45: (3, D(100), D("0.05"), D("5.00")),
        365: (4, D(100), D("0.08"), D("8.00")),
    }


def test_gauge_bills_unit_months_and_rounds_once():
    # October: 744 hours. 372 GB-hours = 0.5 GB-month x 0.03 = 0.015 -> 0.02
    assert summary(price_meter_month([Segment(per_unit("0.03"), D(372))], divisor=744)) == [
        ("usage", 1, D("0.5"), D("0.02"), D("0.00"), D("0.02"))]
    # 1 GB-hour in November: 0.001388888889 GB-month (12 decimals); 1 x 1.8 / 720 = 0.0025 -> 0.00
    line = price_meter_month([Segment(per_unit("1.8"), D(1))], divisor=720)[0]
    assert (line.quantity, line.list_amount) == (D("0.001388888889"), D("0.00"))


def test_discount_comes_off_each_usage_line_rounded_half_up():
    lines = price_meter_month([Segment(per_unit("0.50", free="1"), D("2.3"))], discount_percent=D(10))
    assert summary(lines) == [
        ("free_allowance", None, D(1), D(0), D(0), D(0)),
        ("usage", 1, D("1.3"), D("0.65"), D("0.07"), D("0.58")),  # 0.065 -> 0.07
    ]


def test_price_change_mid_month_continues_the_months_count():
    old = tiered("graduated", ("1000", "0.50"), (None, "0.40"), free="5")
    new = tiered("graduated", ("1000", "0.45"), (None, "0.36"), free="5", valid_from=dt.date(2026, 11, 15))
    lines = price_meter_month([Segment(old, D(700)), Segment(new, D(700))])
    assert [(x.price_valid_from, *row) for x, row in zip(lines, summary(lines), strict=True)] == [
        (OLD, "free_allowance", None, D(5), D(0), D(0), D(0)),
        (OLD, "usage", 1, D(695), D("347.50"), D("0.00"), D("347.50")),
        (dt.date(2026, 11, 15), "usage", 1, D(305), D("137.25"), D("0.00"), D("137.25")),
        (dt.date(2026, 11, 15), "usage", 2, D(395), D("142.20"), D("0.00"), D("142.20")),
    ]
    packs_old = Price(OLD, "package", package_size=D(100), package_price=D("1.00"))
    packs_new = Price(dt.date(2026, 11, 15), "package", package_size=D(100), package_price=D("0.80"))
    # 150 alerts start 2 packages; 100 more reach 250: ceil(2.5) - ceil(1.5) = 1 more
    lines = price_meter_month([Segment(packs_old, D(150)), Segment(packs_new, D(100))])
    assert [(x.packages, x.list_amount) for x in lines] == [(2, D("2.00")), (1, D("0.80"))]


def test_commitment_true_up_and_overage_uplift():
    # a true-up is one month at the shortfall; an uplift, the amount above the commitment at its rate
    assert [(x.line_type, x.quantity, x.unit_price, x.amount) for x in contract_lines(D("42.50"), D("100.00"))] == [
        ("commitment_true_up", D(1), None, D("57.50"))]
    assert [(x.line_type, x.quantity, x.unit_price, x.amount)
            for x in contract_lines(D("1234.56"), D("1000.00"), D(5))] == [
        ("overage_uplift", D("234.56"), D("0.05"), D("11.73"))]  # 234.56 x 5% = 11.728
    assert contract_lines(D("10.00"), D("10.00"), D(5)) == []
    assert contract_lines(D("10.00")) == []


def test_reference_pricer_refuses_floats():
    with pytest.raises(TypeError, match="float"):
        price_meter_month([Segment(per_unit("0.5"), 1.5)])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the warehouse

NOVEMBER = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
DECEMBER = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
PRICING_MODELS = "+fct_invoices dim_tenants dim_meters fct_usage_hourly"

PRICE_BOOKS = """
price_books:
  - price_book: metered
    currency: USD
    valid_from: 2020-01-01
    valid_to: 2026-11-16
    prices: &prices
      ingested_gb:
        model: graduated
        free_allowance: "10"
        tiers:
          - {to: "110", unit_price: "0.50"}
          - {to: "1010", unit_price: "0.40"}
          - {unit_price: "0.25"}
      scanned_gb:
        model: volume
        tiers:
          - {to: "1000", unit_price: "0.01"}
          - {to: "10000", unit_price: "0.008"}
          - {unit_price: "0.005"}
      query_cpu_seconds: "0.0004"
      alerts_fired: {model: package, package_size: "100", package_price: "2.00"}
      stored_gb:
        model: retention
        tiers:
          - {retention_days: 7, unit_price: "0.02"}
          - {retention_days: 30, unit_price: "0.03"}
          - {retention_days: 90, unit_price: "0.05"}
  - price_book: metered
    currency: USD
    valid_from: 2026-11-16
    prices:
      <<: *prices
      ingested_gb:
        model: graduated
        free_allowance: "10"
        tiers:
          - {to: "110", unit_price: "0.45"}
          - {to: "1010", unit_price: "0.36"}
          - {unit_price: "0.20"}
      alerts_fired: {model: package, package_size: "100", package_price: "1.50"}
"""
TENANTS = """
tenants:
  - tenant_id: a01
    name: Alpha Search prod
    organisation: Alpha
    business_unit: Search
    team: core
    price_book: metered
    billing_email: billing@alpha.example
    terms:
      - {valid_from: 2026-01-01, discount_percent: "10", retention_days: 90}
  - tenant_id: b02
    name: Beta Retail analytics
    organisation: Beta
    business_unit: Retail
    team: analytics
    price_book: metered
    terms:
      - {valid_from: 2026-11-01, monthly_commitment: "500.00"}
  - tenant_id: c03
    name: Gamma Devices fleet
    organisation: Gamma
    business_unit: Devices
    team: fleet
    price_book: metered
    terms:
      - {valid_from: 2026-01-01, monthly_commitment: "100.00", overage_uplift_percent: "5", retention_days: 7}
"""
COST_POOLS = """
cost_pools:
  - pool: platform
    description: The whole platform
    monthly_cost: "1000.00"
    currency: USD
    valid_from: 2020-01-01
    allocation: {method: proportional, driver: ingested_gb}
"""
UNITS = {"ingested_gb": ("GB", "counter"), "stored_gb": ("GB", "gauge"), "scanned_gb": ("GB", "counter"),
         "query_cpu_seconds": ("s", "counter"), "alerts_fired": ("alerts", "counter")}


def at(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC)


# The month's usage; the price book changes on 16 November.
USAGE = [
    ("a01", "alerts_fired", "150", at(3)),
    ("a01", "alerts_fired", "60", at(25)),
    ("a01", "ingested_gb", "60", at(2)),
    ("a01", "ingested_gb", "100", at(20)),
    ("a01", "stored_gb", "1440", at(2, 0)),
    ("a01", "stored_gb", "1440", at(2, 1)),
    ("b02", "query_cpu_seconds", "12125", at(5)),
    ("b02", "scanned_gb", "1000", at(5)),
    ("b02", "scanned_gb", "500", at(20)),
    ("b02", "stored_gb", "720", at(10)),
    ("c03", "ingested_gb", "5", at(2)),
    ("c03", "query_cpu_seconds", "250000", at(10)),
    ("c03", "stored_gb", "3600", at(3, 0)),
]


@pytest.fixture(scope="module")
def pricing_database(test_warehouse, tmp_path_factory) -> Iterator[str]:
    """A database with the configuration above and November 2026 built by dbt (the pricing
    models and what they read; tests of other models are left out)."""
    session_db = os.environ["CHARGEBACK_DATABASE"]
    name = f"{session_db}_pricing"
    config_dir = tmp_path_factory.mktemp("pricing-config")
    shutil.copy(ROOT / "config" / "meters.yml", config_dir / "meters.yml")
    (config_dir / "price_books.yml").write_text(PRICE_BOOKS)
    (config_dir / "tenants.yml").write_text(TENANTS)
    (config_dir / "cost_pools.yml").write_text(COST_POOLS)
    warehouse.drop_database(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_DATABASE", name)
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")  # only tests whose models are all built
        warehouse.ensure_schema()
        configuration.load(config_dir)
        rows = [
            (f"pricing/{i}", tenant, meter, D(value), UNITS[meter][0], hour, hour, UNITS[meter][1],
             "test_pricing.py", i, 1)
            for i, (tenant, meter, value, hour) in enumerate(USAGE, 1)
        ]
        with warehouse.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start,"
                " emitted_at, kind, source_file, source_line, load_id) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                rows,
            )
        transform.build(NOVEMBER, DECEMBER, select=PRICING_MODELS)
        yield name


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.warehouse
def test_month_priced_with_every_model_to_the_cent(pricing_database):
    lines = query(
        "select tenant_id, line_no, line_type, meter, price_valid_from, tier, quantity, unit, unit_price,"
        " list_amount, discount_amount, amount from marts.fct_invoice_lines"
        " where invoice_month = '2026-11-01' order by tenant_id, line_no"
    )
    v1, v2 = OLD, dt.date(2026, 11, 16)
    assert lines == [
        # a01: 10% discount, 90-day retention. Packages of 100: 150 alerts -> 2 at 2.00;
        # 60 more reach 210 -> 1 more at the new 1.50.
        ("a01", 1, "usage", "alerts_fired", v1, None, D(150), "alerts", D("2.00"), D("4.00"), D("0.40"), D("3.60")),
        ("a01", 2, "usage", "alerts_fired", v2, None, D(60), "alerts", D("1.50"), D("1.50"), D("0.15"), D("1.35")),
        # 60 GB: 10 free, 50 in tier 1; 100 GB under the new prices continue at 60 (50 billable):
        # 50 fill tier 1 (10–110 on the price sheet), 50 in tier 2
        ("a01", 3, "free_allowance", "ingested_gb", v1, None, D(10), "GB", D(0), D(0), D(0), D(0)),
        ("a01", 4, "usage", "ingested_gb", v1, 1, D(50), "GB", D("0.50"), D("25.00"), D("2.50"), D("22.50")),
        ("a01", 5, "usage", "ingested_gb", v2, 1, D(50), "GB", D("0.45"), D("22.50"), D("2.25"), D("20.25")),
        ("a01", 6, "usage", "ingested_gb", v2, 2, D(50), "GB", D("0.36"), D("18.00"), D("1.80"), D("16.20")),
        # 2880 GB-hours / 720 = 4 GB-month at the 90-day price
        ("a01", 7, "usage", "stored_gb", v1, 3, D(4), "GB-month", D("0.05"), D("0.20"), D("0.02"), D("0.18")),
        # b02: 500.00 commitment
        ("b02", 1, "usage", "query_cpu_seconds", v1, 1, D(12125), "s", D("0.0004"), D("4.85"), D(0), D("4.85")),
        # 1500 GB in the month: volume tier 2 for both segments
        ("b02", 2, "usage", "scanned_gb", v1, 2, D(1000), "GB", D("0.008"), D("8.00"), D(0), D("8.00")),
        ("b02", 3, "usage", "scanned_gb", v2, 2, D(500), "GB", D("0.008"), D("4.00"), D(0), D("4.00")),
        ("b02", 4, "usage", "stored_gb", v1, 2, D(1), "GB-month", D("0.03"), D("0.03"), D(0), D("0.03")),
        ("b02", 5, "commitment_true_up", None, None, None, D(1), "month", None, D("483.12"), D(0), D("483.12")),
        # c03: 100.00 commitment, 5% uplift, 7-day retention. 5 GB all free.
        ("c03", 1, "free_allowance", "ingested_gb", v1, None, D(5), "GB", D(0), D(0), D(0), D(0)),
        ("c03", 2, "usage", "query_cpu_seconds", v1, 1, D(250000), "s", D("0.0004"), D("100.00"), D(0),
         D("100.00")),
        ("c03", 3, "usage", "stored_gb", v1, 1, D(5), "GB-month", D("0.02"), D("0.10"), D(0), D("0.10")),
        # 100.10 - 100.00 = 0.10 x 5% = 0.005 -> 0.01
        ("c03", 4, "overage_uplift", None, None, None, D("0.10"), "USD", D("0.05"), D("0.01"), D(0), D("0.01")),
    ]
    invoices_ = query(
        "select tenant_id, list_subtotal, discount_total, usage_total, commitment_true_up, overage_uplift, total,"
        " line_count from marts.fct_invoices where invoice_month = '2026-11-01' order by tenant_id"
    )
    assert invoices_ == [
        ("a01", D("71.20"), D("7.12"), D("64.08"), D(0), D(0), D("64.08"), 7),
        ("b02", D("16.88"), D(0), D("16.88"), D("483.12"), D(0), D("500.00"), 5),
        ("c03", D("100.10"), D(0), D("100.10"), D(0), D("0.01"), D("100.11"), 4),
    ]


@pytest.mark.warehouse
def test_invoice_lines_describe_tier_allowance_package_and_contract(pricing_database):
    descriptions = dict(query(
        "select tenant_id || ':' || line_no, description from marts.fct_invoice_lines"
        " where invoice_month = '2026-11-01'"
    ))
    assert descriptions["a01:1"] == "Alert rules that fired — 150 alerts in packages of 100 (prices from 2026-11-01)"
    # bounds as the price sheet states them: from the month's first unit, the allowance included
    assert descriptions["a01:3"] == "Log data ingested — first 10 GB free (prices from 2026-11-01)"
    assert descriptions["a01:4"] == "Log data ingested — tier 1: 10–110 GB (prices from 2026-11-01)"
    assert descriptions["a01:6"] == "Log data ingested — tier 2: 110–1,010 GB (prices from 2026-11-16)"
    assert descriptions["a01:7"] == "Log data retained in storage — 90-day retention"
    assert descriptions["b02:3"] == (
        "Log data scanned by queries — volume tier 2: 1,000–10,000 GB in the month (prices from 2026-11-16)")
    assert descriptions["b02:5"] == "Minimum monthly commitment of 500.00 USD: true-up of usage of 16.88 USD"
    assert descriptions["c03:4"] == (
        "Overage uplift of 5% on 0.10 USD of usage above the commitment of 100.00 USD")


UNIT_TESTS_OF_THE_PRICE_SHEET = ("priced_allowance_then_tiers_prints_the_price_sheet",
                                 "priced_allowance_then_price_prints_over_the_allowance")


@pytest.mark.warehouse
def test_invoice_lines_print_tier_bounds_as_the_price_sheet_states_them(pricing_database):
    """dbt unit tests of the pricing model (dbt_project/.../_pricing.yml): "first 5 GB free",
    "tier 1: 5–1,000 GB", "tier 2: 1,000–10,000 GB" for a sheet with an allowance and tiers, and
    "first 100 alerts free", "tier 1: over 100 alerts" for an allowance then a price. A failing
    one fails the build, naming it."""
    result = transform.build(select="int_usage_segments_priced", unit_tests=True)
    ran = {node.name: node.status for node in result.nodes if node.resource_type == "unit_test"}
    assert {name: ran.get(name) for name in UNIT_TESTS_OF_THE_PRICE_SHEET} == dict.fromkeys(
        UNIT_TESTS_OF_THE_PRICE_SHEET, "pass")


@pytest.mark.warehouse
def test_invoice_pdfs_show_every_kind_of_line_and_the_mart_total(pricing_database):
    records = invoices.render_month("2026-11", workers=1, issue_date=dt.date(2026, 12, 1))
    totals = dict(query("select tenant_id, total from marts.fct_invoices where invoice_month = '2026-11-01'"))
    assert sorted(r.tenant_id for r in records) == ["a01", "b02", "c03"]
    texts = {}
    for record in records:
        reader = pypdf.PdfReader(io.BytesIO(Path(record.pdf_uri).read_bytes()))
        # one line of text: the description column wraps wherever the layout wants
        text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
        texts[record.tenant_id] = re.sub(r"(?<=\w-) (?=\w)", "", text)  # "GB-\nmonth" wrapped in a cell
        assert record.total == totals[record.tenant_id]
        assert f"Total {totals[record.tenant_id]:,.2f} USD" in texts[record.tenant_id]
        assert "LIST AMOUNT" in texts[record.tenant_id]
        assert "DISCOUNT" in texts[record.tenant_id]
    a01, b02, c03 = texts["a01"], texts["b02"], texts["c03"]
    assert "first 10 GB free" in a01
    sheet = a01.replace("– ", "–")  # a range may wrap after its dash
    assert "tier 1: 10–110 GB" in sheet
    assert "tier 2: 110–1,010 GB" in sheet
    assert "50.000 GB 0.36 18.00 −1.80 16.20" in a01  # quantity, unit, unit price, list, discount, amount
    assert "Usage at list prices 71.20 USD" in a01
    assert "Discount −7.12 USD" in a01
    assert "Total 64.08 USD" in a01
    assert "Minimum monthly commitment of 500.00 USD" in b02
    assert "Commitment true-up 483.12 USD" in b02
    assert "Total 500.00 USD" in b02
    assert "1.000 month — 483.12 — 483.12" in b02  # a true-up: one month, no unit price
    assert "Overage uplift of 5%" in c03
    assert "0.10 USD 5% 0.01 — 0.01" in c03  # 0.10 above the commitment at 5%
    assert "Overage uplift 0.01 USD" in c03
    assert "Total 100.11 USD" in c03


# --------------------------------------------------------------------------- SQL against the reference

MONTHS = [(dt.date(2026, 10, 1), 744), (dt.date(2026, 11, 1), 720), (dt.date(2027, 2, 1), 672)]
MODELS = ["per_unit", "graduated", "volume", "package", "retention"]
unit_prices = st.one_of(st.decimals(min_value=0, max_value=2, places=6),
                        st.sampled_from(["0.005", "0.015", "0.5", "1.25"]).map(D))  # half cents to round


def amounts(coarse: bool, low: int = 0) -> st.SearchStrategy[Decimal]:
    """Quantities, bounds and allowances. ``coarse``: multiples of 100 up to 500, so usage often
    lands exactly on tier bounds, allowances and package edges; else any 3-decimal amount."""
    if coarse:
        return st.integers(max(low, 0), 5).map(lambda n: D(n * 100))
    return st.decimals(min_value=D(low) / 1000, max_value=3000, places=3)


@st.composite
def prices(draw, valid_from: dt.date, coarse: bool) -> Price:
    model = draw(st.sampled_from(MODELS))
    free = draw(st.one_of(st.just(D(0)), amounts(coarse)))
    if model == "package":
        size = draw(st.sampled_from([D(100), D(200)]) if coarse else st.decimals(min_value="0.5", max_value=500,
                                                                                   places=2))
        return Price(valid_from, model, (), free, size, draw(unit_prices))
    if model == "per_unit":
        return Price(valid_from, model, (Tier(1, D(0), None, draw(unit_prices)),), free)
    if model == "retention":
        days = sorted({*draw(st.lists(st.sampled_from([7, 30, 60, 90]), max_size=3)), 365})
        return Price(valid_from, model, tuple(Tier(n, D(0), None, draw(unit_prices), d)
                                              for n, d in enumerate(days, 1)), free)
    bounds = sorted(set(draw(st.lists(amounts(coarse, low=1), max_size=3))))
    lowers = [D(0), *bounds]
    uppers = [*bounds, None]
    return Price(valid_from, model, tuple(Tier(n, lower, upper, draw(unit_prices))
                                          for n, (lower, upper) in enumerate(zip(lowers, uppers, strict=True), 1)),
                 free)


@st.composite
def scenarios(draw) -> dict:
    month, hours = draw(st.sampled_from(MONTHS))
    coarse = draw(st.booleans())
    change_days = sorted(set(draw(st.lists(st.integers(2, 28), max_size=2))))
    starts = [OLD, *(month.replace(day=d) for d in change_days)]
    versions = [draw(prices(start, coarse)) for start in starts]
    terms = draw(st.one_of(st.none(), st.fixed_dictionaries({
        "discount": st.one_of(st.just(D(0)), st.decimals(min_value=0, max_value=100, places=2)),
        "commitment": st.one_of(st.just(D(0)), st.decimals(min_value=0, max_value=2000, places=2)),
        "uplift": st.one_of(st.just(D(0)), st.decimals(min_value=0, max_value=25, places=2)),
        "retention": st.sampled_from([7, 30, 45, 90, 365]),
    })))
    return {
        "month": month,
        "hours": hours,
        "gauge": draw(st.booleans()),
        "versions": versions,
        "terms": terms,
        "usage": draw(st.dictionaries(st.integers(0, hours - 1), amounts(coarse), min_size=1, max_size=6)),
    }


def reference_lines(scenario: dict) -> list[tuple]:
    """The scenario priced by chargeback.engine.pricing, as (line_type, price_valid_from, tier, ...) rows."""
    month, versions = scenario["month"], scenario["versions"]
    start = dt.datetime.combine(month, dt.time(), dt.UTC)
    ends = [v.valid_from for v in versions[1:]] + [dt.date(9999, 1, 1)]
    segments = []
    for version, end in zip(versions, ends, strict=True):
        used = [q for h, q in scenario["usage"].items()
                if version.valid_from <= (start + dt.timedelta(hours=h)).date() < end]
        if used:
            segments.append(Segment(version, sum(used, D(0))))
    terms = scenario["terms"] or {"discount": D(0), "commitment": D(0), "uplift": D(0), "retention": 30}
    lines = price_meter_month(segments, divisor=scenario["hours"] if scenario["gauge"] else 1,
                              discount_percent=terms["discount"], retention_days=terms["retention"])
    lines += contract_lines(sum((x.amount for x in lines), D(0)), terms["commitment"], terms["uplift"])
    return [(x.line_type, x.price_valid_from, x.tier, x.quantity, x.unit_price, x.list_amount,
             x.discount_amount, x.amount) for x in lines]


class CompiledSQL(str):
    """The compiled model; short in hypothesis' report of a failing example."""

    def __repr__(self) -> str:
        return "<fct_invoice_lines as compiled by dbt>"


@pytest.fixture(scope="module")
def invoice_lines_sql(pricing_database) -> str:
    """fct_invoice_lines' select as dbt compiles it (no window: every month of the usage)."""
    outcome = transform._invoke(["compile", "--select", "fct_invoice_lines", "--quiet"], get_settings())
    assert outcome.success, outcome.exception
    (model,) = [r.node for r in outcome.result.results if r.node.resource_type == "model"]
    return CompiledSQL(model.compiled_code)


def price_in_sql(sql: str, batch: list[dict]) -> dict[str, list[tuple]]:
    """Insert the scenarios as tenants p0, p1, ... with price books pb0, pb1, ..., run the
    model's SQL, and roll everything back."""
    tenants, terms, prices_, tiers, usage = [], [], [], [], []
    for i, s in enumerate(batch):
        tenant, book, meter = f"p{i}", f"pb{i}", "pg" if s["gauge"] else "pc"
        tenants.append((tenant, "Property", "Org", "Unit", "Team", book, None))
        if s["terms"]:
            t = s["terms"]
            terms.append((tenant, OLD, None, t["discount"], t["commitment"], t["uplift"], t["retention"]))
        ends = [v.valid_from for v in s["versions"][1:]] + [None]
        for version, end in zip(s["versions"], ends, strict=True):
            prices_.append((book, version.valid_from, end, "USD", meter, version.model, version.free_allowance,
                            version.package_size, version.package_price))
            tiers += [(book, version.valid_from, meter, t.tier, t.lower, t.upper, t.retention_days, t.unit_price)
                      for t in version.tiers]
        start = dt.datetime.combine(s["month"], dt.time(), dt.UTC)
        usage += [(tenant, meter, start + dt.timedelta(hours=h), q, "u", "gauge" if s["gauge"] else "counter", 1)
                  for h, q in s["usage"].items()]
    with warehouse.connect() as conn, conn.cursor() as cur:
        try:
            cur.execute("insert into config.meters values ('pc', 'u', 'counter', 'c'), ('pg', 'u', 'gauge', 'g')")
            cur.executemany("insert into config.tenants values (%s, %s, %s, %s, %s, %s, %s)", tenants)
            cur.executemany("insert into config.tenant_terms (tenant_id, valid_from, valid_to, discount_percent,"
                            " monthly_commitment, overage_uplift_percent, retention_days)"
                            " values (%s, %s, %s, %s, %s, %s, %s)", terms)
            cur.executemany("insert into config.prices (price_book, valid_from, valid_to, currency, meter,"
                            " pricing_model, free_allowance, package_size, package_price)"
                            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s)", prices_)
            cur.executemany("insert into config.price_tiers (price_book, valid_from, meter, tier, lower_bound,"
                            " upper_bound, retention_days, unit_price) values (%s, %s, %s, %s, %s, %s, %s, %s)",
                            tiers)
            cur.executemany("insert into marts.fct_usage_hourly (tenant_id, meter, hour_start, quantity, unit,"
                            " kind, snapshot_count, last_learned_at) values (%s, %s, %s, %s, %s, %s, %s, now())",
                            usage)
            # pricing reads the month by day: int_usage_daily, summed as its model sums the hours
            cur.execute("insert into intermediate.int_usage_daily (usage_day, tenant_id, meter, quantity, unit, kind,"
                        " hour_count, last_hour_start)"
                        " select (hour_start at time zone 'UTC')::date, tenant_id, meter, sum(quantity), min(unit),"
                        " min(kind), count(*), max(hour_start) from marts.fct_usage_hourly where tenant_id like 'p%'"
                        " group by 1, 2, 3")
            rows = cur.execute(
                "select tenant_id, invoice_month, line_type, price_valid_from, tier, quantity, unit_price,"
                f" list_amount, discount_amount, amount from ({sql}) as lines"
                " where tenant_id like 'p%' order by tenant_id, invoice_month, line_no"
            ).fetchall()
        finally:
            conn.rollback()
    months = {f"p{i}": s["month"] for i, s in enumerate(batch)}
    priced: dict[str, list[tuple]] = {tenant: [] for tenant in months}
    for tenant, month, *line in rows:
        if month == months[tenant]:  # commitments also bill the other months the usage spans
            priced[tenant].append(tuple(line))
    return priced


@pytest.mark.warehouse
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(scenarios(), min_size=1, max_size=10))
def test_sql_prices_like_the_reference_to_the_cent(invoice_lines_sql, batch):
    priced = price_in_sql(invoice_lines_sql, batch)
    for i, scenario in enumerate(batch):
        assert priced[f"p{i}"] == reference_lines(scenario), scenario
