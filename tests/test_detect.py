"""Anomaly detection on daily series (chargeback.insights.detect): seasonal, growing, noisy
series with injected spikes and drops, checked the way the bench will count them."""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from chargeback.insights.detect import Thresholds, expect, flag, may_be_missing_data

DAYS = 90


def series(n: int, seed: int = 7) -> np.ndarray:
    """``n`` daily cost series: a level of 50–500 USD, 0–1 %/day growth, weekends 40 % lower,
    5 % noise."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(50, 500, (n, 1))
    growth = (1 + rng.uniform(0, 0.01, (n, 1))) ** np.arange(DAYS)
    weekend = np.where(np.arange(DAYS) % 7 >= 5, 0.6, 1.0)
    return level * growth * weekend * rng.normal(1, 0.05, (n, DAYS))


def test_the_expected_value_follows_the_weekly_season_and_the_growth():
    values = series(200)
    for day in (40, 61, 89):  # a weekday and weekend days
        e = expect(values, day)
        error = (values[:, day] - e.expected) / values[:, day]
        assert abs(np.median(error)) < 0.01  # no bias, whichever weekday
        assert np.median(np.abs(error)) < 0.06  # the noise is 5 %
        assert np.all(e.history_days == 28)


def test_spikes_and_drops_are_found_and_a_clean_series_rarely_alarms():
    values = series(300)
    day = 75
    spiked, dropped = values.copy(), values.copy()
    spiked[:100, day] *= 1.6  # a noisy source
    dropped[100:200, day] *= 0.2  # a silent producer
    clean = 0
    _, found_spikes = flag(spiked, day)
    _, found_drops = flag(dropped, day)
    assert found_spikes[:100].mean() >= 0.9
    assert found_drops[100:200].mean() >= 0.9
    for other in range(28, DAYS):  # every day of the untouched series
        clean += flag(values, other)[1].sum()
    assert clean / (300 * (DAYS - 28)) < 0.005
    e, _ = flag(dropped, day)
    assert all(may_be_missing_data(dropped[i, day], e.expected[i]) for i in range(100, 200))
    assert not any(may_be_missing_data(values[i, day], e.expected[i]) for i in range(200, 300))


def test_small_or_young_series_are_not_flagged():
    values = series(50)
    values[:, 60] *= 3
    _, found = flag(values, 60, thresholds=Thresholds(min_amount=Decimal(10_000)))
    assert not found.any()  # every impact below the floor
    _, found = flag(values, 60, tenant_expected=np.full(50, 1e9))
    assert not found.any()  # every impact below 5 % of a very large tenant's day
    young = values[:, 50:]
    young[:, 10] *= 3
    _, found = flag(young, 10)
    assert not found.any()  # ten days of history: too early
    assert flag(values, 60)[1].all()
