"""The documents Chargeback issues — invoices, credit and debit notes — as plain values.

Every figure comes from the marts (``marts.fct_invoices``, ``marts.fct_invoice_lines``,
``marts.dim_tenants``); money stays ``Decimal``. :func:`check_invoice` refuses a document
whose figures disagree with each other before anything is printed or recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from chargeback.platform.money import round_money

DOCUMENT_TYPES = ("invoice", "credit_note", "debit_note")
DRAFT_NUMBER = "Draft — numbered when issued"


class InvoiceError(RuntimeError):
    """Invoices cannot be rendered or recorded; the message says which period or tenant, and why."""


@dataclasses.dataclass(frozen=True)
class Issuer:
    """Who issues the invoices. Numbers are gapless per ``key``."""

    key: str = "chargeback"
    name: str = "Chargeback — Log Platform"
    number_prefix: str = "CB"
    lines: tuple[str, ...] = ("Shared log platform · internal chargeback",)


DEFAULT_ISSUER = Issuer()




@dataclasses.dataclass(frozen=True)
class Tenant:
    """A row of ``marts.dim_tenants``."""

    tenant_id: str
    tenant_name: str
    organisation: str
    business_unit: str
    team: str
    price_book: str
    billing_email: str | None = None


LINE_TYPES = ("usage", "free_allowance", "commitment_true_up", "overage_uplift")




@dataclasses.dataclass(frozen=True)
class InvoiceLine:
    """A row of ``marts.fct_invoice_lines``: a tier, free allowance or package of a meter, or a
    contract line (commitment true-up, overage uplift; no meter).

    ``list_amount`` is the amount before the tenant's discount (``None``: no discount, the
    amount itself); ``amount = list_amount - discount_amount``.
    """

    meter: str | None
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal | None
    """None on a commitment true-up (one month at its amount)."""
    amount: Decimal
    currency: str
    price_book: str | None
    pricing_model: str | None = None
    line_no: int | None = None
    line_type: str = "usage"
    tier: int | None = None
    list_amount: Decimal | None = None
    discount_amount: Decimal = Decimal(0)
    usage_quantity: Decimal | None = None
    """The metered quantity in ``usage_unit`` (``quantity`` is what the unit price applies to:
    packages for a package line); kept on issued lines, corrections compare it."""
    usage_unit: str | None = None
    price_valid_from: dt.date | None = None
    """``valid_from`` of the price book version that priced the line (``None`` on contract lines
    and notes); frozen with the line and embedded in the issued PDF."""


@dataclasses.dataclass(frozen=True)
class Invoice:
    """The header of one document: a row of ``marts.fct_invoices`` plus its number and dates
    (or a credit/debit note's differences, ``corrects`` naming the invoice)."""

    invoice_number: str | None
    """``None`` on a draft: numbers are taken when a document is issued."""
    tenant_id: str
    period_start: dt.date
    period_end: dt.date
    """Last day of the billing period (inclusive)."""
    issue_date: dt.date
    currency: str
    total: Decimal
    price_book: str
    status: str = "draft"
    issuer: Issuer = DEFAULT_ISSUER
    list_subtotal: Decimal | None = None
    """Usage and free-allowance lines at list prices; ``None`` prints no breakdown."""
    discount_total: Decimal | None = None
    commitment_true_up: Decimal | None = None
    overage_uplift: Decimal | None = None
    document_type: str = "invoice"
    corrects: str | None = None
    """A note's original invoice number."""
    notes: tuple[str, ...] = ()
    """Paragraphs printed above the fine print (an incomplete month's override)."""
    usage_as_of: dt.datetime | None = None
    """A final document's usage as Chargeback knew it at this instant (printed in the footer)."""
    usage_sources: tuple[SourceShare, ...] = ()
    """The appendix "where your usage came from" (:mod:`chargeback.billing.appendix`); empty: none.
    Showback only: never part of the lines or the total."""
    ways_to_pay_less: tuple[WayToPayLess, ...] = ()
    """The appendix "ways to pay less": the tenant's top recommendations of the month, each with the
    saving of the month re-priced with its change (``insights.recommendations``); empty: none."""


@dataclasses.dataclass(frozen=True)
class WayToPayLess:
    """A recommendation on the invoice: what to change, why, and what this month would have cost less."""

    title: str
    evidence: str
    saving: Decimal
    confidence: str


@dataclasses.dataclass(frozen=True)
class SourceShare:
    """A row of the invoice appendix: one of a meter's top sources in the month, or the rest
    (``source`` ``None``: "other", ``other_count`` sources) — from the month's usage per source
    and the invoice's lines (:mod:`chargeback.billing.appendix`)."""

    meter: str
    source: str | None
    usage_quantity: Decimal
    unit: str
    usage_share: Decimal
    """Of the tenant's usage of the meter in the month (0..1)."""
    amount: Decimal
    """Its share of the meter's billed amount in the month (largest remainder to the cent by the
    month's usage, not a re-pricing); a meter's amounts add up to its lines."""
    amount_share: Decimal | None
    """Of the meter's billed amount (0..1); ``None`` when the meter billed nothing."""
    other_count: int = 0


@dataclasses.dataclass(frozen=True)
class InvoiceRecord:
    """A rendered document as recorded in ``pipeline.invoices``."""

    invoice_number: str | None
    issuer: str
    tenant_id: str
    period_start: dt.date
    period_end: dt.date
    issue_date: dt.date
    currency: str
    total: Decimal
    pdf_uri: str
    pdf_sha256: str
    status: str
    document_type: str = "invoice"
    corrects: str | None = None
    usage_as_of: dt.datetime | None = None


_T = TypeVar("_T")


def coerce(cls: type[_T], value: _T | Mapping[str, Any]) -> _T:
    """Accept the dataclass itself or a mapping with (at least) its fields."""
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in value.items() if k in names})


def to_plain(value: Any) -> Any:
    """A document value (any of these dataclasses, nested) as JSON-ready data, exactly: amounts
    as decimal text, dates and instants in ISO form, tuples as lists. :func:`from_plain` reads it back."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date):  # and dt.datetime, a date too
        return value.isoformat()
    return value


def from_plain(kind: Any, data: Any) -> Any:
    """The value of type ``kind`` that :func:`to_plain` wrote as ``data`` (typed by the dataclasses' fields)."""
    if data is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return from_plain(inner, data)
    if origin is tuple:
        return tuple(from_plain(typing.get_args(kind)[0], item) for item in data)
    if dataclasses.is_dataclass(kind):
        hints = _field_types(kind)
        return kind(**{name: from_plain(hints[name], data[name]) for name in hints if name in data})
    if kind is Decimal:
        return Decimal(data)
    if kind is dt.datetime:
        return dt.datetime.fromisoformat(data)
    if kind is dt.date:
        return dt.date.fromisoformat(data)
    return data


@functools.cache
def _field_types(kind: type) -> dict[str, Any]:
    """A dataclass's fields and their types, resolved once per class (a month's plan reads
    thousands of documents)."""
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


def as_decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"{what} must not be a float; pass Decimal or str")
    return Decimal(value)


# --------------------------------------------------------------------------- formatting


def invoice_number(issuer: Issuer, period_start: dt.date, sequence: int) -> str:
    """``CB-2026-000123``: issuer prefix, year of the billing period, gapless sequence."""
    return f"{issuer.number_prefix}-{period_start.year}-{sequence:06d}"


def list_amount_of(line: InvoiceLine) -> Decimal:
    """A line's amount before discount (a line without a discount: its amount)."""
    return line.amount if line.list_amount is None else line.list_amount


def check_invoice(invoice: Invoice, lines: Sequence[InvoiceLine], tenant: Tenant) -> None:
    """Refuse to print an invoice whose figures disagree with each other."""
    number = invoice.invoice_number or f"draft of {invoice.period_start:%Y-%m}"
    where = f"{invoice.document_type.replace('_', ' ')} {number} (tenant {invoice.tenant_id})"
    if tenant.tenant_id != invoice.tenant_id:
        raise InvoiceError(f"{where}: bill-to tenant is {tenant.tenant_id}")
    if not lines:
        raise InvoiceError(f"{where}: has no lines")
    total = as_decimal(invoice.total, "total")
    if total != round_money(total):
        raise InvoiceError(f"{where}: total {total} is not in cents")
    for n, line in enumerate(lines, 1):
        name = f"line {line.line_no or n} ({line.meter or line.line_type})"
        if line.currency != invoice.currency:
            raise InvoiceError(f"{where}: {name} is in {line.currency}, invoice in {invoice.currency}")
        if line.line_type not in LINE_TYPES:
            raise InvoiceError(f"{where}: {name} has an unknown line type {line.line_type!r}")
        amounts = {"amount": line.amount, "list amount": list_amount_of(line), "discount": line.discount_amount}
        for what, value in amounts.items():
            value = as_decimal(value, what)
            if value != round_money(value):
                raise InvoiceError(f"{where}: {what} {value} of {name} is not in cents")
        if amounts["list amount"] - amounts["discount"] != amounts["amount"]:
            raise InvoiceError(
                f"{where}: {name}: amount {line.amount} is not list amount {amounts['list amount']}"
                f" less discount {line.discount_amount}"
            )
    line_sum = sum((as_decimal(line.amount, "amount") for line in lines), Decimal(0))
    if line_sum != total:
        raise InvoiceError(f"{where}: total {total} differs from the sum of its lines {line_sum}")
    usage = [line for line in lines if line.line_type in ("usage", "free_allowance")]
    parts = {
        "list subtotal": (invoice.list_subtotal, sum((list_amount_of(line) for line in usage), Decimal(0))),
        "discount total": (invoice.discount_total, sum((line.discount_amount for line in lines), Decimal(0))),
        "commitment true-up": (invoice.commitment_true_up, _sum_of(lines, "commitment_true_up")),
        "overage uplift": (invoice.overage_uplift, _sum_of(lines, "overage_uplift")),
    }
    for what, (printed, from_lines) in parts.items():
        if printed is not None and as_decimal(printed, what) != from_lines:
            raise InvoiceError(f"{where}: {what} {printed} differs from the sum of its lines {from_lines}")


def _sum_of(lines: Sequence[InvoiceLine], line_type: str) -> Decimal:
    return sum((line.amount for line in lines if line.line_type == line_type), Decimal(0))
