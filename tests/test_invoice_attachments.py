"""Invoices that check themselves: each issued document is a tagged PDF/A-3b embedding its lines.

May 2033 is loaded set-based (every hour of every meter for t001 and t002, as
tests/test_month_close.py does), built by the real dbt transform and closed through the real
month-close path; June's close credits usage withdrawn from May. The attachments are read back
with pypdf and compared, field by field and to the cent, with ``pipeline.invoice_lines``.
A database of its own, so the documents counted here are only this module's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
from decimal import Decimal
from pathlib import Path

import pypdf
import pytest

from chargeback.billing import attachment, close, invoices, render
from chargeback.billing.document import Invoice, InvoiceError, InvoiceLine, Tenant
from chargeback.cli import main
from chargeback.engine import transform
from chargeback.platform import warehouse
from chargeback.platform.periods import month_window
from conftest import database_of_its_own
from test_month_close import BILLED, load_month

pytestmark = pytest.mark.warehouse

D = Decimal
MAY = dt.date(2033, 5, 1)
NUMERIC = attachment.SCALES.keys()
# a document as every document was before issue 11 (and as drafts still are): a plain PDF
LEGACY_TENANT = Tenant("t003", "Initech", "Initech", "Ops", "ops", "standard")
LEGACY_LINE = InvoiceLine("ingested_gb", "Log data ingested", D("10"), "GB", D("0.45"), D("4.50"), "USD", "standard")
LEGACY = Invoice(None, "t003", dt.date(2033, 4, 1), dt.date(2033, 4, 30), dt.date(2033, 5, 4), "USD", D("4.50"),
                 "standard")


@pytest.fixture(scope="module")
def issued(test_warehouse):
    """May 2033 closed: four final invoices (t001, t002, and t007/t008's commitments)."""
    with database_of_its_own("attach"):
        load_month("2033-05", tag="att")
        result = close.close_month("2033-05", as_of="2033-06-04T00:00Z", workers=1)
        assert [r.tenant_id for r in result.finals] == BILLED
        yield {r.tenant_id: r for r in result.finals}


def frozen(number: str) -> list[dict[str, str | int | None]]:
    """The document's frozen lines as PostgreSQL prints them (numerics as text, at their scale)."""
    columns = ", ".join(f"l.{f}::text" if f in NUMERIC or f == "price_valid_from" else f"l.{f}"
                        for f in attachment.LINE_FIELDS)
    with warehouse.connect() as conn:
        rows = conn.execute(f"select {columns} from pipeline.invoice_lines as l join pipeline.invoices as i"
                            " using (document_id) where i.invoice_number = %s order by l.line_no", (number,))
        return [dict(zip(attachment.LINE_FIELDS, row, strict=True)) for row in rows]


def embedded(pdf_uri: str) -> tuple[pypdf.PdfReader, dict]:
    reader = pypdf.PdfReader(io.BytesIO(Path(pdf_uri).read_bytes()))
    (name,) = reader.attachments
    return reader, json.loads(reader.attachments[name][0])  # plain json: every number must be a string


def owner_sql(sql: str, params: tuple = ()) -> None:
    """As the owner, past the immutability triggers: what only an attacker (or a broken restore) does."""
    with warehouse.connect(admin=True) as conn:
        conn.execute("set local session_replication_role = replica")
        conn.execute(sql, params)


# --------------------------------------------------------------------------- the attachment


def test_final_invoice_embeds_its_frozen_lines_to_the_cent(issued):
    with warehouse.connect() as conn:
        mart = dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                 (MAY,)).fetchall())
        versions = conn.execute(
            "select tenant_id, price_book, price_valid_from::text from marts.fct_invoice_lines"
            " where invoice_month = %s and price_valid_from is not null group by 1, 2, 3 order by 1, 2, 3",
            (MAY,)).fetchall()
        known_at = dict(conn.execute("select invoice_number, usage_as_of from pipeline.invoices"
                                     " where period_start = %s", (MAY,)).fetchall())
    for tenant_id, record in issued.items():
        reader, data = embedded(record.pdf_uri)
        assert list(reader.attachments) == [f"{record.invoice_number}.lines.json"]
        lines = frozen(record.invoice_number)
        assert data["lines"] == lines  # every field, as stored: 12-decimal quantities, cents, NULLs
        assert all(isinstance(line[f], str) for line in data["lines"] for f in ("quantity", "amount", "list_amount"))
        total = sum(D(line["amount"]) for line in data["lines"])
        assert total == D(data["document"]["total"]) == D(data["totals"]["total"]) == record.total == mart[tenant_id]
        assert data["document"] == {
            "number": record.invoice_number, "type": "invoice", "status": "final", "issuer": "chargeback",
            "corrects": None, "issue_date": "2033-06-04", "period_start": "2033-05-01", "period_end": "2033-05-31",
            "currency": "USD", "total": f"{record.total:.2f}",
            "usage_known_at": known_at[record.invoice_number].astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        assert data["tenant"]["tenant_id"] == tenant_id
        assert data["price_versions"] == [{"price_book": b, "valid_from": v} for t, b, v in versions if t == tenant_id]
    reader, t001 = embedded(issued["t001"].pdf_uri)
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert (f"This PDF/A file embeds its lines, totals and price versions as {issued['t001'].invoice_number}"
            ".lines.json (JSON, amounts as decimal strings)") in text
    assert t001["price_versions"] == [{"price_book": "enterprise", "valid_from": "2020-01-01"}]
    ingest = [line for line in t001["lines"] if line["meter"] == "ingested_gb"]
    # 2.5 GB an hour, 744 hours: 5 GB free, then the enterprise tiers (0.42, 0.35 USD) less t001's 10%
    # discount, rounded half-up on its own (29.925 -> 29.93)
    assert [(line["quantity"], line["unit_price"], line["list_amount"], line["discount_amount"], line["amount"])
            for line in ingest] == [
        ("5.000000000000", "0.000000", "0.00", "0.00", "0.00"),
        ("1000.000000000000", "0.420000", "420.00", "42.00", "378.00"),
        ("855.000000000000", "0.350000", "299.25", "29.93", "269.32")]


def test_issued_pdf_declares_pdfa3b_is_tagged_and_marks_its_attachment_as_data(issued):
    reader, _ = embedded(issued["t002"].pdf_uri)
    catalog = reader.trailer["/Root"]
    identification = reader.xmp_metadata.rdf_root.getElementsByTagNameNS(
        "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "Description")[0]
    assert identification.getAttributeNS("http://www.aiim.org/pdfa/ns/id/", "part") == "3"
    assert identification.getAttributeNS("http://www.aiim.org/pdfa/ns/id/", "conformance") == "B"
    assert identification.getAttributeNS("http://www.aiim.org/pdfua/ns/id/", "part") == "1"
    assert "/StructTreeRoot" in catalog
    assert catalog["/MarkInfo"]["/Marked"] == pypdf.generic.BooleanObject(True)
    assert catalog["/Lang"] == "en"
    assert catalog["/ViewerPreferences"]["/DisplayDocTitle"] == pypdf.generic.BooleanObject(True)
    assert catalog["/OutputIntents"][0].get_object()["/S"] == "/GTS_PDFA1"
    (spec,) = [ref.get_object() for ref in catalog["/AF"]]
    assert spec["/AFRelationship"] == "/Data"
    assert spec["/F"] == spec["/UF"] == f"{issued['t002'].invoice_number}.lines.json"
    assert spec["/EF"]["/F"].get_object()["/Subtype"] == "/application/json"  # written /application#2fjson


def test_drafts_stay_plain_pdfs():
    """A draft (no number, nothing frozen, not for payment) is laid out as before: no attachment, no tags."""
    reader = pypdf.PdfReader(io.BytesIO(render.render_invoice_pdf(LEGACY, [LEGACY_LINE], LEGACY_TENANT)))
    assert len(reader.attachments) == 0
    assert "/StructTreeRoot" not in reader.trailer["/Root"]
    assert reader.xmp_metadata is None
    assert "embeds its lines" not in " ".join(page.extract_text() for page in reader.pages)


# --------------------------------------------------------------------------- verify


def test_verify_checks_sha256_and_embedded_lines(issued, capsys):
    result = invoices.verify_documents("2033-05")
    assert (result.documents, result.with_lines, result.without_lines) == (len(BILLED), len(BILLED), ())
    assert main(["invoices", "verify", "--period", "2033-05"]) == 0
    assert capsys.readouterr().out == ("4 issued documents of 2033-05: every PDF matches its sha256; 4 embed lines "
                                       "equal to the warehouse's frozen lines\n")


def test_a_frozen_line_changed_behind_the_triggers_fails_verify_naming_it(issued):
    number = issued["t001"].invoice_number
    (line_no,) = [line["line_no"] for line in frozen(number) if line["meter"] == "ingested_gb" and line["tier"] == 1]
    where = ("document_id = (select document_id from pipeline.invoices where invoice_number = %s)"
             f" and line_no = {line_no}")
    owner_sql(f"update pipeline.invoice_lines set amount = amount + 1, list_amount = list_amount + 1 where {where}",
              (number,))
    try:
        with pytest.raises(InvoiceError) as refused:
            invoices.verify("2033-05")
        message = str(refused.value)
        assert message.startswith(f"chargeback refusal: issued document {number} at {issued['t001'].pdf_uri}: "
                                  f"its embedded lines differ from the warehouse's: line {line_no} (ingested_gb) "
                                  "list_amount: embedded '420.00', the warehouse has '421.00'; "
                                  f"line {line_no} (ingested_gb) amount: embedded '378.00', the warehouse has '379.00'")
        assert "has sha256" not in message  # the PDF is as issued: the warehouse is what changed
        assert len(message.splitlines()) == 1  # the other documents match
    finally:
        owner_sql(f"update pipeline.invoice_lines set amount = amount - 1, list_amount = list_amount - 1 where {where}",
                  (number,))
    assert invoices.verify("2033-05") == len(BILLED)


def test_a_tampered_attachment_fails_verify_even_with_its_sha256_recorded_again(issued, tmp_path):
    record = issued["t002"]
    original = Path(record.pdf_uri).read_bytes()
    reader = pypdf.PdfReader(io.BytesIO(original))
    catalog = reader.trailer["/Root"]
    stream = catalog["/AF"][0].get_object()["/EF"]["/F"].get_object()
    data = json.loads(stream.get_data())
    data["lines"][0]["amount"] = f"{D(data['lines'][0]['amount']) + D('0.01'):.2f}"  # one cent, one line
    stream.set_data(attachment.encode(data))
    forged = io.BytesIO()
    pypdf.PdfWriter(clone_from=reader).write(forged)
    saved = tmp_path / "saved.pdf"
    shutil.copyfile(record.pdf_uri, saved)
    Path(record.pdf_uri).write_bytes(forged.getvalue())
    digest = hashlib.sha256(forged.getvalue()).hexdigest()
    owner_sql("update pipeline.invoices set pdf_sha256 = %s where invoice_number = %s", (digest, record.invoice_number))
    try:
        with pytest.raises(InvoiceError) as refused:
            invoices.verify("2033-05")
        message = str(refused.value)
        line = data["lines"][0]
        assert f"issued document {record.invoice_number}" in message
        assert (f"line 1 ({line['meter']}) amount: embedded '{line['amount']}', the warehouse has "
                f"'{D(line['amount']) - D('0.01'):.2f}'") in message
        assert (f"the embedded line amounts sum to {record.total + D('0.01'):.2f}, not to the printed total "
                f"{record.total:.2f}") in message
    finally:
        shutil.copyfile(saved, record.pdf_uri)
        owner_sql("update pipeline.invoices set pdf_sha256 = %s where invoice_number = %s",
                  (record.pdf_sha256, record.invoice_number))
    assert invoices.verify("2033-05") == len(BILLED)


def test_a_document_issued_before_embedded_lines_is_reported_not_failed(issued, settings, capsys):
    """A final document whose PDF (sha256 intact) embeds no file: checked by sha256 only, and said so."""
    pdf = render.render_invoice_pdf(LEGACY, [LEGACY_LINE], LEGACY_TENANT)  # laid out as before: no attachment
    uri = Path(settings.reports_out) / "2033-04" / "LEGACY-1.pdf"
    uri.parent.mkdir(parents=True, exist_ok=True)
    uri.write_bytes(pdf)
    owner_sql("insert into pipeline.invoices (invoice_number, tenant_id, period_start, period_end, close_period,"
              " currency, total, pdf_uri, pdf_sha256, status, issue_date, finalized_at, usage_as_of)"
              " values ('LEGACY-1', 't003', '2033-04-01', '2033-04-30', '2033-04-01', 'USD', 4.50, %s, %s,"
              " 'final', '2033-05-04', now(), now())", (str(uri), hashlib.sha256(pdf).hexdigest()))
    try:
        result = invoices.verify_documents("2033-04")
        assert (result.documents, result.with_lines, result.without_lines) == (1, 0, ("LEGACY-1",))
        assert main(["invoices", "verify", "--period", "2033-04"]) == 0
        assert capsys.readouterr().out == (
            "1 issued documents of 2033-04: every PDF matches its sha256; 0 embed lines equal to the warehouse's "
            "frozen lines; 1 issued before documents embedded their lines (sha256 only): LEGACY-1\n")
        uri.write_bytes(pdf + b"%changed\n")  # sha256 still guards it
        with pytest.raises(InvoiceError, match=r"issued document LEGACY-1 .* has sha256 "):
            invoices.verify("2033-04")
    finally:
        owner_sql("delete from pipeline.invoices where invoice_number = 'LEGACY-1'")


# --------------------------------------------------------------------------- notes


def test_a_credit_note_embeds_its_difference_lines(issued):
    """20 hours of t001's May ingest withdrawn after the close: June's close credits them on a note that
    embeds its lines (the differences) like an invoice."""
    with warehouse.connect() as conn:
        withdrawn = conn.execute(
            "delete from raw.usage_snapshots where tenant_id = 't001' and meter = 'ingested_gb'"
            " and hour_start >= '2033-05-10 00:00+00' and hour_start < '2033-05-10 20:00+00'").rowcount
    assert withdrawn == 20
    transform.build(*month_window("2033-05"))

    (note,) = [n for n in close.issue_corrections("2033-06", issue_date=dt.date(2033, 7, 4)) if n.period_start == MAY]

    assert (note.document_type, note.corrects, note.total) == ("credit_note", issued["t001"].invoice_number,
                                                               D("-15.75"))
    reader, data = embedded(note.pdf_uri)
    assert list(reader.attachments) == [f"{note.invoice_number}.lines.json"]
    assert data["lines"] == frozen(note.invoice_number)
    assert [(line["meter"], line["quantity"], line["list_amount"], line["discount_amount"], line["amount"],
             line["price_valid_from"]) for line in data["lines"]] == [
        ("ingested_gb", "-50.000000000000", "-17.50", "-1.75", "-15.75", None)]
    assert (data["document"]["type"], data["document"]["corrects"], data["document"]["total"]) == (
        "credit_note", issued["t001"].invoice_number, "-15.75")
    assert data["totals"]["total"] == "-15.75"
    assert data["price_versions"] == []
    assert reader.trailer["/Root"]["/AF"][0].get_object()["/AFRelationship"] == "/Data"
    assert invoices.verify_documents("2033-05").with_lines == len(BILLED) + 1
