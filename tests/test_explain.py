"""The volume / rate / mix split of a change (chargeback.insights.explain): hand-computed cases,
then randomised ones where the three effects must add up to the change to the cent."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargeback.engine.allocation import round_to_total
from chargeback.insights.explain import Component, Measure, explain

D = Decimal
DEBUG = Component("ingested_gb", "payments-debug")
API_IN = Component("ingested_gb", "api")
API_30 = Component("stored_gb", "api", 30)
API_90 = Component("stored_gb", "api", 90)


def test_a_noisy_source_and_a_move_to_a_dearer_class_are_volume_and_mix():
    expected = {DEBUG: Measure(D(100), D("50.00")), API_IN: Measure(D(200), D("100.00")),
                API_30: Measure(D(1000), D("30.00"))}
    actual = {DEBUG: Measure(D(190), D("95.00")), API_IN: Measure(D(200), D("100.00")),
              API_30: Measure(D(800), D("24.00")), API_90: Measure(D(200), D("10.00"))}
    result = explain(expected, actual, class_rates={("stored_gb", 90): D("0.05")})
    # ingested: 90 GB more at 0.50 = 45.00 volume; stored: 200 of 1,000 GB-months moved from
    # 0.03 to 0.05 = 4.00 mix; no rate changed
    assert (result.volume, result.rate, result.mix) == (D("45.00"), D("0.00"), D("4.00"))
    assert result.change == D("49.00")
    assert result.largest_effect == "volume"
    assert [(c.component, c.change) for c in result.contributors] == [
        (DEBUG, D("45.00")), (API_90, D("10.00")), (API_30, D("-6.00"))]
    assert result.sentence("t014's billed amount") == (
        "t014's billed amount rose 27.2 % (+49.00 USD against 180.00 USD expected): volume +45.00,"
        " rate 0.00, mix +4.00 USD; largest contributors: payments-debug (ingested_gb) +45.00 USD;"
        " api (stored_gb, 90-day retention) +10.00 USD; api (stored_gb, 30-day retention) -6.00 USD.")


def test_a_new_class_without_a_price_book_rate_is_taken_at_the_meters_rate():
    expected = {API_30: Measure(D(1000), D("30.00"))}
    actual = {API_30: Measure(D(800), D("24.00")), API_90: Measure(D(200), D("10.00"))}
    result = explain(expected, actual)
    assert (result.volume, result.rate, result.mix) == (D("0.00"), D("4.00"), D("0.00"))


def test_a_new_price_is_rate_and_a_new_source_in_a_known_class_is_volume():
    expected = {API_IN: Measure(D(200), D("100.00"))}
    repriced = explain(expected, {API_IN: Measure(D(200), D("110.00"))})
    assert (repriced.volume, repriced.rate, repriced.mix) == (D("0.00"), D("10.00"), D("0.00"))
    assert repriced.largest_effect == "rate"
    grown = explain(expected, {API_IN: Measure(D(200), D("100.00")), DEBUG: Measure(D(50), D("25.00"))})
    assert (grown.volume, grown.rate, grown.mix) == (D("25.00"), D("0.00"), D("0.00"))


def test_a_silent_producer_is_a_drop_in_volume_and_a_true_up_is_rate():
    expected = {API_IN: Measure(D(200), D("100.00")), API_30: Measure(D(1000), D("30.00"))}
    dropped = explain(expected, {API_30: Measure(D(1000), D("30.00"))})
    assert (dropped.volume, dropped.rate, dropped.mix) == (D("-100.00"), D("0.00"), D("0.00"))
    assert dropped.sentence("t002's cost to serve").startswith(
        "t002's cost to serve fell 76.9 % (-100.00 USD against 130.00 USD expected)")
    true_up = Component("commitment", "(none)")
    committed = explain(expected, {**expected, true_up: Measure(D(0), D("12.34"))})
    assert (committed.volume, committed.rate, committed.mix) == (D("0.00"), D("12.34"), D("0.00"))


def test_round_to_total_gives_the_cents_to_the_largest_remainders_whatever_the_sign():
    values = {"volume": D("10.006"), "rate": D("-3.339"), "mix": D("0.333")}  # 7.000
    # floors 10.00, -3.34, 0.33 (6.99); the cent left goes to the largest remainder (.006)
    assert round_to_total(values, D("7.00")) == {"volume": D("10.01"), "rate": D("-3.34"), "mix": D("0.33")}
    thirds = {"a": D(1) / 3, "b": D(1) / 3, "c": D(1) / 3}
    assert round_to_total(thirds, D("1.00")) == {"a": D("0.34"), "b": D("0.33"), "c": D("0.33")}
    with pytest.raises(ValueError, match=r"not to 2\.00"):
        round_to_total(thirds, D("2.00"))


COMPONENTS = [Component(meter, source, days)
              for meter, days in (("ingested_gb", None), ("stored_gb", 7), ("stored_gb", 90), ("query_cpu_s", None))
              for source in ("api", "payments-debug", "user:sven")]
quantities = st.one_of(st.just(D(0)), st.decimals(min_value=0, max_value=10**6, places=6))
amounts = st.decimals(min_value=-10**5, max_value=10**6, places=2)
side = st.dictionaries(st.sampled_from(COMPONENTS), st.builds(Measure, quantities, amounts), max_size=len(COMPONENTS))


@settings(max_examples=300, deadline=None)
@given(side, side, st.dictionaries(st.sampled_from([("stored_gb", 7), ("stored_gb", 90)]),
                                   st.decimals(min_value=0, max_value=1, places=4)))
def test_volume_rate_and_mix_add_up_to_the_change_to_the_cent(expected, actual, class_rates):
    result = explain(expected, actual, class_rates)
    total = sum(result.effects.values(), D(0))
    assert total == result.change == (sum((m.amount for m in actual.values()), D(0))
                                      - sum((m.amount for m in expected.values()), D(0)))
    assert all(value == value.quantize(D("0.01")) for value in result.effects.values())
    assert sum((c.change for c in result.contributors), D(0)) == result.change


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(COMPONENTS), st.integers(0, 10**6), max_size=len(COMPONENTS)),
       st.integers(0, 50))
def test_every_quantity_times_a_factor_at_unchanged_rates_is_all_volume(quantities, factor):
    rate = D("0.25")
    expected = {c: Measure(D(q), q * rate) for c, q in quantities.items()}
    actual = {c: Measure(D(q * factor), q * factor * rate) for c, q in quantities.items()}
    result = explain(expected, actual)
    assert (result.rate, result.mix) == (D("0.00"), D("0.00"))
    assert result.volume == result.change
