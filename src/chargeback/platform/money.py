"""The one money rule: amounts are ``Decimal``, rounded half-up to the currency's minor unit.

SQL applies the same rule through the dbt macro ``round_money`` (PostgreSQL's
``round(numeric, 2)`` rounds half away from zero, which is half-up for the
non-negative amounts we bill). Nothing in Chargeback converts money to ``float``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MINOR_UNIT = Decimal("0.01")


def round_money(amount: Decimal | int | str) -> Decimal:
    """Round to cents, half-up: ``round_money(Decimal("0.125")) == Decimal("0.13")``."""
    if isinstance(amount, float):
        raise TypeError("money must not be a float; pass Decimal or str")
    return Decimal(amount).quantize(MINOR_UNIT, rounding=ROUND_HALF_UP)


def format_signed(amount: Decimal) -> str:
    """A change of an amount, its sign always shown but on zero: ``+412.30``, ``-0.03``, ``0.00``."""
    return ("+" if amount > 0 else "") + f"{round_money(amount):,.2f}"


def format_money(amount: Decimal, currency: str = "USD") -> str:
    """``Decimal("1234.5") -> "1,234.50 USD"`` — how invoices and summaries print money."""
    return f"{round_money(amount):,.2f} {currency}"
