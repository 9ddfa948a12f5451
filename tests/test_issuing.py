"""Issuing in three steps (chargeback.billing.issuing): a plan that reserves the numbers, batches
rendered anywhere and in any order, one commit — the path billing_monthly fans out over workers.

August 2033, its first day of usage for t001 and t002 (four invoices with t007 and t008's
commitments), loaded set-based and built by the real dbt transform, in a database of its own
so that its counter starts at zero. The steps run in this process here; the Celery test
(tests/test_end_to_end.py) runs them as Airflow tasks on workers.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.billing import issuing, store
from chargeback.billing.document import DEFAULT_ISSUER, InvoiceError
from chargeback.platform import warehouse
from conftest import database_of_its_own
from test_month_close import BILLED, load_month, pdf_text

pytestmark = pytest.mark.warehouse

PERIOD, MONTH = "2033-08", dt.date(2033, 8, 1)
NUMBERS = [f"CB-2033-{n:06d}" for n in range(1, len(BILLED) + 1)]


@pytest.fixture(scope="module")
def month(test_warehouse):
    with database_of_its_own("issuing"):
        load_month(PERIOD, tag="iss", hours=24)
        yield PERIOD


def runs() -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute("select run_id, status, first_number, documents, batches from pipeline.invoice_runs"
                            " order by run_id").fetchall()


def staged(run_id: int) -> dict[str, str | None]:
    with warehouse.connect() as conn:
        return dict(conn.execute("select invoice_number, staged_uri from pipeline.invoice_run_documents"
                                 " where run_id = %s", (run_id,)).fetchall())


def counter() -> int:
    with warehouse.connect() as conn:
        row = conn.execute("select last_number from pipeline.invoice_counters where issuer = 'chargeback'").fetchone()
    return row[0] if row else 0


def mart_totals() -> dict[str, Decimal]:
    with warehouse.connect() as conn:
        return dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                 (MONTH,)).fetchall())


def test_an_open_run_reserves_the_next_numbers_until_it_is_committed(month):
    plan = issuing.plan(month, batch_size=1)
    assert (plan.documents, plan.batches, plan.first_number, plan.last_number) == (4, (0, 1, 2, 3), *NUMBERS[::3])
    assert runs() == [(plan.run_id, "open", 1, 4, 4)]
    assert counter() == 0  # reserved, not taken

    # no other document of the issuer is issued meanwhile: the numbers stay the next ones
    with pytest.raises(InvoiceError) as refused, warehouse.connect() as conn:
        store.lock_issuer(conn, DEFAULT_ISSUER)
    assert str(refused.value).startswith(
        f"issuer chargeback: numbers CB-2033-000001 to CB-2033-000004 are reserved by issuing run {plan.run_id}"
        " of 2033-08, planned ")
    assert str(refused.value).endswith(
        "UTC and not issued yet. If billing_monthly is still closing 2033-08, wait for it; if that run failed,"
        " close 2033-08 again (chargeback close --period 2033-08, with --override-incomplete if it needed one, or"
        " clear billing_monthly's plan_final_invoices), which replans and issues it; then retry")
    with warehouse.connect() as conn:  # drafts take no number: the reservation does not stop them
        store.lock_counter(conn, DEFAULT_ISSUER)

    assert issuing.render_batch(plan.run_id, 0) == issuing.render_batch(plan.run_id, 2) == 1
    with pytest.raises(InvoiceError, match=rf"^issuing run {plan.run_id} of 2033-08: batches \[1, 3\] are not "):
        issuing.commit(plan.run_id)
    assert counter() == 0
    with warehouse.connect() as conn:
        assert conn.execute("select count(*) from pipeline.invoices where status = 'final'").fetchone() == (0,)


def test_planning_the_month_again_abandons_the_open_run_and_its_staged_pdfs(month):
    [(old, *_)] = runs()
    leftovers = [Path(uri) for uri in staged(old).values() if uri]
    assert len(leftovers) == 2
    assert all(p.exists() and p.name.startswith(".CB-2033-") for p in leftovers)

    plan = issuing.plan(month, batch_size=3)
    assert runs() == [(old, "abandoned", 1, 4, 4), (plan.run_id, "open", 1, 4, 2)]
    assert not any(p.exists() for p in leftovers)
    assert staged(old) == {}
    replaced = (f"issuing run {old} of 2033-08 is abandoned: nothing to {{}} (a later plan of the month replaced"
                " it: let that run finish, or close the month again)")
    with pytest.raises(InvoiceError) as refused:
        issuing.render_batch(old, 0)
    assert str(refused.value) == replaced.format("render")
    with pytest.raises(InvoiceError) as refused:
        issuing.commit(old)
    assert str(refused.value) == replaced.format("commit")


def test_batches_render_from_the_plan_in_any_order_and_the_commit_issues_it(month, settings):
    (_, (run_id, *_)) = runs()
    planned = mart_totals()
    load_month(PERIOD, tag="iss-late", hours=2)  # late usage after the plan: the next close's correction
    assert mart_totals() != planned

    assert issuing.render_batch(run_id, 1) == 1  # the last batch first, then the first again and again
    assert issuing.render_batch(run_id, 0) == 3
    first_staging = staged(run_id)
    assert issuing.render_batch(run_id, 0) == 3
    assert not any(Path(uri).exists() for number, uri in first_staging.items() if number != NUMBERS[-1])

    records = issuing.commit(run_id)
    assert [(r.invoice_number, r.tenant_id, r.total, r.status) for r in records] == [
        (number, tenant, planned[tenant], "final") for number, tenant in zip(NUMBERS, BILLED, strict=True)]
    assert counter() == 4
    assert runs()[-1][:2] == (run_id, "issued")
    assert staged(run_id) == {}
    out = Path(settings.reports_out) / PERIOD
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [f"{n}.pdf" for n in NUMBERS]
    for record in records:
        text = pdf_text(Path(record.pdf_uri).read_bytes())
        assert record.invoice_number in text
        assert f"{record.total:,.2f}" in text
    with warehouse.connect() as conn:  # the lines frozen are the ones printed, from the plan
        frozen = dict(conn.execute(
            "select i.tenant_id, sum(l.amount) from pipeline.invoice_lines as l join pipeline.invoices as i"
            " using (document_id) where i.period_start = %s group by i.tenant_id", (MONTH,)).fetchall())
    assert frozen == planned

    assert issuing.commit(run_id) == records  # a repeated commit changes nothing
    assert issuing.plan(month) is None  # every tenant has its final invoice
    with warehouse.connect() as conn:
        store.lock_issuer(conn, DEFAULT_ISSUER)  # the reservation ended with the run


def test_a_plans_documents_read_back_exactly_as_written():
    """Amounts keep their digits and scale, instants their zone, through the plan's jsonb."""
    import json

    from chargeback.billing.document import Invoice, InvoiceLine, SourceShare, Tenant, from_plain, to_plain
    from chargeback.billing.render import RenderJob

    line = InvoiceLine("ingested_gb", "Log data ingested", Decimal("1234.500000"), "GB", Decimal("0.4500"),
                       Decimal("555.53"), "USD", "standard", line_no=1, list_amount=Decimal("617.25"),
                       discount_amount=Decimal("-61.72"), price_valid_from=dt.date(2033, 1, 1))
    share = SourceShare("ingested_gb", None, Decimal("0.000001"), "GB", Decimal("0.3333"), Decimal("0.01"), None, 7)
    invoice = Invoice("CB-2033-000001", "t001", MONTH, dt.date(2033, 8, 31), dt.date(2033, 9, 4), "USD",
                      Decimal("555.53"), "standard", status="final", notes=("one", "two"), usage_sources=(share,),
                      usage_as_of=dt.datetime(2033, 9, 4, 6, 0, 1, 250000, tzinfo=dt.UTC))
    job = RenderJob(invoice, (line,), Tenant("t001", "Acme", "Acme", "BU", "team", "standard"), "", "CB-2033-000001")
    back = from_plain(RenderJob, json.loads(json.dumps(to_plain(job))))
    assert back == job
    assert str(back.lines[0].quantity) == "1234.500000"
    assert str(back.lines[0].unit_price) == "0.4500"
    assert back.invoice.usage_as_of.utcoffset() == dt.timedelta(0)
