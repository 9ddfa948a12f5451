"""The reviewed configuration: clear messages, and all of it applies or none does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chargeback import configuration, warehouse

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
    _edit(config_dir / "price_books.yml", "alerts_fired: \"0.01\"", "alerts_fird: \"0.01\"")
    with pytest.raises(configuration.ConfigError) as err:
        configuration.read(config_dir)
    assert "price book standard prices meter 'alerts_fird', which meters.yml does not define" in str(err.value)
    assert "price book standard has no price for meter 'alerts_fired'" in str(err.value)


def test_tenant_without_a_known_price_book_is_named(config_dir):
    _edit(config_dir / "tenants.yml", "price_book: standard", "price_book: platinum")
    with pytest.raises(configuration.ConfigError, match="tenant t007 is billed on price book 'platinum'"):
        configuration.read(config_dir)


def test_a_float_like_negative_cost_is_refused_with_file_entry_and_field(config_dir):
    _edit(config_dir / "cost_pools.yml", 'monthly_cost: "9500.00"', 'monthly_cost: "-9500.00"')
    with pytest.raises(configuration.ConfigError) as err:
        configuration.read(config_dir)
    assert f"{config_dir / 'cost_pools.yml'}: cost_pools pool storage, field monthly_cost" in str(err.value)


@pytest.mark.warehouse
def test_invalid_configuration_leaves_the_warehouse_unchanged(config_dir):
    configuration.load(CONFIG)
    _edit(config_dir / "tenants.yml", "tenant_id: t050", "tenant_id: t001")  # a duplicate
    with pytest.raises(configuration.ConfigError, match="tenant t001 is listed twice"):
        configuration.load(config_dir)
    with warehouse.connect() as conn:
        assert conn.execute("select count(*) from config.tenants").fetchone()[0] == 50
