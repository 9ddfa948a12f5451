"""How invoices print numbers, quantities, prices and dates — one place for every format.

Money goes through :func:`chargeback.platform.money.format_money` (the one rounding
rule); these helpers only add what an invoice line needs besides: three-decimal
quantities, unit prices exactly as priced, English dates whatever the locale.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from chargeback.billing.document import Invoice, InvoiceLine, as_decimal
from chargeback.platform.money import format_money, round_money

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def format_date(day: dt.date) -> str:
    """``2026-10-01 -> "1 October 2026"`` (English month names whatever the locale)."""
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def format_quantity(quantity: Decimal) -> str:
    """Usage with three decimals and thousands separators: ``1234.5 -> "1,234.500"``."""
    return f"{as_decimal(quantity, 'quantity'):,.3f}"


def format_unit_price(price: Decimal, currency: str | None = None) -> str:
    """A unit price exactly as priced, with at least two decimals: ``0.000400 -> "0.0004 USD"``
    (no currency code without ``currency``).

    Unit prices carry up to six decimals; printing them through the cent rounding of
    :func:`format_money` would show ``0.00`` for a price of ``0.0004``.
    """
    price = as_decimal(price, "unit price").normalize()
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        price = price.quantize(Decimal("0.01"))
    return f"{price:,f} {currency}" if currency else f"{price:,f}"


def format_cents(amount: Decimal) -> str:
    """An amount of a line, in the invoice's currency: ``Decimal("1234.5") -> "1,234.50"``."""
    return f"{round_money(as_decimal(amount, 'amount')):,.2f}"


def printed_quantity(line: InvoiceLine) -> str:
    """Usage with three decimals; an uplift's base (usage above the commitment) in cents."""
    return format_cents(line.quantity) if line.line_type == "overage_uplift" else format_quantity(line.quantity)


def printed_unit_price(line: InvoiceLine) -> str:
    """The price as priced; an uplift's rate as a percentage (``0.05 -> "5%"``); a dash for none."""
    if line.unit_price is None:
        return "—"
    if line.line_type == "overage_uplift":
        return f"{(as_decimal(line.unit_price, 'unit price') * 100).normalize():f}%"
    return format_unit_price(line.unit_price)


def deduction(discount: Decimal, currency: str | None = None) -> str:
    """A discount as it acts on the amount: ``3.50 -> "−3.50"``; a credit note's negative
    difference of a discount adds back, ``-1.75 -> "+1.75"``. With ``currency``: ``"−3.50 USD"``."""
    text = format_money(abs(discount), currency) if currency else format_cents(abs(discount))
    return ("+" if discount < 0 else "−") + text


def summary_rows(invoice: Invoice) -> list[dict[str, str]]:
    """The rows above the total: usage at list prices, discount, true-up, uplift (when the mart gave them)."""
    if invoice.list_subtotal is None:
        return []
    rows = [("Usage at list prices", format_money(invoice.list_subtotal, invoice.currency))]
    if invoice.discount_total:
        rows.append(("Discount", deduction(invoice.discount_total, invoice.currency)))
    if invoice.commitment_true_up:
        rows.append(("Commitment true-up", format_money(invoice.commitment_true_up, invoice.currency)))
    if invoice.overage_uplift:
        rows.append(("Overage uplift", format_money(invoice.overage_uplift, invoice.currency)))
    return [{"label": label, "amount": amount} for label, amount in rows]
