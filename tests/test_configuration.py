"""The reviewed configuration: clear messages, and all of it applies or none does."""

from __future__ import annotations

import datetime as dt
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.engine import configuration
from chargeback.platform import warehouse
from conftest import database_of_its_own

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture
def config_dir(tmp_path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_shipped_configuration_is_valid():
    cfg = configuration.read(CONFIG)
    assert len(cfg.tenants) == 50
    assert cfg.meter_names == {"ingested_gb", "stored_gb", "scanned_gb", "query_cpu_seconds", "alerts_fired"}


def test_unknown_meter_in_a_price_book_is_named(config_dir):
    _edit(config_dir / "price_books.yml", 'query_cpu_seconds: "0.0003"', 'query_cpu_secs: "0.0003"')
    with pytest.raises(configuration.ConfigError) as err:
        configuration.read(config_dir)
    assert "price book enterprise prices meter 'query_cpu_secs', which meters.yml does not define" in str(err.value)
    assert "price book enterprise has no price for meter 'query_cpu_seconds'" in str(err.value)


def test_tenant_without_a_known_price_book_is_named(config_dir):
    _edit(config_dir / "tenants.yml", "price_book: standard", "price_book: platinum")
    with pytest.raises(configuration.ConfigError, match="tenant t007 is billed on price book 'platinum'"):
        configuration.read(config_dir)


def test_a_float_like_negative_cost_is_refused_with_file_entry_and_field(config_dir):
    _edit(config_dir / "cost_pools.yml", 'monthly_cost: "9500.00"', 'monthly_cost: "-9500.00"')
    with pytest.raises(configuration.ConfigError) as err:
        configuration.read(config_dir)
    where = f"{config_dir / 'cost_pools.yml'}: cost_pools pool storage (from 2020-01-01), field monthly_cost"
    assert where in str(err.value)


@pytest.mark.warehouse
def test_invalid_configuration_leaves_the_warehouse_unchanged(config_dir):
    configuration.load(CONFIG)
    _edit(config_dir / "tenants.yml", "tenant_id: t050", "tenant_id: t001")  # a duplicate
    with pytest.raises(configuration.ConfigError, match="tenant t001 is listed twice"):
        configuration.load(config_dir)
    with warehouse.connect() as conn:
        assert conn.execute("select count(*) from config.tenants").fetchone()[0] == 50


BAD_EDITS = {
    "tiers out of order": ("price_books.yml", '{to: "10005", unit_price: "0.35"}',
                           '{to: "900", unit_price: "0.35"}'),
    "fixed percentages": ("cost_pools.yml", "{t001: 50, t002: 30, t003: 20}", "{t001: 50, t002: 30, t003: 10}"),
    "pool without a rule": ("cost_pools.yml", "    allocation: {method: proportional, driver: ingested_gb}\n", ""),
    "unknown meter": ("price_books.yml", 'query_cpu_seconds: "0.0003"', 'query_cpu_secs: "0.0003"'),
    "overlapping versions": ("cost_pools.yml", "valid_to: 2026-10-15", "valid_to: 2026-10-20"),
}


def _config_tables() -> dict[str, list[tuple]]:
    with warehouse.connect() as conn:
        return {t: sorted(conn.execute(f"select * from {t}").fetchall(), key=repr) for t in configuration._TABLES}


@pytest.mark.warehouse
@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_each_bad_configuration_changes_nothing_in_the_warehouse(config_dir, case):
    configuration.load(CONFIG)
    before = _config_tables()
    name, old, new = BAD_EDITS[case]
    _edit(config_dir / name, old, new)
    _edit(config_dir / "tenants.yml", "name: Globex Cloud risk-staging", "name: Renamed")  # a good edit too
    with pytest.raises(configuration.ConfigError):
        configuration.load(config_dir)
    assert _config_tables() == before


def _problems(config_dir: Path) -> str:
    with pytest.raises(configuration.ConfigError) as err:
        configuration.read(config_dir)
    return str(err.value)


def test_tiers_out_of_order_are_named_with_book_and_meter(config_dir):
    _edit(config_dir / "price_books.yml", '{to: "10005", unit_price: "0.35"}', '{to: "900", unit_price: "0.35"}')
    assert (
        f"{config_dir / 'price_books.yml'}: price_books price_book enterprise (from 2020-01-01), "
        "field prices.ingested_gb: tiers overlap or are out of order: to 900 comes after to 1005"
    ) in _problems(config_dir)


def test_a_tier_without_a_bound_before_the_last_is_refused(config_dir):
    _edit(config_dir / "price_books.yml", '{to: "100000", unit_price: "0.0035"}', '{unit_price: "0.0035"}')
    assert "field prices.scanned_gb: only the last tier may omit `to`" in _problems(config_dir)


def test_tiers_written_the_old_way_are_refused_with_the_rewrite_that_keeps_the_prices(config_dir):
    """``up_to`` counted after the free allowance; a price sheet counts from the month's first
    unit. The message gives the tiers to write instead, with the same effective prices."""
    _edit(config_dir / "price_books.yml", '{to: "1005", unit_price: "0.42"}', '{up_to: "1000", unit_price: "0.42"}')
    _edit(config_dir / "price_books.yml", '{to: "10005", unit_price: "0.35"}', '{up_to: "10000", unit_price: "0.35"}')
    assert _problems(config_dir) == (
        f"invalid configuration:\n{config_dir / 'price_books.yml'}: price_books price_book enterprise"
        " (from 2020-01-01), field prices.ingested_gb: tiers end at `to`, counted from the first unit of the month"
        " with the free allowance included, as a price sheet states them; `up_to` counted units after the free"
        ' allowance of 5 and is no longer read. For the same prices, write the tiers as: [{to: "1005",'
        ' unit_price: "0.42"}, {to: "10005", unit_price: "0.35"}, {unit_price: "0.25"}]')


def test_a_tier_within_the_free_allowance_is_refused(config_dir):
    _edit(config_dir / "price_books.yml", '{to: "1005", unit_price: "0.42"}', '{to: "5", unit_price: "0.42"}')
    assert ("field prices.ingested_gb: the first tier ends at 5, within the free allowance of 5: `to` counts"
            " from the first unit of the month, the free allowance included, so every tier must end above the"
            " allowance") in _problems(config_dir)


def test_fixed_percentages_must_add_up_to_100(config_dir):
    _edit(config_dir / "cost_pools.yml", "{t001: 50, t002: 30, t003: 20}", "{t001: 50, t002: 30, t003: 10}")
    assert (
        "cost_pools pool support_contract (from 2020-01-01), field allocation[1]: "
        "fixed percentages add up to 90, not 100"
    ) in _problems(config_dir)


def test_parts_must_add_up_to_100(config_dir):
    _edit(config_dir / "cost_pools.yml", "{share_percent: 60, method: even}", "{share_percent: 50, method: even}")
    assert (
        f"{config_dir / 'cost_pools.yml'}: pool observability_stack (from 2020-01-01): "
        "the parts' share_percent add up to 90, not 100"
    ) in _problems(config_dir)


def test_a_pool_without_a_rule_is_named(config_dir):
    _edit(config_dir / "cost_pools.yml", "    allocation: {method: proportional, driver: ingested_gb}\n", "")
    assert (
        f"{config_dir / 'cost_pools.yml'}: pool network (from 2020-01-01) has no allocation rule: "
        "add `allocation:` with a method"
    ) in _problems(config_dir)


def test_a_method_with_the_wrong_settings_says_what_it_needs(config_dir):
    _edit(config_dir / "cost_pools.yml", "{method: direct, tenant: t004}", "{method: direct}")
    assert "field allocation[1]: method direct needs `tenant`: the tenant the pool belongs to" in _problems(config_dir)


def test_allocation_to_an_unknown_tenant_or_meter_is_named(config_dir):
    _edit(config_dir / "cost_pools.yml", "{method: direct, tenant: t004}", "{method: direct, tenant: t404}")
    _edit(config_dir / "cost_pools.yml", "{meter: alerts_fired, weight: 10}", "{meter: alerts, weight: 10}")
    problems = _problems(config_dir)
    assert "pool dedicated_cluster (from 2020-01-01) is allocated to tenant 't404'" in problems
    assert "pool platform_team (from 2020-01-01) is allocated by meter 'alerts', which meters.yml" in problems


def test_overlapping_versions_of_a_pool_are_refused(config_dir):
    _edit(config_dir / "cost_pools.yml", "valid_to: 2026-10-15", "valid_to: 2026-10-20")
    assert (
        f"{config_dir / 'cost_pools.yml'}: pool compute: the version from 2020-01-01 (until 2026-10-20) "
        "overlaps the version from 2026-10-15"
    ) in _problems(config_dir)


def test_overlapping_versions_of_a_price_book_are_refused(config_dir):
    _edit(config_dir / "price_books.yml", "    valid_to: 2026-10-15\n", "")
    assert "price book standard: the version from 2020-01-01 (open-ended) overlaps the version from 2026-10-15" in (
        _problems(config_dir)
    )


def test_retention_longer_than_any_tier_is_named(config_dir):
    _edit(config_dir / "tenants.yml", "retention_days: 7", "retention_days: 400")
    assert (
        "price book enterprise (from 2020-01-01) has no stored_gb retention tier of 400 days or more, "
        "which tenant t003 keeps its logs for"
    ) in _problems(config_dir)


def test_terms_start_on_the_first_of_a_month(config_dir):
    _edit(config_dir / "tenants.yml", "valid_from: 2025-07-01", "valid_from: 2025-07-15")
    assert "tenants tenant_id t002, field terms[1]: terms start on the first day of a month, not 2025-07-15" in (
        _problems(config_dir)
    )


@pytest.mark.warehouse
def test_a_rule_whose_driver_has_no_usage_in_the_period_is_named():
    from datetime import UTC, datetime

    configuration.load(CONFIG)
    start, end = datetime(2031, 3, 1, tzinfo=UTC), datetime(2031, 4, 1, tzinfo=UTC)
    with warehouse.connect() as conn:
        conn.execute("delete from raw.usage_snapshots where hour_start >= %s and hour_start < %s", (start, end))
        conn.execute(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id)"
            " select 'cfg-test-' || meter, 't001', meter, 1, 'GB', %s, %s, 'counter', 'test', 1, 0"
            " from unnest(array['ingested_gb', 'stored_gb', 'scanned_gb', 'query_cpu_seconds']) as meter",
            (start, start),
        )
    try:
        problems = configuration.drivers_without_usage(start, end)
    finally:
        with warehouse.connect() as conn:
            conn.execute("delete from raw.usage_snapshots where snapshot_id like 'cfg-test-%'")
    assert problems == [
        "pool platform_team (rule from 2020-01-01) is allocated by meter 'alerts_fired', which has no usage "
        "from 2031-03-01 00:00 to 2031-04-01 00:00 UTC: check the rule or the meter's data"
    ]


# ---- the finalized-month guard -------------------------------------------------------
# November 2026 is final (a row inserted here, as billing_monthly's finalization would):
# every version in effect before 2026-12-01 is frozen.

FROZEN_EDITS = {
    "a price": ("price_books.yml", 'query_cpu_seconds: "0.0003"', 'query_cpu_seconds: "0.0002"',
                "price book enterprise (from 2020-01-01), meter query_cpu_seconds"),
    "a tier": ("price_books.yml", '{to: "1005", unit_price: "0.42"}', '{to: "1005", unit_price: "0.41"}',
               "price book enterprise (from 2020-01-01), meter ingested_gb"),
    "a cost pool": ("cost_pools.yml", 'monthly_cost: "9500.00"', 'monthly_cost: "9600.00"',
                    "cost pool storage (from 2020-01-01)"),
    "a rule": ("cost_pools.yml", "{t001: 50, t002: 30, t003: 20}", "{t001: 40, t002: 40, t003: 20}",
               "cost pool support_contract (from 2020-01-01)"),
    "terms": ("tenants.yml", 'discount_percent: "10"\n        retention_days: 90',
              'discount_percent: "12"\n        retention_days: 90', "terms of tenant t001 (from 2024-01-01)"),
}


@pytest.fixture(scope="module")
def _finalized_to_november(test_warehouse) -> str:
    """A database of its own whose last final month is November 2026: in the session's database
    another module may have finalized a later month (test_focus finalizes May 2031), and the
    refusal names the last one."""
    with database_of_its_own("configuration") as name, warehouse.connect(admin=True) as conn:
        conn.execute(  # a final row: only the owner writes one directly
            "insert into pipeline.invoices (invoice_number, tenant_id, period_start, period_end, close_period,"
            " currency, total, pdf_uri, pdf_sha256, status, issue_date, finalized_at, usage_as_of)"
            " values ('GUARD-2026-11', 't001', date '2026-11-01', date '2026-11-30', date '2026-11-01',"
            " 'USD', 0, 'memory://guard.pdf', '', 'final', date '2026-12-04', now(), now())")
    return name


@pytest.fixture
def november_final(_finalized_to_november, monkeypatch) -> None:
    monkeypatch.setenv("CHARGEBACK_DATABASE", _finalized_to_november)


@pytest.mark.warehouse
@pytest.mark.parametrize("case", sorted(FROZEN_EDITS))
def test_a_version_in_effect_in_a_finalized_month_cannot_change(config_dir, november_final, case):
    configuration.load(CONFIG)
    before = _config_tables()
    name, old, new, version = FROZEN_EDITS[case]
    _edit(config_dir / name, old, new)
    with pytest.raises(configuration.FinalizedMonthChange) as refused:
        configuration.load(config_dir)
    assert str(refused.value) == (
        f"chargeback refusal: configuration change to {version} at {name}: that version was in effect during"
        " months whose invoices are final (up to 2026-11), and changing it would change issued invoices; nothing"
        " was applied — leave it as it was and add a new version from 2026-12-01 instead")
    assert _config_tables() == before
    with warehouse.connect() as conn:
        assert conn.execute("select line from pipeline.events order by event_id desc limit 1").fetchone()[0] == str(
            refused.value)


@pytest.mark.warehouse
def test_a_new_version_from_the_first_unfinalized_day_is_applied(config_dir, november_final):
    configuration.load(CONFIG)
    _edit(config_dir / "cost_pools.yml",
          '    monthly_cost: "9500.00"\n    currency: USD\n    valid_from: 2020-01-01\n',
          '    monthly_cost: "9500.00"\n    currency: USD\n    valid_from: 2020-01-01\n    valid_to: 2026-12-01\n')
    _edit(config_dir / "cost_pools.yml", "  - pool: network\n",
          "  - pool: storage\n    description: Hot and warm log storage, bigger\n    monthly_cost: \"9900.00\"\n"
          "    currency: USD\n    valid_from: 2026-12-01\n    allocation: {method: proportional, driver: stored_gb}\n"
          "  - pool: network\n")
    _edit(config_dir / "cost_pools.yml", "Hot and warm log storage\n", "Hot and warm log storage (corrected)\n")
    configuration.load(config_dir)
    with warehouse.connect() as conn:
        versions = conn.execute("select valid_from, valid_to, monthly_cost, description from config.cost_pools"
                                " where pool = 'storage' order by valid_from").fetchall()
    assert [v[:3] for v in versions] == [(dt.date(2020, 1, 1), dt.date(2026, 12, 1), Decimal("9500.00")),
                                         (dt.date(2026, 12, 1), None, Decimal("9900.00"))]
    assert versions[0][3] == "Hot and warm log storage (corrected)"
    configuration.load(CONFIG)
