"""Month close: drafts until the grace period ends, a completeness check, final and immutable
invoices numbered without gaps, and credit/debit notes instead of edits.

Two hand-made months, far from the ones other modules bill: March 2032 with usage in every
hour of every meter, February 2032 with gaps. Loaded set-based into raw, built by the real
dbt transform, checked by the real mart checks, rendered by WeasyPrint and read back.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import hashlib
import io
import re
import shutil
from decimal import Decimal
from pathlib import Path

import fsspec.implementations.local
import psycopg
import pypdf
import pytest

from chargeback.billing import close, document, focus, invoices
from chargeback.cli import main
from chargeback.engine import transform
from chargeback.platform import warehouse
from chargeback.platform.periods import month_window

pytestmark = pytest.mark.warehouse

D = Decimal
TENANTS = ["t001", "t002"]
# t007 and t008 commit to a monthly minimum (config/tenants.yml): invoiced without usage too
BILLED = ["t001", "t002", "t007", "t008"]
# February 2032's gaps: three hours of ingested_gb, one of stored_gb
GAPS = {"ingested_gb": ("2032-02-03 14:00", "2032-02-03 16:00"), "stored_gb": ("2032-02-10 00:00", "2032-02-10 00:00")}


def pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def load_month(period: str, gaps: dict[str, tuple[str, str]] | None = None, *, tag: str = "mc",
               hours: int | None = None) -> None:
    """Every hour (or the first ``hours``) of every configured meter for TENANTS (set-based),
    except ``gaps``; then dbt."""
    start, end = month_window(period)
    if hours:
        end = start + dt.timedelta(hours=hours)
    with warehouse.connect() as conn:
        conn.execute(
            """
            insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,
                                             kind, source_file, source_line, load_id)
            select format('%%s-%%s-%%s-%%s', %(tag)s::text, t.tenant_id, m.meter, to_char(h, 'YYYYMMDDHH24')),
                   t.tenant_id, m.meter, case when m.kind = 'gauge' then 100 else 2.5 end, m.unit, h,
                   h + interval '5 minutes', m.kind, 'test_month_close.py', 1, 0
            from unnest(%(tenants)s::text[]) as t (tenant_id)
            cross join config.meters as m
            cross join generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 hour',
                                       interval '1 hour') as h
            where not exists (
                select from jsonb_each(%(gaps)s::jsonb) as g (meter, span)
                where g.meter = m.meter
                  and h between ((g.span ->> 0)::timestamp at time zone 'UTC')
                            and ((g.span ->> 1)::timestamp at time zone 'UTC')
            )
            on conflict (tenant_id, snapshot_id) do nothing
            """,
            {"tag": tag, "tenants": TENANTS, "start": start, "end": end,
             "gaps": psycopg.types.json.Jsonb({k: list(v) for k, v in (gaps or {}).items()})},
        )
    transform.build(start, end)


def counter() -> int:
    with warehouse.connect() as conn:
        row = conn.execute("select last_number from pipeline.invoice_counters where issuer = 'chargeback'").fetchone()
    return row[0] if row else 0


def documents(period_start: dt.date) -> dict[str, tuple]:
    with warehouse.connect() as conn:
        rows = conn.execute(
            "select tenant_id, invoice_number, status, total, pdf_uri, pdf_sha256, finalized_at, usage_as_of"
            " from pipeline.invoices where period_start = %s and document_type = 'invoice'", (period_start,))
        return {row[0]: row[1:] for row in rows}


def mart_totals(period_start: dt.date) -> dict[str, Decimal]:
    with warehouse.connect() as conn:
        return dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                 (period_start,)).fetchall())


@pytest.fixture(scope="module")
def march(test_warehouse):
    load_month("2032-03")
    return dt.date(2032, 3, 1)


@pytest.fixture(scope="module")
def april(test_warehouse):
    """The month whose close issues the corrections: a day of usage is enough for its FOCUS export."""
    load_month("2032-04", hours=24)
    return dt.date(2032, 4, 1)


@pytest.fixture(scope="module")
def february(test_warehouse):
    load_month("2032-02", GAPS)
    return dt.date(2032, 2, 1)


# --------------------------------------------------------------------------- grace period


def test_invoices_stay_drafts_until_the_grace_period_ends(march, settings):
    before = counter()
    result = close.close_month("2032-03", as_of="2032-04-03T23:59:59Z", workers=1)
    assert not result.closed
    assert "2032-03 is in its grace period: it can close from 2032-04-04 00:00 UTC" in result.summary()
    assert sorted(r.tenant_id for r in result.drafts) == BILLED
    rows = documents(march)
    assert {t: (row[0], row[1]) for t, row in rows.items()} == dict.fromkeys(BILLED, (None, "draft"))
    for record in result.drafts:
        assert record.pdf_uri == str(Path(settings.reports_out) / "2032-03" / "drafts" / f"{record.tenant_id}.pdf")
        text = pdf_text(Path(record.pdf_uri).read_bytes())
        assert "DRAFT" in text
        assert "not for payment" in text
        assert "Invoice number Draft — numbered when issued" in text
        assert not re.search(r"CB-\d{4}-\d{6}", text)
        assert "Issue date 4 April 2032" in text  # the day the month may close
    assert counter() == before


# --------------------------------------------------------------------------- completeness


def test_incomplete_month_is_refused_listing_the_missing_hours(february):
    before = counter()
    with pytest.raises(close.MonthNotComplete) as refused:
        close.close_month("2032-02", as_of="2032-03-05T00:00Z", workers=1)
    line = str(refused.value)
    assert line == (
        "chargeback refusal: month close of 2032-02 at 2032-02: 4 hours of usage are missing — "
        "ingested_gb: 2032-02-03 14:00–16:00 (3 h); stored_gb: 2032-02-10 00:00 (1 h) — load the missing hours "
        "(chargeback load --start … --end …) and close again, or close anyway with --override-incomplete REASON "
        "--by NAME (DAG params override_incomplete, override_by)")
    with warehouse.connect() as conn:
        assert conn.execute("select line from pipeline.events where kind = 'refusal' order by event_id desc limit 1"
                            ).fetchone()[0] == line
        assert conn.execute(
            "select status, missing_hours, missing, finalized_at from pipeline.month_closes where period = %s",
            (february,)).fetchone() == (
            "incomplete", 4, {"ingested_gb": [["2032-02-03 14:00:00+00:00", "2032-02-03 16:00:00+00:00", 3]],
                              "stored_gb": [["2032-02-10 00:00:00+00:00", "2032-02-10 00:00:00+00:00", 1]]}, None)
    assert {row[1] for row in documents(february).values()} <= {"draft"}
    assert counter() == before


def test_override_is_recorded_and_printed_on_the_invoice(february):
    result = close.close_month("2032-02", as_of="2032-03-05T00:00Z", workers=1,
                               override_reason="collector outage, usage lost upstream", override_by="Jane Doe")
    assert sorted(r.tenant_id for r in result.finals) == BILLED
    with warehouse.connect() as conn:
        status, missing_hours, reason, by, finalized_at = conn.execute(
            "select status, missing_hours, override_reason, override_by, finalized_at from pipeline.month_closes"
            " where period = %s", (february,)).fetchone()
    assert (status, missing_hours, reason, by) == ("overridden", 4, "collector outage, usage lost upstream",
                                                   "Jane Doe")
    assert finalized_at is not None
    for record in result.finals:
        text = pdf_text(Path(record.pdf_uri).read_bytes()).replace("14:00– 16:00", "14:00–16:00")  # a wrapped line
        assert ("Issued for an incomplete month: 4 hours of usage were missing at the close (ingested_gb: "
                "2032-02-03 14:00–16:00 (3 h); stored_gb: 2032-02-10 00:00 (1 h)). Closed on the authority of "
                "Jane Doe: collector outage, usage lost upstream.") in text
        assert f"Invoice number {record.invoice_number}" in text
        assert "DRAFT" not in text


# --------------------------------------------------------------------------- finalization


def test_pdf_write_failure_leaves_drafts_and_a_retry_finalizes(march, settings, monkeypatch):
    close.close_month("2032-03", as_of="2032-04-01T00:00Z", workers=1)  # drafts
    drafts, before = documents(march), counter()
    real = fsspec.implementations.local.LocalFileSystem.pipe_file
    calls = []

    def disk_full(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the third final PDF: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "pipe_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        close.close_month("2032-03", as_of="2032-04-04T06:00Z", workers=1)
    assert documents(march) == drafts  # every invoice still the same draft
    assert counter() == before
    with warehouse.connect() as conn:
        assert conn.execute("select count(*) from pipeline.invoice_lines l join pipeline.invoices i"
                            " using (document_id) where i.period_start = %s", (march,)).fetchone()[0] == 0
        assert conn.execute("select finalized_at from pipeline.month_closes where period = %s",
                            (march,)).fetchone()[0] is None
        # its issuing run ended unissued: no reservation holds the issuer's next numbers
        assert conn.execute("select status from pipeline.invoice_runs where period_start = %s",
                            (march,)).fetchall() == [("abandoned",)]
    out = Path(settings.reports_out) / "2032-03"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == []  # no final PDF, no temporary file

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "pipe_file", real)
    result = close.close_month("2032-03", as_of="2032-04-04T06:00Z", workers=1)
    assert result.closed
    finals = documents(march)
    totals = mart_totals(march)
    assert sorted(finals) == BILLED
    numbers = [finals[t][0] for t in BILLED]
    assert [int(n.rsplit("-", 1)[1]) for n in numbers] == list(range(before + 1, before + len(BILLED) + 1))
    assert counter() == before + len(BILLED)
    for tenant_id, (number, status, total, uri, _sha, finalized_at, usage_as_of) in finals.items():
        assert status == "final"
        assert total == totals[tenant_id]
        assert uri == str(out / f"{number}.pdf")
        assert finalized_at is not None
        assert usage_as_of is not None
        text = pdf_text(Path(uri).read_bytes())
        assert f"Invoice number {number}" in text
        assert f"Total {total:,.2f} USD" in text
        assert "DRAFT" not in text
        assert f"usage known at {usage_as_of.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC" in text
        assert "Issue date 4 April 2032" in text
    assert not (out / "drafts").exists() or list((out / "drafts").iterdir()) == []
    with warehouse.connect() as conn:  # the lines are a frozen copy of what the documents show
        frozen = conn.execute(
            "select i.tenant_id, sum(l.amount), count(*) from pipeline.invoice_lines l join pipeline.invoices i"
            " using (document_id) where i.period_start = %s group by 1", (march,)).fetchall()
        mart = conn.execute("select tenant_id, sum(amount), count(*) from marts.fct_invoice_lines"
                            " where invoice_month = %s group by 1", (march,)).fetchall()
    assert sorted(frozen) == sorted(mart)


def test_finalized_invoice_refuses_update_and_delete(march):
    number = documents(march)["t001"][0]
    statements = [
        ("update pipeline.invoices set total = total + 1 where invoice_number = %(n)s",
         f"UPDATE of final invoice {number} (tenant t001, 2032-03) refused: issued documents are immutable"),
        ("delete from pipeline.invoices where invoice_number = %(n)s",
         f"DELETE of final invoice {number} (tenant t001, 2032-03) refused"),
        ("update pipeline.invoice_lines set amount = 0 where document_id ="
         " (select document_id from pipeline.invoices where invoice_number = %(n)s)",
         f"UPDATE of a line of final document {number} refused"),
        ("delete from pipeline.invoice_lines where document_id ="
         " (select document_id from pipeline.invoices where invoice_number = %(n)s)",
         f"DELETE of a line of final document {number} refused"),
        ("insert into pipeline.invoice_lines (document_id, line_no, line_type, description, quantity,"
         " pricing_quantity, list_amount, discount_amount, amount, currency)"
         " select document_id, 99, 'usage', 'extra', 1, 1, 1, 0, 1, 'USD' from pipeline.invoices"
         " where invoice_number = %(n)s",
         f"INSERT of a line of final document {number} refused"),
        ("truncate pipeline.invoice_lines", "TRUNCATE of pipeline.invoice_lines refused"),
        ("truncate pipeline.invoices cascade", "TRUNCATE of pipeline.invoices refused"),
    ]
    for statement, message in statements:  # as the owner: the triggers refuse even it (the pipeline
        # role lacks most of these privileges in the first place: tests/test_roles.py)
        with warehouse.connect(admin=True) as conn, pytest.raises(psycopg.errors.RaiseException) as refused:
            conn.execute(statement, {"n": number})
        assert message in str(refused.value), statement
    assert documents(march)["t001"][0] == number


def test_finalized_pdf_hash_matches_the_file(march, tmp_path):
    finals = documents(march)
    for number, _, _, uri, sha, _, _ in finals.values():
        assert hashlib.sha256(Path(uri).read_bytes()).hexdigest() == sha, number
    assert invoices.verify("2032-03") == len(BILLED)
    number, _, _, uri, _, _, _ = finals["t002"]
    saved = tmp_path / "saved.pdf"
    shutil.copyfile(uri, saved)
    try:
        Path(uri).write_bytes(Path(uri).read_bytes() + b"%tampered\n")
        with pytest.raises(document.InvoiceError) as refused:
            invoices.verify("2032-03")
        assert str(refused.value).startswith(f"chargeback refusal: issued document {number} at {uri}: its PDF {uri}"
                                             " has sha256 ")
        assert "restore the issued file from backup" in str(refused.value)
    finally:
        shutil.copyfile(saved, uri)
    assert invoices.verify() >= len(BILLED)


def test_closing_a_final_month_again_changes_nothing(march):
    before, rows = counter(), documents(march)
    result = close.close_month("2032-03", as_of="2032-05-01T00:00Z", workers=1)
    assert [r.invoice_number for r in result.finals] == [rows[t][0] for t in BILLED]
    assert result.notes == []
    with pytest.raises(document.InvoiceError, match=r"is final; only drafts are re-rendered"):
        invoices.render_month("2032-03", workers=1)
    assert documents(march) == rows
    assert counter() == before


# --------------------------------------------------------------------------- corrections


def test_usage_after_finalization_issues_a_debit_note_referencing_the_invoice(march, april, settings, tmp_path):
    original = documents(march)
    with warehouse.connect() as conn:
        original_lines = conn.execute(
            "select l.* from pipeline.invoice_lines l join pipeline.invoices i using (document_id)"
            " where i.period_start = %s order by 1, 2", (march,)).fetchall()
        issued_ingest = conn.execute(
            "select sum(quantity), sum(amount) from marts.fct_invoice_lines where invoice_month = %s"
            " and tenant_id = 't001' and meter = 'ingested_gb'", (march,)).fetchone()
        # late usage for a finalized month: 100 GB more ingested by t001 on 2032-03-15 10:00
        conn.execute(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id) values ('late-t001-ingest', 't001', 'ingested_gb', 100, 'GB',"
            " '2032-03-15 10:00+00', '2032-03-15 10:05+00', 'counter', 'late.ndjson', 1, 0)")
    start, end = month_window("2032-03")
    transform.build(start, end)
    with warehouse.connect() as conn:
        now_ingest = conn.execute(
            "select sum(quantity), sum(amount) from marts.fct_invoice_lines where invoice_month = %s"
            " and tenant_id = 't001' and meter = 'ingested_gb'", (march,)).fetchone()
    assert now_ingest[0] - issued_ingest[0] == D(100)
    before = counter()

    notes = close.issue_corrections("2032-04", issue_date=dt.date(2032, 5, 4))

    assert len(notes) == 1
    note = notes[0]
    assert (note.document_type, note.tenant_id, note.corrects, note.status) == (
        "debit_note", "t001", original["t001"][0], "final")
    assert note.invoice_number == f"CB-2032-{before + 1:06d}"
    assert note.total == now_ingest[1] - issued_ingest[1] == D("31.50")
    # t001 ingests 1,860 GB a month: the 100 GB fall in the enterprise tier 2 (0.35 USD), less its 10% discount
    assert counter() == before + 1
    with warehouse.connect() as conn:
        lines = conn.execute(
            "select line_type, meter, quantity, list_amount, discount_amount, amount"
            " from pipeline.invoice_lines l join pipeline.invoices i"
            " using (document_id) where i.invoice_number = %s", (note.invoice_number,)).fetchall()
        assert lines == [("usage", "ingested_gb", D(100), D("35.00"), D("3.50"), D("31.50"))]
        assert conn.execute("select close_period from pipeline.invoices where invoice_number = %s",
                            (note.invoice_number,)).fetchone()[0] == dt.date(2032, 4, 1)
        assert conn.execute(
            "select l.* from pipeline.invoice_lines l join pipeline.invoices i using (document_id)"
            " where i.period_start = %s and i.document_type = 'invoice' order by 1, 2", (march,)).fetchall(
        ) == original_lines
    assert documents(march) == original  # the issued invoices: rows, totals, PDF hashes
    assert invoices.verify("2032-03") == len(BILLED) + 1
    text = pdf_text(Path(note.pdf_uri).read_bytes())
    assert note.pdf_uri == str(Path(settings.reports_out) / "2032-03" / f"{note.invoice_number}.pdf")
    assert "DEBIT NOTE" in text
    assert f"Corrects invoice {original['t001'][0]} of March 2032" in text
    assert "100.000 GB — 35.00 −3.50 31.50" in text
    assert "Total 31.50 USD" in text
    # issued once: the next close finds nothing left to correct
    assert close.issue_corrections("2032-04") == []
    assert counter() == before + 1

    # FOCUS: a Correction in the billing period the note was issued in, charged to the corrected month
    export = focus.export("2032-04", tmp_path / "focus-2032-04.csv", fmt="csv")
    with export.files[0].open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    corrections = [row for row in rows if row["ChargeClass"] == "Correction"]
    assert [(r["InvoiceId"], r["SubAccountId"], r["BilledCost"], r["ChargeCategory"], r["BillingPeriodStart"],
             r["ChargePeriodStart"], r["x_ChargeSource"]) for r in corrections] == [
        (note.invoice_number, "t001", "31.50", "Adjustment", "2032-04-01T00:00:00Z", "2032-03-01T00:00:00Z",
         "correction")]
    assert original["t001"][0] in corrections[0]["ChargeDescription"]
    assert all(row["ChargeClass"] == "" for row in rows if row["x_ChargeSource"] != "correction")
    validator = focus.validator_executable()
    if not validator.exists():
        pytest.fail(f"the FOCUS validator is missing ({validator}): run `make focus-validator`")
    report = focus.validate(export.files[0])
    assert report.ok, report.summary() + "\n" + report.output


def test_usage_withdrawn_after_finalization_issues_a_credit_note_referencing_the_invoice(settings):
    """June 2032 is issued; then 20 hours of t001's ingest are withdrawn (a replayed hour
    publishes what its corrected file holds now). The June invoice stays as issued and
    July's close credits the difference on a note that names it."""
    load_month("2032-06", tag="cn")
    assert close.close_month("2032-06", as_of="2032-07-04T00:00Z", workers=1).closed
    june = dt.date(2032, 6, 1)
    original = documents(june)
    with warehouse.connect() as conn:
        withdrawn = conn.execute(
            "delete from raw.usage_snapshots where tenant_id = 't001' and meter = 'ingested_gb'"
            " and hour_start >= '2032-06-10 00:00+00' and hour_start < '2032-06-10 20:00+00'").rowcount
    assert withdrawn == 20
    transform.build(*month_window("2032-06"))
    before = counter()

    notes = [n for n in close.issue_corrections("2032-07", issue_date=dt.date(2032, 8, 4)) if n.period_start == june]

    assert [(n.document_type, n.tenant_id, n.corrects, n.status, n.invoice_number) for n in notes] == [
        ("credit_note", "t001", original["t001"][0], "final", f"CB-2032-{before + 1:06d}")]
    # t001 ingests 1,800 GB in June: the 50 GB withdrawn were in tier 2 (0.35 USD), less its 10% discount
    assert notes[0].total == D("-15.75")
    with warehouse.connect() as conn:
        lines = conn.execute(
            "select line_type, meter, quantity, list_amount, discount_amount, amount"
            " from pipeline.invoice_lines l join pipeline.invoices i"
            " using (document_id) where i.invoice_number = %s", (notes[0].invoice_number,)).fetchall()
    assert lines == [("usage", "ingested_gb", D(-50), D("-17.50"), D("-1.75"), D("-15.75"))]
    assert documents(june) == original
    assert invoices.verify("2032-06") == len(BILLED) + 1
    text = pdf_text(Path(notes[0].pdf_uri).read_bytes())
    assert "CREDIT NOTE" in text
    assert f"Corrects invoice {original['t001'][0]} of June 2032" in text
    assert "-50.000 GB — -17.50 +1.75 -15.75" in text  # the discount withdrawn with the usage adds back
    assert "Total -15.75 USD" in text


def test_cli_close_and_verify_say_what_they_did(march, capsys):
    numbers = sorted(row[0] for row in documents(march).values())
    assert main(["close", "--period", "2032-03", "--as-of", "2032-05-01T00:00Z", "--workers", "1"]) == 0
    assert capsys.readouterr().out == f"2032-03 is closed: 4 final invoices, {numbers[0]} to {numbers[-1]}\n"
    assert main(["invoices", "verify", "--period", "2032-03"]) == 0  # four invoices and the debit note
    assert capsys.readouterr().out == ("5 issued documents of 2032-03: every PDF matches its sha256; 5 embed lines "
                                       "equal to the warehouse's frozen lines\n")
    assert main(["close", "--period", "2032-03", "--override-incomplete", "outage"]) == 1
    assert "--override-incomplete REASON and --by NAME go together" in capsys.readouterr().err


def test_tenant_first_billed_after_the_close_gets_an_invoice_of_its_own(march, april):
    before, issued_before = counter(), documents(march)
    with warehouse.connect() as conn:  # t003's first usage of March arrives after March was issued
        conn.execute(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id) values ('late-t003-ingest', 't003', 'ingested_gb', 10, 'GB',"
            " '2032-03-20 08:00+00', '2032-03-20 08:05+00', 'counter', 'late.ndjson', 1, 0)")
    transform.build(*month_window("2032-03"))

    issued = close.issue_corrections("2032-04", issue_date=dt.date(2032, 5, 4))

    assert [(r.tenant_id, r.document_type, r.corrects, r.status, r.invoice_number) for r in issued] == [
        ("t003", "invoice", None, "final", f"CB-2032-{before + 1:06d}")]
    assert issued[0].total == mart_totals(march)["t003"] == D("2.10")  # 5 GB free, 5 GB at 0.42 USD
    after = documents(march)
    assert {t: row for t, row in after.items() if t != "t003"} == issued_before
    text = pdf_text(Path(issued[0].pdf_uri).read_bytes())
    assert f"Invoice number {issued[0].invoice_number}" in text
    assert "Total 2.10 USD" in text
    assert close.issue_corrections("2032-04") == []
    assert counter() == before + 1


def test_invoice_numbers_are_gapless_per_issuer(march, february):
    """Across drafts, re-renders, a failed finalization, finalizations, a note and a late invoice (the tests above)."""
    with warehouse.connect() as conn:
        rows = conn.execute("select invoice_number, status, document_type, period_start, tenant_id, finalized_at"
                            " from pipeline.invoices where issuer = 'chargeback'").fetchall()
    numbered = [row for row in rows if row[0] is not None]
    assert all(status == "final" for _, status, *_ in numbered)
    assert all(number is None for number, status, *_ in rows if status == "draft")
    assert sorted(int(row[0].rsplit("-", 1)[1]) for row in numbered) == list(range(1, counter() + 1))
    # the invoices issued together (one transaction: one finalized_at) follow tenant order
    batches = {(row[3], row[5]) for row in numbered if row[2] == "invoice" and row[3] in (february, march)}
    assert len(batches) == 3  # February, March, and March's late tenant
    for month, finalized_at in batches:
        batch = sorted((row[4], row[0]) for row in numbered if (row[3], row[5]) == (month, finalized_at))
        assert [n for _, n in batch] == sorted(n for _, n in batch)
