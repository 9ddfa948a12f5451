"""The pricing rules of docs/COST_ENGINE.md section 4, in plain Python: a reference pricer.

The warehouse prices invoices in SQL (``int_usage_segments_priced`` and ``fct_invoice_lines``);
this module prices one tenant's meter-month the same way, with ``Decimal`` only, so tests can
check the SQL against an independent implementation, to the cent.

A meter-month is a list of :class:`Segment`: the month's usage under each price book version
in force, in version order (for a meter priced by retention, one segment per retention class
in use under a version — the sources with a class of their own, the rest at the tenant's
default — in class order within the version). Segments count the month's usage cumulatively, so tiers, the free
allowance and packages continue across a mid-month price change. ``usage`` is the sum of the
hourly values; a gauge's quantity is that sum divided by the hours of the month (``divisor``).
Quantities are never divided before pricing: bounds, allowances and package sizes are
multiplied by the divisor instead, and each amount is rounded once, half-up to the cent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, localcontext

from chargeback.platform.money import round_money

MODELS = ("per_unit", "graduated", "volume", "package", "retention")
DEFAULT_RETENTION_DAYS = 30
QUANTUM = Decimal("1e-12")  # the marts keep quantities as numeric(38, 12)
_PRECISION = 60  # digits for the one division of a gauge's amount: enough to round it exactly


@dataclasses.dataclass(frozen=True)
class Tier:
    """A row of ``config.price_tiers``: units in (lower, upper] of the month's billable usage."""

    tier: int
    lower: Decimal
    upper: Decimal | None
    unit_price: Decimal
    retention_days: int | None = None


@dataclasses.dataclass(frozen=True)
class Price:
    """How one price book version prices a meter (a row of ``config.prices`` with its tiers)."""

    valid_from: dt.date
    model: str
    tiers: tuple[Tier, ...] = ()
    free_allowance: Decimal = Decimal(0)
    package_size: Decimal | None = None
    package_price: Decimal | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"pricing model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.model == "package" and (self.package_size is None or self.package_price is None):
            raise ValueError("the package model needs package_size and package_price")
        if self.model != "package" and not self.tiers:
            raise ValueError(f"the {self.model} model needs tiers")


@dataclasses.dataclass(frozen=True)
class Segment:
    """The month's usage under one price version: the sum of its hourly values."""

    price: Price
    usage: Decimal
    retention_days: int | None = None
    """Retention pricing: the days of this segment's class (sources kept for a class of their
    own, ``source_retention_days``); ``None``: the tenant's ``retention_days``."""


@dataclasses.dataclass(frozen=True)
class Line:
    """One invoice line, as in ``marts.fct_invoice_lines`` (quantity rounded to 12 decimals)."""

    line_type: str
    price_valid_from: dt.date | None
    pricing_model: str | None
    tier: int | None
    quantity: Decimal
    unit_price: Decimal | None
    """None only on a commitment true-up."""
    list_amount: Decimal
    discount_amount: Decimal
    amount: Decimal
    packages: int | None = None


def price_meter_month(segments: Sequence[Segment], *, divisor: int = 1, discount_percent: Decimal = Decimal(0),
                      retention_days: int = DEFAULT_RETENTION_DAYS) -> list[Line]:
    """The usage and free-allowance lines of one tenant's meter in one month.

    ``segments`` in version order; ``divisor`` is 1 for a counter and the hours of the month
    for a gauge; ``discount_percent`` and ``retention_days`` are the tenant's terms of the month.
    """
    for value in (discount_percent, *(s.usage for s in segments)):
        _no_float(value)
    if divisor < 1:
        raise ValueError(f"divisor must be at least 1, got {divisor}")
    discount = Decimal(discount_percent)
    spans = []
    cumulative = Decimal(0)
    for segment in segments:
        usage = Decimal(segment.usage)
        if usage < 0:
            raise ValueError(f"usage must not be negative, got {usage}")
        allowance = segment.price.free_allowance * divisor
        start, end = cumulative, cumulative + usage
        free = max(min(end, allowance) - min(start, allowance), Decimal(0))
        spans.append((segment, usage, free, max(start - allowance, Decimal(0)), max(end - allowance, Decimal(0))))
        cumulative = end
    month_billable = sum((end - start for _, _, _, start, end in spans), Decimal(0))

    lines: list[Line] = []
    for segment, usage, free, start, end in spans:
        price = segment.price
        if free > 0:
            lines.append(Line("free_allowance", price.valid_from, price.model, None, _quantity(free, divisor),
                              Decimal(0), Decimal("0.00"), Decimal("0.00"), Decimal("0.00")))
        if end == start and usage != 0:
            continue  # the allowance covers the whole segment
        days = retention_days if segment.retention_days is None else segment.retention_days
        for tier, units, packages in _pieces(price, start, end, month_billable, divisor, days):
            if price.model == "package":
                unit_price = price.package_price
                list_amount = round_money(packages * unit_price)
            else:
                unit_price = tier.unit_price
                list_amount = _money(units * unit_price, divisor)
            discount_amount = round_money(list_amount * discount / 100)
            lines.append(Line("usage", price.valid_from, price.model, tier.tier if tier else None,
                              _quantity(units, divisor), unit_price, list_amount, discount_amount,
                              list_amount - discount_amount, packages))
    return lines


def contract_lines(net_usage: Decimal, monthly_commitment: Decimal = Decimal(0),
                   overage_uplift_percent: Decimal = Decimal(0)) -> list[Line]:
    """The commitment true-up or the overage uplift of a month whose usage lines come to ``net_usage``."""
    for value in (net_usage, monthly_commitment, overage_uplift_percent):
        _no_float(value)
    net, commitment, uplift = Decimal(net_usage), Decimal(monthly_commitment), Decimal(overage_uplift_percent)
    zero = Decimal("0.00")
    if net < commitment:  # one month, the shortfall; no unit price
        shortfall = commitment - net
        return [Line("commitment_true_up", None, None, None, Decimal(1), None, shortfall, zero, shortfall)]
    if net > commitment and uplift > 0:  # the amount above the commitment at the uplift rate
        amount = round_money((net - commitment) * uplift / 100)
        return [Line("overage_uplift", None, None, None, net - commitment, uplift / 100, amount, zero, amount)]
    return []


def _pieces(price: Price, start: Decimal, end: Decimal, month_billable: Decimal, divisor: int,
            retention_days: int) -> list[tuple[Tier | None, Decimal, int | None]]:
    """(tier, units x divisor, packages) of the segment's billable units (start, end]."""
    if price.model == "package":
        size = price.package_size * divisor
        return [(None, end - start, _ceil_div(end, size) - _ceil_div(start, size))]
    if price.model == "retention":
        eligible = [t for t in price.tiers if t.retention_days is not None and t.retention_days >= retention_days]
        if not eligible:
            raise ValueError(f"no retention tier of {retention_days} days or more")
        return [(min(eligible, key=lambda t: t.retention_days), end - start, None)]
    if price.model == "volume":
        for tier in price.tiers:
            lower = tier.lower * divisor
            if (tier.lower == 0 or month_billable > lower) and (tier.upper is None
                                                                  or month_billable <= tier.upper * divisor):
                return [(tier, end - start, None)]
        raise ValueError(f"no volume tier holds {month_billable / divisor}")
    pieces = []
    for tier in price.tiers:  # per_unit, graduated
        lower = tier.lower * divisor
        upper = None if tier.upper is None else tier.upper * divisor
        if upper is not None and upper <= start:
            continue
        if end > start and lower < end:
            pieces.append((tier, min(end, upper if upper is not None else end) - max(start, lower), None))
        elif end == start and lower <= start:
            return [(tier, Decimal(0), None)]  # no usage: the tier the next unit would fall in
    return pieces


def _ceil_div(numerator: Decimal, denominator: Decimal) -> int:
    quotient, remainder = divmod(numerator, denominator)
    return int(quotient) + (1 if remainder > 0 else 0)


def _money(value: Decimal, divisor: int) -> Decimal:
    """round_money(value / divisor), the division carried far enough to round exactly."""
    with localcontext() as context:
        context.prec = _PRECISION
        return round_money(value / divisor)


def _quantity(units: Decimal, divisor: int) -> Decimal:
    with localcontext() as context:
        context.prec = _PRECISION
        return (units / divisor).quantize(QUANTUM, rounding=ROUND_HALF_UP)


def _no_float(value: object) -> None:
    if isinstance(value, float):
        raise TypeError("quantities and money must not be floats; pass Decimal or str")
