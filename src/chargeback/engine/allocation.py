"""The split rule of the cost engine, in Python: largest remainder to the cent.

dbt splits every amount (a pool over hours, parts, components, tenants) with the
``largest_remainder`` macro (``dbt_project/macros/largest_remainder.sql``); this is the
same rule for Python code and the reference the tests hold the SQL to. Each key gets the
floor of its exact share in cents; the cents left over go one each to the keys with the
largest remainders, ties to the lower key — strings compared byte by byte (UTF-8), like
``collate "C"`` in SQL. The shares add up to the amount exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from decimal import ROUND_FLOOR, Context, Decimal, Inexact, InvalidOperation, localcontext
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

CENTS = 100  # the split is in whole cents: amounts have 2 decimals
_CENT = Decimal("0.01")
# exact arithmetic: an amount of 18 digits times a weight of 38 fits easily
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation])


def largest_remainder(amount: Decimal, weights: Mapping[K, Decimal]) -> dict[K, Decimal]:
    """Split ``amount`` (whole cents, negative for a credit) over ``weights`` (>= 0, summing to > 0)
    in whole cents.

    ``largest_remainder(Decimal("0.10"), {"a": 1, "b": 2, "c": 4})`` is
    ``{"a": 0.01, "b": 0.03, "c": 0.06}``: exact shares 1.43 / 2.86 / 5.71 cents, floors
    1 + 2 + 5 = 8, the two cents left go to the largest remainders (.86, .71).
    """
    if isinstance(amount, float) or any(isinstance(w, float) for w in weights.values()):
        raise TypeError("money and weights must not be floats; pass Decimal")
    if amount < 0:  # a credit: the positive amount's split, negated (the same cents to the same keys)
        return {key: -part if part else part for key, part in largest_remainder(-amount, weights).items()}
    with localcontext(_EXACT):
        cents = Decimal(amount) * CENTS
        if cents != cents.to_integral_value():
            raise ValueError(f"amount {amount} is not a whole number of cents")
        if not weights:
            raise ValueError("nothing to split over: no weights")
        weights = {key: Decimal(w) for key, w in weights.items()}
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must not be negative")
        total = sum(weights.values(), Decimal(0))
        if total <= 0:
            raise ValueError("the weights must sum to more than 0")
        floors: dict[K, Decimal] = {}
        remainders: dict[K, Decimal] = {}
        for key, weight in weights.items():
            # remainder scaled by total, like mod() in the macro: same order within a split
            floors[key], remainders[key] = divmod(cents * weight, total)
        left = int(cents - sum(floors.values(), Decimal(0)))
        ranked = sorted(weights, key=lambda k: (-remainders[k], _key_order(k)))
        extra = set(ranked[:left])
        return {key: (floors[key] + (1 if key in extra else 0)).scaleb(-2) for key in weights}


def round_to_total(values: Mapping[K, Decimal], total: Decimal) -> dict[K, Decimal]:
    """The same rule for parts of either sign: round ``values`` (adding up to ``total`` but for far
    less than a cent, e.g. the volume, rate and mix effects of a change) to cents adding up to
    ``total`` exactly: each to the cent below, then the cents left one each to the largest
    remainders (ties to the earlier key in ``values``)."""
    if total != total.quantize(_CENT):
        raise ValueError(f"total {total} is not a whole number of cents")
    floors = {k: v.quantize(_CENT, rounding=ROUND_FLOOR) for k, v in values.items()}
    left = int((total - sum(floors.values(), Decimal(0))) / _CENT)
    if not 0 <= left <= len(values):
        raise ValueError(f"the values add up to {sum(values.values(), Decimal(0))}, not to {total}")
    order = list(values)
    ranked = sorted(order, key=lambda k: (-(values[k] - floors[k]), order.index(k)))
    return {k: floors[k] + (_CENT if k in ranked[:left] else Decimal(0)) for k in order}


def _key_order(key: object) -> object:
    """Keys compare like ``collate "C"``: a string by its UTF-8 bytes, a tuple element-wise."""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, tuple):
        return tuple(_key_order(k) for k in key)
    return key
