"""Is a day's amount out of line? A robust expected value with a weekly season, and a robust spread.

Issue 12 asks for anomalies on daily series (usage, cost to serve, billed; per tenant × meter,
and per source for a tenant's biggest sources) that finance can trust: few false alarms on
noisy, seasonal, growing series; spikes and drops both. Many thousands of series are checked
every hour, so the method is vectorised (one NumPy pass over all series), not a model fit per
series — the same choice as the forecasts (:mod:`chargeback.insights.forecast`).

Series are non-negative amounts (or usage), taken as ``log(1 + x)``: a weekly season and growth
are proportions of the level, which the logarithm makes sums. For the day ``t`` of a series,
from the ``WINDOW`` (28) days before it — at least
``Thresholds.min_history_days`` (14) of them with data:

1. **weekly season**: each weekday's median distance from the centred 7-day moving median,
   over the ``SEASON_WINDOW`` (56) days before ``t``: eight of each weekday, so that two bursts
   on the same weekday a few weeks apart do not move it (blind to growth over the window);
2. **level and trend**: the seasonally adjusted median of each week of the window; the
   expected value is the last week's median carried forward by the median week-on-week change
   (``level + slope × 4``: the recent median sits 4 days before ``t``), plus ``t``'s weekday.
   The median of three weekly changes ignores one step: after a lasting change (a new price,
   a retention class) the level follows within half a week and the trend does not overshoot;
3. **spread**: the day's noise from the week-on-week changes of each weekday (1.4826 × their
   median absolute deviation / √2: a standard deviation a spike cannot inflate, and no fitted
   season to shrink it), times 1.75 for the expected value's own error (calibrated on simulated series); floored at
   ``Thresholds.min_spread`` of the expected value, so a perfectly regular series does not
   alarm on a rounding difference. Spread and z-score are on the logarithm (a z of 4 is about
   the same surprise on a 50 USD and a 5,000 USD series); the expected value and the impact
   are in currency.

A day is an anomaly when its robust z-score ``(actual − expected) / spread`` passes
``Thresholds.z`` **and** its impact passes both floors: ``min_amount`` (currency) and
``min_share`` of the tenant's expected daily amount. Spikes and drops are both flagged; a drop
is marked ``may_be_missing_data`` when the day's actual is below ``drop_as_missing`` of the
expected (a silent producer looks like that, and the completeness check says more).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

WINDOW = 28
SEASON_WINDOW = 56
MAD_TO_SIGMA = 1.4826
PREDICTION = 1.75  # the expected value's own error on top of the day's noise (see expect)


@dataclass(frozen=True)
class Thresholds:
    """When a deviation is an anomaly (docs/DECISIONS.md states the defaults)."""

    z: float = 3.5
    min_amount: Decimal = Decimal("10.00")
    min_share: float = 0.05
    min_history_days: int = 14
    min_spread: float = 0.02
    """On ``log(1 + x)``: about 2 % of the expected value."""
    drop_as_missing: float = 0.5


@dataclass(frozen=True)
class Expectation:
    """Per series, for one day: what was expected (in the series' unit), its spread and the day's
    robust z-score (on ``log(1 + x)``), and how many days of history it rests on."""

    expected: np.ndarray
    spread: np.ndarray
    z: np.ndarray
    history_days: np.ndarray


def expect(values: np.ndarray, day: int) -> Expectation:
    """Expected value, spread and z-score of ``values[:, day]`` (series × days; NaN: no data)
    from the ``WINDOW`` days before ``day`` (the season from the ``SEASON_WINDOW`` days before)."""
    values = np.log1p(np.maximum(np.asarray(values, dtype=float), 0))
    start = max(0, day - WINDOW)
    window = values[:, start:day]
    n = window.shape[1]
    history = np.sum(~np.isnan(window), axis=1)
    weekdays = (np.arange(start, day) - day) % 7  # 0: the weekday of ``day``
    season_start = max(0, day - SEASON_WINDOW)
    season_window = values[:, season_start:day]
    m = season_window.shape[1]
    season_weekdays = (np.arange(season_start, day) - day) % 7
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: a series without data yet
        # the season from the values less their centred 7-day moving median (which no weekly
        # pattern moves), so growth over the window does not leak into it
        season = np.zeros((values.shape[0], 7))
        if m >= 7:
            trend = np.nanmedian(np.lib.stride_tricks.sliding_window_view(season_window, 7, axis=1), axis=2)
            detrended = season_window[:, 3:m - 3] - trend
            for weekday in range(7):
                cols = season_weekdays[3:m - 3] == weekday
                if cols.any():
                    season[:, weekday] = np.nanmedian(detrended[:, cols], axis=1)
            season = np.nan_to_num(season - np.nanmedian(season, axis=1)[:, None])
        adjusted = window - season[:, weekdays]
        weeks = np.stack([np.nanmedian(adjusted[:, max(0, n - 7 * (i + 1)):n - 7 * i], axis=1)
                          for i in reversed(range(max(1, n // 7)))], axis=1)  # oldest first
        recent = weeks[:, -1]
        changes = np.diff(weeks, axis=1)
        slope = np.nan_to_num(np.nanmedian(changes, axis=1) / 7) if changes.shape[1] else np.zeros(len(recent))
        expected = recent + 4 * slope + season[:, 0]
        # the noise, from week-on-week changes of the same weekday (no fitted season to shrink
        # them): their MAD around their median, as a standard deviation, over √2 (a difference
        # of two days); the expected value's own error (a median of four weeks, a level of one)
        # adds about a third
        weekly = window[:, 7:] - window[:, :-7]
        deviation = np.abs(weekly - np.nanmedian(weekly, axis=1)[:, None])
        noise = MAD_TO_SIGMA * np.nanmedian(deviation, axis=1) / np.sqrt(2)
        spread = np.maximum(PREDICTION * noise, 1e-9)
        z = (values[:, day] - expected) / spread
    return Expectation(np.expm1(expected), spread, z, history)


def flag(values: np.ndarray, day: int, tenant_expected: np.ndarray | None = None,
         thresholds: Thresholds = Thresholds(), expectation: Expectation | None = None,
         ) -> tuple[Expectation, np.ndarray]:
    """Which series are anomalous on ``day``: the expectation and a boolean per series.

    ``values`` are amounts in currency; ``tenant_expected`` is, per series, the expected daily
    amount of its tenant (all meters; the series' own expected value where not given), for the
    share floor; ``expectation``: :func:`expect` of the same values and day, when the caller has it."""
    e = expectation or expect(values, day)
    spread = np.maximum(e.spread, thresholds.min_spread)
    z = e.z * e.spread / spread
    impact = np.abs(np.asarray(values, dtype=float)[:, day] - e.expected)
    base = np.abs(e.expected if tenant_expected is None else np.asarray(tenant_expected, dtype=float))
    anomalous = ((np.abs(z) >= thresholds.z) & (impact >= float(thresholds.min_amount))
                 & (impact >= thresholds.min_share * base) & (e.history_days >= thresholds.min_history_days))
    return Expectation(e.expected, spread, z, e.history_days), anomalous  # NaN compares False: no data, no flag


def may_be_missing_data(actual: float, expected: float, thresholds: Thresholds = Thresholds()) -> bool:
    """A drop to below ``drop_as_missing`` of the expected value: possibly usage not loaded."""
    return expected > 0 and actual < thresholds.drop_as_missing * expected
