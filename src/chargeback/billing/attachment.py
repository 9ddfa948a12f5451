"""The lines an issued document embeds: a JSON file inside its PDF/A-3b, and how it is checked.

A final invoice, credit note or debit note carries ``<number>.lines.json`` (AFRelationship
``Data``): its header, its bill-to tenant, its lines exactly as they are frozen in
``pipeline.invoice_lines``, the totals, the price versions and the instant the usage was
known at. Finance's tools read an invoice from the PDF alone; ``chargeback invoices verify``
compares the embedded lines with the warehouse's (:func:`compare`). The schema is described
field by field in docs/MONTH_CLOSE.md ("Embedded lines").

Every number is a decimal string at the scale of its warehouse column (quantities 12
decimals, unit prices 6, money 2), never a JSON number, so no reader turns money into a
binary float. :func:`frozen_line` is the one definition of a frozen line: what
:func:`chargeback.billing.store.record_final` inserts and what the attachment shows.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from chargeback.billing.document import Invoice, InvoiceError, InvoiceLine, Tenant, list_amount_of

SCHEMA = "chargeback.invoice-lines/1"
"""The attachment's ``schema``: changes that break a reader get a new number."""

MEDIA_TYPE = "application/json"
RELATIONSHIP = "Data"
"""PDF/A-3's AFRelationship: the file holds the data the page shows (ISO 32000-2, 7.11.3)."""

LINE_FIELDS = ("line_no", "line_type", "meter", "description", "tier", "quantity", "unit", "pricing_quantity",
               "pricing_unit", "unit_price", "list_amount", "discount_amount", "amount", "currency", "price_book",
               "price_valid_from", "pricing_model")
"""The columns of ``pipeline.invoice_lines`` (but ``document_id``), in the attachment's order."""

SCALES = {"quantity": 12, "pricing_quantity": 12, "unit_price": 6, "list_amount": 2, "discount_amount": 2,
          "amount": 2}
"""Decimal places of the numeric columns of ``pipeline.invoice_lines``."""

TOTAL_FIELDS = ("total", "list_subtotal", "discount_total", "commitment_true_up", "overage_uplift")


def attachment_name(invoice_number: str) -> str:
    """``CB-2026-000042.lines.json``: unique, so a folder of extracted attachments does not collide."""
    return f"{invoice_number}.lines.json"


def frozen_line(line: InvoiceLine, n: int) -> dict[str, Any]:
    """The row of ``pipeline.invoice_lines`` that freezes ``line`` (the ``n``-th of its document).

    ``quantity``/``unit`` are the metered usage, ``pricing_quantity``/``pricing_unit`` what the
    unit price applies to (packages on a package line).
    """
    return {
        "line_no": line.line_no or n,
        "line_type": line.line_type,
        "meter": line.meter,
        "description": line.description,
        "tier": line.tier,
        "quantity": line.quantity if line.usage_quantity is None else line.usage_quantity,
        "unit": line.unit if line.usage_unit is None else line.usage_unit,
        "pricing_quantity": line.quantity,
        "pricing_unit": line.unit,
        "unit_price": line.unit_price,
        "list_amount": list_amount_of(line),
        "discount_amount": line.discount_amount,
        "amount": line.amount,
        "currency": line.currency,
        "price_book": line.price_book,
        "price_valid_from": line.price_valid_from,
        "pricing_model": line.pricing_model,
    }


def text_of(field: str, value: Any) -> Any:
    """A frozen value as the attachment writes it: numerics as decimal strings at their column's
    scale (half-up, as PostgreSQL rounds), dates ISO, instants ISO in UTC; ``None`` stays ``None``."""
    if value is None:
        return None
    if field in SCALES:
        if isinstance(value, float):
            raise TypeError(f"{field} must not be a float; pass Decimal or str")
        number = Decimal(value).quantize(Decimal(1).scaleb(-SCALES[field]), rounding=ROUND_HALF_UP)
        return f"{abs(number) if number == 0 else number:f}"
    if isinstance(value, dt.datetime):
        return instant(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def instant(value: dt.datetime) -> str:
    """``2032-05-01T06:00:00.000000Z``: UTC, microseconds (PostgreSQL's precision)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def money(value: Any) -> str:
    return text_of("amount", value)


def totals_of(lines: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The totals the page prints, from (frozen or embedded) lines: the total is the sum of the
    line amounts; the list subtotal counts usage and free-allowance lines at list prices."""
    def total(rows: Sequence[Mapping[str, Any]], field: str) -> str:
        return money(sum((Decimal(row[field]) for row in rows), Decimal(0)))

    usage = [row for row in lines if row["line_type"] in ("usage", "free_allowance")]
    return {
        "total": total(lines, "amount"),
        "list_subtotal": total(usage, "list_amount"),
        "discount_total": total(lines, "discount_amount"),
        "commitment_true_up": total([r for r in lines if r["line_type"] == "commitment_true_up"], "amount"),
        "overage_uplift": total([r for r in lines if r["line_type"] == "overage_uplift"], "amount"),
    }


def price_versions_of(lines: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The price book versions that priced the lines: ``[{"price_book", "valid_from"}]``, sorted."""
    versions = {(row["price_book"], row["price_valid_from"]) for row in lines
                if row["price_book"] is not None and row["price_valid_from"] is not None}
    return [{"price_book": book, "valid_from": text_of("price_valid_from", since)}
            for book, since in sorted(versions, key=lambda v: (v[0], str(v[1])))]


def payload(invoice: Invoice, lines: Sequence[InvoiceLine], tenant: Tenant) -> dict[str, Any]:
    """What a final document embeds (see docs/MONTH_CLOSE.md, "Embedded lines")."""
    if invoice.invoice_number is None or invoice.usage_as_of is None:
        raise InvoiceError(f"only an issued document embeds its lines: {invoice.document_type} of tenant "
                           f"{invoice.tenant_id} for {invoice.period_start:%Y-%m} has no number or usage instant")
    frozen = [frozen_line(line, n) for n, line in enumerate(lines, 1)]
    embedded = [{field: text_of(field, row[field]) for field in LINE_FIELDS} for row in frozen]
    return {
        "schema": SCHEMA,
        "document": {
            "number": invoice.invoice_number,
            "type": invoice.document_type,
            "status": invoice.status,
            "issuer": invoice.issuer.key,
            "corrects": invoice.corrects,
            "issue_date": invoice.issue_date.isoformat(),
            "period_start": invoice.period_start.isoformat(),
            "period_end": invoice.period_end.isoformat(),
            "currency": invoice.currency,
            "total": money(invoice.total),
            "usage_known_at": instant(invoice.usage_as_of),
        },
        "tenant": {
            "tenant_id": tenant.tenant_id,
            "tenant_name": tenant.tenant_name,
            "organisation": tenant.organisation,
            "business_unit": tenant.business_unit,
            "team": tenant.team,
        },
        "price_versions": price_versions_of(frozen),
        "totals": totals_of(frozen),
        "lines": embedded,
    }


def encode(data: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON, one key order, a newline at the end: the same document gives the same bytes."""
    return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()


# --------------------------------------------------------------------------- reading back


def embedded_files(pdf: bytes) -> dict[str, bytes]:
    """The files embedded in a PDF, by name (pypdf; the first of a name)."""
    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(pdf))
        return {name: contents[0] for name, contents in reader.attachments.items() if contents}
    except (PdfReadError, ValueError, KeyError) as exc:
        raise InvoiceError(f"the PDF cannot be read ({exc})") from None


def read(pdf: bytes, invoice_number: str) -> dict[str, Any] | None:
    """The document's embedded lines, ``None`` when it embeds no file at all (issued before
    documents embedded their lines). Raises :class:`InvoiceError` when it embeds files but not
    ``<number>.lines.json``, or that file is not a JSON object of this schema."""
    files = embedded_files(pdf)
    if not files:
        return None
    name = attachment_name(invoice_number)
    if name not in files:
        raise InvoiceError(f"it embeds {', '.join(sorted(files))} but not {name}")
    try:
        data = json.loads(files[name].decode("utf-8"), parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvoiceError(f"its embedded {name} is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InvoiceError(f"its embedded {name} is not a {SCHEMA} document")
    return data


def compare(data: Mapping[str, Any], stored: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every difference between an embedded attachment and the warehouse, one phrase each.

    ``stored`` is the document's row of ``pipeline.invoices`` (``invoice_number``, ``document_type``,
    ``tenant_id``, ``period_start``, ``period_end``, ``issue_date``, ``currency``, ``total``,
    ``corrects``, ``usage_as_of``, ``issuer``), ``lines`` its rows of ``pipeline.invoice_lines``.
    Checks the header, each line field by field, that the embedded line amounts sum to the
    embedded (printed) total, and the totals and price versions against the embedded lines.
    """
    problems: list[str] = []
    header = data.get("document") or {}
    expected = {"number": stored["invoice_number"], "type": stored["document_type"], "issuer": stored["issuer"],
                "corrects": stored["corrects"], "issue_date": text_of("date", stored["issue_date"]),
                "period_start": text_of("date", stored["period_start"]),
                "period_end": text_of("date", stored["period_end"]), "currency": stored["currency"],
                "total": money(stored["total"]), "usage_known_at": instant(stored["usage_as_of"])}
    for field, value in expected.items():
        if header.get(field) != value:
            problems.append(f"embedded {field} {header.get(field)!r}, the warehouse has {value!r}")
    if (data.get("tenant") or {}).get("tenant_id") != stored["tenant_id"]:
        problems.append(f"embedded tenant {(data.get('tenant') or {}).get('tenant_id')!r}, "
                        f"the warehouse has {stored['tenant_id']!r}")

    embedded = data.get("lines")
    if not isinstance(embedded, list) or not all(isinstance(row, dict) for row in embedded):
        return [*problems, "its embedded lines are not a list of objects"]
    frozen = {row["line_no"]: {f: text_of(f, row[f]) for f in LINE_FIELDS} for row in lines}
    by_no = {row.get("line_no"): row for row in embedded}
    for line_no in sorted(frozen.keys() - by_no.keys()):
        problems.append(f"line {line_no} ({_label(frozen[line_no])}) is in the warehouse but not embedded")
    for line_no in sorted(by_no.keys() - frozen.keys(), key=str):
        problems.append(f"embedded line {line_no} ({_label(by_no[line_no])}) is not in the warehouse")
    if len(by_no) != len(embedded):
        problems.append("the embedded lines repeat a line number")
    for line_no in sorted(frozen.keys() & by_no.keys()):
        want, have = frozen[line_no], by_no[line_no]
        for field in LINE_FIELDS:
            if have.get(field) != want[field]:
                problems.append(f"line {line_no} ({_label(want)}) {field}: embedded {have.get(field)!r}, "
                                f"the warehouse has {want[field]!r}")

    try:
        derived = totals_of([{f: (row.get(f) or "0") if f in SCALES else row.get(f) for f in LINE_FIELDS}
                             for row in embedded])
    except (ArithmeticError, TypeError, ValueError):
        return [*problems, "its embedded line amounts are not decimal numbers"]
    if derived["total"] != header.get("total"):
        problems.append(f"the embedded line amounts sum to {derived['total']}, "
                        f"not to the printed total {header.get('total')}")
    totals = data.get("totals") or {}
    for field in TOTAL_FIELDS:
        if totals.get(field) != derived[field]:
            problems.append(f"embedded totals.{field} {totals.get(field)!r}, its lines give {derived[field]!r}")
    if data.get("price_versions") != price_versions_of(embedded):
        problems.append("embedded price_versions differ from the price versions of its lines")
    return problems


def _label(row: Mapping[str, Any]) -> str:
    return str(row.get("meter") or row.get("line_type"))
