"""Why an amount changed: the change split exactly into a volume, a rate and a mix effect.

An anomaly (issue 12) is a tenant's amount on one ledger against its expected value; finance
wants to read *why* it moved, in money. The amount is made of **components** — a meter, a
source and a retention class — each with a quantity (in the meter's unit) and an amount. With
``q`` and ``a`` the baseline (expected) quantity and amount of a component, ``q'`` and ``a'`` the
actual ones, ``r = a / q`` its rate, and per meter ``Q = Σ q`` and ``R = A / Q`` (the meter's
average baseline rate over its components):

- **volume** = ``Σ_meter (Q' − Q) · R`` — more or less of each meter at the baseline rates and mix;
- **mix** = ``Σ_meter (Σ q' · r − Q' · R)`` — the same quantity spread differently over the
  meter's sources and retention classes, priced at their baseline rates (a move to a dearer
  retention class is mix);
- **rate** = ``Σ q' · (r' − r)`` — the same quantities at other rates: a new price version, a
  tier reached, a discount or commitment change.

The three add up to ``A' − A`` exactly (a telescoping sum). Volume is measured per meter, in the
meter's own unit: gigabytes and query seconds are never added together, so a shift from one
meter to another shows as a volume effect on each. Edge cases, decided so the sum still holds:

- a component new in the actual (no baseline quantity) is taken at its meter's baseline rate
  ``R`` — its usage is volume (and mix, if its rate differs, rate);
- a meter with no baseline quantity, or none now, is all volume (usage appeared or vanished);
- an amount without a quantity (a commitment true-up, a fixed fee) changes by contract: rate.

Each effect is rounded to the cent so that the three add up to the change to the cent (the
largest-remainder rule for amounts of either sign,
:func:`chargeback.engine.allocation.round_to_total`). The contributors are the components by the
size of their own change ``a' − a``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext

from chargeback.engine.allocation import round_to_total
from chargeback.platform.money import format_money, format_signed

EFFECTS = ("volume", "rate", "mix")
# enough digits that the unrounded effects add up to the change far below a cent
_PRECISE = Context(prec=60)
_ZERO = Decimal(0)


@dataclass(frozen=True, order=True)
class Component:
    """One part of an amount: a meter, the source it came from and its retention class (days;
    ``None`` where the meter has none)."""

    meter: str
    source: str = "(none)"
    retention_days: int | None = None

    def label(self) -> str:
        kept = f", {self.retention_days}-day retention" if self.retention_days is not None else ""
        return f"{self.source} ({self.meter}{kept})"


@dataclass(frozen=True)
class Measure:
    """A component's quantity (in its meter's unit) and amount (currency, whole cents)."""

    quantity: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Contribution:
    component: Component
    change: Decimal
    """``a' − a``: the component's own change, in currency."""


@dataclass(frozen=True)
class Explanation:
    """A change of an amount split into effects that add up to it to the cent."""

    expected: Decimal
    actual: Decimal
    volume: Decimal
    rate: Decimal
    mix: Decimal
    contributors: tuple[Contribution, ...]
    """Every component whose amount changed, the largest change (by size) first."""

    @property
    def change(self) -> Decimal:
        return self.actual - self.expected

    @property
    def effects(self) -> dict[str, Decimal]:
        return {"volume": self.volume, "rate": self.rate, "mix": self.mix}

    @property
    def largest_effect(self) -> str:
        """The effect with the largest size (ties: volume, then rate, then mix)."""
        return max(EFFECTS, key=lambda name: (abs(self.effects[name]), -EFFECTS.index(name)))

    def sentence(self, subject: str, currency: str = "USD", top: int = 3) -> str:
        """One sentence a finance reader understands, e.g. ``t014's billed amount rose 38.2 %
        (+412.30 USD against 1,079.12 USD expected): volume +371.07, rate +41.23, mix 0.00 USD;
        largest contributors: payments-debug (ingested_gb) +365.00 USD.``"""
        change = self.change
        direction = "rose" if change > 0 else "fell" if change < 0 else "did not change"
        share = f" {abs(change) / self.expected * 100:.1f} %" if self.expected and change else ""
        parts = ", ".join(f"{name} {format_signed(value)}" for name, value in self.effects.items())
        lead = "; ".join(f"{c.component.label()} {format_signed(c.change)} {currency}" for c in self.contributors[:top])
        who = f"; largest contributors: {lead}" if lead else ""
        return (f"{subject} {direction}{share} ({format_signed(change)} {currency} against"
                f" {format_money(self.expected, currency)} expected): {parts} {currency}{who}.")


def explain(expected: Mapping[Component, Measure], actual: Mapping[Component, Measure],
            class_rates: Mapping[tuple[str, int | None], Decimal] | None = None) -> Explanation:
    """Split ``Σ actual amounts − Σ expected amounts`` into volume, rate and mix (module docstring).

    A component without a baseline quantity is taken at the baseline rate of its class (its
    meter and retention class): the class's own average where the baseline used it, else
    ``class_rates[(meter, retention_days)]`` (the price book's rate for a class the tenant did
    not use), else the meter's average — so a move into a dearer class is mix, not rate.
    """
    meters: dict[str, list[Component]] = defaultdict(list)
    for component in set(expected) | set(actual):
        meters[component.meter].append(component)
    none = Measure(_ZERO, _ZERO)
    with localcontext(_PRECISE):
        volume = rate = mix = _ZERO
        for components in meters.values():
            before = {c: expected.get(c, none) for c in components}
            after = {c: actual.get(c, none) for c in components}
            # an amount without a quantity (on either side) changes by contract: rate
            rate += sum(((_ZERO if after[c].quantity else after[c].amount)
                         - (_ZERO if before[c].quantity else before[c].amount) for c in components), _ZERO)
            q0, a0 = _totals(before.values())
            q1, a1 = _totals(after.values())
            if not q0 or not q1:  # the meter's usage appeared or vanished
                volume += a1 - a0
                continue
            average = a0 / q0
            r0 = _baseline_rates(before, average, class_rates or {})
            volume += (q1 - q0) * average
            mix += sum((after[c].quantity * r0[c] for c in components), _ZERO) - q1 * average
            rate += sum((after[c].amount - after[c].quantity * r0[c] for c in components if after[c].quantity),
                        _ZERO)
    total_expected = sum((m.amount for m in expected.values()), _ZERO)
    total_actual = sum((m.amount for m in actual.values()), _ZERO)
    rounded = round_to_total({"volume": volume, "rate": rate, "mix": mix}, total_actual - total_expected)
    changes = [Contribution(c, actual.get(c, none).amount - expected.get(c, none).amount)
               for c in set(expected) | set(actual)]
    contributors = tuple(sorted((c for c in changes if c.change), key=lambda c: (-abs(c.change), c.component)))
    return Explanation(total_expected, total_actual, rounded["volume"], rounded["rate"], rounded["mix"],
                       contributors)


def _totals(measures) -> tuple[Decimal, Decimal]:
    """A meter's quantity and the amount of its components that have one."""
    measures = list(measures)
    return (sum((m.quantity for m in measures), _ZERO),
            sum((m.amount for m in measures if m.quantity), _ZERO))


def _baseline_rates(before: Mapping[Component, Measure], average: Decimal,
                    class_rates: Mapping[tuple[str, int | None], Decimal]) -> dict[Component, Decimal]:
    """Each component's baseline rate: its own, else its class's (``explain``)."""
    classes: dict[tuple[str, int | None], list[Measure]] = defaultdict(list)
    for c, m in before.items():
        classes[(c.meter, c.retention_days)].append(m)
    class_average = {}
    for key, measures in classes.items():
        quantity, amount = _totals(measures)
        if quantity:
            class_average[key] = amount / quantity
    rates = {}
    for c, m in before.items():
        key = (c.meter, c.retention_days)
        rates[c] = (m.amount / m.quantity if m.quantity
                    else class_average.get(key, class_rates.get(key, average)))
    return rates

