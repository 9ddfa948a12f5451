"""config/anomalies.yml: the shipped file reads, overrides apply per meter then per tenant, and a
bad file is refused naming the file and every field at fault."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chargeback.insights import anomaly_config
from chargeback.insights.detect import Thresholds


def test_without_the_file_the_code_defaults_hold(tmp_path):
    config = anomaly_config.read(tmp_path)
    assert config.for_series("t001", "ingested_gb") == Thresholds()
    assert (config.delivery, config.digest_hour_utc) == ("each", 8)


def test_the_shipped_file_lowers_the_money_floor_for_the_small_demo_tenants(settings):
    config = anomaly_config.read(settings.root / "config")
    assert config.for_series("t001", "ingested_gb").min_amount == Decimal("2.00")
    assert config.for_series("t001", "ingested_gb").z == 3.5


def test_a_tenants_override_wins_over_its_meters(tmp_path):
    (tmp_path / "anomalies.yml").write_text(
        'defaults: {min_amount: "5.00", z: 4}\n'
        "meters: {stored_gb: {min_share: 0.01, z: 3}}\n"
        'tenants: {t014: {min_amount: "50.00", z: 5}}\n'
        "delivery: digest\ndigest_hour_utc: 6\n")
    config = anomaly_config.read(tmp_path)
    assert config.for_series("t001", "ingested_gb") == Thresholds(z=4, min_amount=Decimal("5.00"))
    assert config.for_series("t001", "stored_gb") == Thresholds(z=3, min_amount=Decimal("5.00"), min_share=0.01)
    assert config.for_series("t014", "stored_gb") == Thresholds(z=5, min_amount=Decimal("50.00"), min_share=0.01)
    assert (config.delivery, config.digest_hour_utc) == ("digest", 6)


@pytest.mark.parametrize(("text", "fault"), [
    ("defaults: {z: -1}\n", "field defaults.z: Input should be greater than 0"),
    ('defaults: {min_amount: "1.234"}\n', "field defaults.min_amount"),
    ("defaults: {min_history_days: 3}\n", "field defaults.min_history_days"),
    ("delivery: sms\n", "field delivery"),
    ("tenants: {t014: {floor: 3}}\n", "field tenants.t014.floor: Extra inputs are not permitted"),
    ("digest_hour_utc: 24\n", "field digest_hour_utc"),
    ("defaults: [\n", "not valid YAML"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_field(tmp_path, text, fault):
    (tmp_path / "anomalies.yml").write_text(text)
    with pytest.raises(anomaly_config.ConfigError) as refused:
        anomaly_config.read(tmp_path)
    assert str(tmp_path / "anomalies.yml") in str(refused.value)
    assert fault in str(refused.value)
