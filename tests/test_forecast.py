"""Month-end forecasts (chargeback.insights.forecast): the method by history length, the band,
pricing through tiers at the marginal rate, too early, and the whole path on a simulated
history in the warehouse (stored in insights.forecasts, printed by `chargeback forecast`)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest

from chargeback.engine import repricing, transform
from chargeback.engine.pricing import Price, Tier
from chargeback.insights import backtest, forecast
from chargeback.platform import warehouse
from conftest import database_of_its_own
from snapshots import publish_simulated

D = Decimal
OCTOBER = dt.date(2026, 10, 1)


def seasonal(days: int, *, seed: int = 1, growth: float = 0.004) -> np.ndarray:
    """Daily usage with growth, quiet weekends (days 5 and 6 of each week) and 5 % noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    return 100 * (1 + growth * t) * np.where(t % 7 >= 5, 0.55, 1.0) * rng.lognormal(0, 0.05, days)


@pytest.mark.parametrize(("days", "method"), [(1, "run_rate"), (7, "run_rate"), (8, "robust_trend"),
                                               (27, "robust_trend"), (28, "seasonal_ets"), (90, "seasonal_ets")])
def test_the_method_follows_the_length_of_the_history(days, method):
    assert forecast.choose_method(days) == method
    (sim,) = forecast.simulate_series([seasonal(days)], [0], 10, [0])
    assert (sim.method, sim.history_days, sim.paths.shape) == (method, days, (forecast.PATHS, 10))


@pytest.mark.parametrize("days", [5, 20, 70])
def test_the_band_is_ordered_and_holds_the_truth_of_a_seasonal_trending_series(days):
    truth = seasonal(days + 17, seed=days)
    (sim,) = forecast.simulate_series([truth[:days]], [0], 17, [0])
    p10, p50, p90 = np.quantile(sim.paths.sum(axis=1), forecast.QUANTILES)
    assert p10 <= p50 <= p90
    actual = truth[days:].sum()
    if days >= 28:  # shorter histories know too few weekends to promise this
        assert p10 <= actual <= p90
        assert abs(p50 - actual) / actual < 0.03


def test_the_seasonal_method_is_damped_holt_winters_with_a_weekly_season():
    """The error-correction form equals the textbook recursion (Hyndman & Athanasopoulos, 8.3):
    l = a(y - s[t-7]) + (1-a)(l + phi b); b = b*(l - l_prev) + (1-b*) phi b; s = g(y - l_prev - phi b_prev)
    + (1-g) s[t-7], with the trend's b* = beta here."""
    y = seasonal(56)
    level, trend, season = y[:7].mean(), (y[7:14].mean() - y[:7].mean()) / 7, y[:7] - y[:7].mean()
    a, b, g, phi = 0.3, 0.1, 0.2, 0.95
    _, _, lv, tr, se = forecast.ets_states(y, a, b, g, phi, np.array(level), np.array(trend), season[:, None])
    ours = [lv[0] + sum(phi ** k for k in range(1, h + 1)) * tr[0] + se[(h - 1) % 7, 0] for h in range(1, 11)]
    l_, b_, s_ = level, trend, list(season)
    for t, value in enumerate(y):
        new_level = a * (value - s_[t]) + (1 - a) * (l_ + phi * b_)
        new_trend = b * (new_level - l_) + (1 - b) * phi * b_
        s_.append(g * (value - l_ - phi * b_) + (1 - g) * s_[t])
        l_, b_ = new_level, new_trend
    textbook = [l_ + sum(phi ** k for k in range(1, h + 1)) * b_ + s_[len(y) + (h - 1) % 7] for h in range(1, 11)]
    assert np.allclose(ours, textbook, rtol=1e-12)


def test_a_spike_is_left_out_of_the_trend():
    y = seasonal(20, growth=0.0)
    y[12] *= 8
    (sim,) = forecast.simulate_series([y], [0], 14, [0])
    assert sim.method == "robust_trend"
    assert np.median(sim.paths.sum(axis=1)) < 1.15 * seasonal(34, growth=0.0)[20:].sum()


def graduated_catalog() -> repricing.Catalog:
    """First 1,000 units at 0.50, then 0.40."""
    price = Price(dt.date(2020, 1, 1), "graduated", (Tier(1, D(0), D(1000), D("0.50")),
                                                      Tier(2, D(1000), None, D("0.40"))))
    book = repricing.BookVersion("b", dt.date(2020, 1, 1), None, "USD", {"ingested_gb": price})
    return repricing.Catalog({"ingested_gb": "counter"}, {"b": (book,)},
                             {"x": repricing.Tenant("x", "b", "O", "BU", "T")}, {})


def test_a_tenant_crossing_a_tier_mid_month_is_forecast_at_the_next_tiers_rate():
    # 50 units a day: 700 by the end of 14 October, 850 more to come, 1,550 in the month
    as_of = dt.datetime(2026, 10, 15, tzinfo=dt.UTC)
    actual = {"x": {"ingested_gb": {OCTOBER.replace(day=d): D(50) for d in range(1, 15)}}}
    days = [dt.date(2026, 10, d) for d in range(15, 32)]
    paths = forecast.SeriesPaths("seasonal_ets", 60, np.full((forecast.PATHS, len(days)), 50.0))
    rows = forecast.price_forecasts(graduated_catalog(), OCTOBER, as_of, ["x"], {("x", "ingested_gb"): paths},
                                    actual, days)
    meter, total = rows
    assert meter.usage == (D(1550), D(1550), D(1550))
    # 1,000 x 0.50 + 550 x 0.40 = 720.00, where month-to-date x 31/14 would say 350.00 x 31/14 = 775.00
    assert meter.amount == (D("720.00"), D("720.00"), D("720.00"))
    assert meter.actual_to_date == D("350.00")
    assert (total.meter, total.amount, total.method) == ("(all)", meter.amount, "seasonal_ets")


# --------------------------------------------------------------------------- the warehouse

TENANTS = ["t001", "t002", "t007", "t009", "t010", "t011"]
START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
MODELS = "+fct_invoices dim_tenants dim_meters fct_usage_hourly +fct_cost_allocations_hourly fct_cost_pools_hourly"


@pytest.fixture(scope="module")
def history(test_warehouse):
    """1 September to 19 October 2026 of six tenants, simulated and built by dbt."""
    with database_of_its_own("forecast"), pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")
        publish_simulated(TENANTS, START, END, seed=31)
        transform.build(START, END, select=MODELS)
        yield


@pytest.mark.warehouse
def test_the_first_days_of_a_month_are_too_early(history):
    as_of = dt.datetime(2026, 10, 2, 13, tzinfo=dt.UTC)
    with warehouse.connect() as conn:
        rows = forecast.forecast_month(conn, OCTOBER, as_of)
        stored = conn.execute("select distinct status, amount_p50 is null from insights.forecasts"
                              " where as_of = %s", (as_of,)).fetchall()
    assert {r.status for r in rows} == {"too_early"}
    assert stored == [("too_early", True)]
    assert all(r.actual_to_date is not None for r in rows)


@pytest.mark.warehouse
def test_a_forecast_from_history_is_stored_priced_and_banded(history, capsys):
    from chargeback.cli import main

    as_of = dt.datetime(2026, 10, 15, tzinfo=dt.UTC)
    with warehouse.connect() as conn:
        rows = forecast.forecast_month(conn, OCTOBER, as_of)
        stored = forecast.latest(conn, OCTOBER)
        catalog = repricing.load_catalog(conn)
        actual = repricing.read_daily_usage(conn, OCTOBER, as_of)
    assert sorted(stored, key=lambda r: (r.ledger, r.tenant_id, r.meter)) == \
        sorted(rows, key=lambda r: (r.ledger, r.tenant_id, r.meter))
    billed = {(r.tenant_id, r.meter): r for r in rows if r.ledger == "billed"}
    assert {t for t, m in billed if m == "(all)"} == {*TENANTS, "t008"}  # t008: its commitment alone
    assert {r.method for (t, m), r in billed.items() if m != "(all)"} == {"seasonal_ets"}  # 44 days of history
    assert all(r.status == "ok" and r.amount[0] <= r.amount[1] <= r.amount[2] for r in billed.values())
    assert all(r.usage[0] <= r.usage[1] <= r.usage[2] for (t, m), r in billed.items() if m != "(all)")
    assert billed["t008", "(all)"].amount == (D("20000.00"),) * 3
    # month-to-date billed is the repriced usage so far
    for tenant_id in TENANTS:
        assert billed[tenant_id, "(all)"].actual_to_date == repricing.price_month(
            catalog, tenant_id, OCTOBER, actual[tenant_id]).usage_total
    cost = {(r.tenant_id, r.meter): r for r in rows if r.ledger == "cost"}
    assert all(r.amount[0] <= r.amount[1] <= r.amount[2] and r.amount[0] >= r.actual_to_date
               for r in cost.values())
    assert {m for _, m in cost} >= {"(all)", "ingested_gb"}

    with warehouse.connect() as conn:  # one set a day is kept: a later one the same day replaces it
        forecast.forecast_month(conn, OCTOBER, as_of + dt.timedelta(hours=5))
        kept = conn.execute("select distinct as_of from insights.forecasts where forecast_month = %s"
                            " and as_of >= %s order by as_of", (OCTOBER, as_of)).fetchall()
    assert kept == [(as_of + dt.timedelta(hours=5),)]

    assert main(["forecast", "--month", "2026-10", "--as-of", "2026-10-15T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "usage through 2026-10-15 00:00 UTC" in out
    assert "seasonal_ets" in out
    assert "platform platform" in out


@pytest.mark.warehouse
def test_the_backtest_replays_a_month_per_level(history, capsys):
    from chargeback.cli import main

    with warehouse.connect() as conn:
        scores = backtest.backtest(conn, [dt.date(2026, 9, 1)], days=(14,))
    assert [s.level for s in scores] == ["tenant", "team", "organisation", "platform"]
    assert (scores[0].units, scores[0].pinned, scores[-1].units) == (5, 2, 1)  # t002, t008: at their commitment
    tenant = scores[0]
    assert tenant.methods == {"robust_trend": 6, "contract": 1}
    assert 0 <= tenant.mape < 0.25
    assert 0 <= tenant.coverage <= 1
    assert main(["forecast", "backtest", "--months", "2026-09"]) == 0
    assert "platform" in capsys.readouterr().out
