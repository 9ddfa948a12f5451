"""Issuing a month's final invoices in three steps, so that rendering can fan out over workers.

1. :func:`plan` — the coordinator. The month is read from the marts in one snapshot
   (:func:`store.read_month_to_invoice`: the invoices and their appendices), then, in one transaction under the issuer's
   lock, every invoice is assembled and checked, numbered in tenant order from the issuer's
   next number, put in a batch, and written to ``pipeline.invoice_run_documents`` with
   everything its page shows. The run is *open*: it reserves those numbers. The counter itself
   does not move, and while the run is open no other document of the issuer is issued
   (:func:`store.lock_issuer` refuses), so the reserved numbers stay the next ones.
2. :func:`render_batch` — any process on any machine that reaches the warehouse and
   ``reports_out``, any number at once. It renders one batch from the plan (not from the marts,
   which may have changed since) and stages each PDF beside its target under a temporary name,
   recording where and its sha256. A batch rendered again replaces its staged files.
3. :func:`commit` — in one transaction under the issuer's lock: every document of the run is
   staged, the counter is where the plan left it; the PDFs move into place and each document
   is issued with its number (the database checks it is the next one, ``pipeline.issue_document``)
   and its frozen lines. The run ends *issued*. If anything fails nothing is final: committing
   again completes it, or planning the month again abandons the open run (its files removed)
   and starts over.

Only issued documents take numbers, so numbering stays gapless however many workers render.
``invoices.finalize_month`` runs the three steps in one process; billing_monthly maps
:func:`render_batch` over the batches as Airflow tasks (docs/SCALE.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

import fsspec
from psycopg.types.json import Jsonb

from chargeback.billing import store
from chargeback.billing.document import (
    DEFAULT_ISSUER,
    InvoiceError,
    InvoiceRecord,
    Issuer,
    from_plain,
    invoice_number,
    to_plain,
)
from chargeback.billing.render import RenderJob, discard, place, stage
from chargeback.platform import warehouse
from chargeback.platform.periods import Period
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """An open issuing run: ``batches`` are the values :func:`render_batch` takes."""

    run_id: int
    period: str
    documents: int
    batches: tuple[int, ...]
    first_number: str
    last_number: str


def plan(period: str, *, settings: Settings | None = None, issue_date: dt.date | None = None,
         notes: Sequence[str] = (), batch_size: int | None = None,
         issuer: Issuer = DEFAULT_ISSUER) -> Plan | None:
    """Reserve the numbers of the month's final invoices and write what each will show.

    ``None`` when every invoiced tenant of the month has its final invoice already. A month
    issued before whose marts now bill a tenant it has no invoice for plans that tenant's
    invoice alone. An open run of the same month is abandoned (nothing of it was issued); an
    open run of another month refuses. ``batch_size`` (default ``settings.invoice_batch_size``;
    0 is one batch) invoices per batch; ``notes`` are printed on every invoice.
    """
    settings = settings or get_settings()
    batch_size = settings.invoice_batch_size if batch_size is None else batch_size
    if batch_size < 0:
        raise ValueError(f"batch_size must not be negative, got {batch_size}")
    period_start = Period.parse(period).first_day
    warehouse.ensure_schema(settings)
    month = store.read_month_to_invoice(period, settings)
    issue_date = issue_date or month.usage_as_of.date()
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    out_dir = f"{out_root.rstrip('/')}/{period}"

    leftovers: list[str] = []
    run: Plan | None = None
    with warehouse.connect(settings) as conn:
        last_number = store.lock_counter(conn, issuer)
        held = store.open_run(conn, issuer)
        if held and held[1] != period_start:
            raise store.reserved(issuer, held)
        if held:  # this month's run that did not finish: replaced by this plan, nothing of it was issued
            leftovers = _abandon(conn, held[0], out_dir)
            log.info("issuing run %d of %s abandoned: the month is planned again", held[0], period)
        issued = {r.tenant_id for r in store.final_documents(conn, period_start, document_type="invoice")}
        tenant_ids = sorted(h["tenant_id"] for h in month.headers if h["tenant_id"] not in issued)
        if tenant_ids:
            numbers = {t: invoice_number(issuer, period_start, last_number + n) for n, t in enumerate(tenant_ids, 1)}
            jobs = month.jobs(issuer, str(settings.reports_dir), issue_date=issue_date, leave_out=frozenset(issued),
                              status="final", numbers=numbers, notes=tuple(notes), usage_as_of=month.usage_as_of,
                              name=lambda tenant_id: numbers[tenant_id])
            order = {tenant_id: n for n, tenant_id in enumerate(tenant_ids)}
            jobs.sort(key=lambda job: order[job.invoice.tenant_id])  # numbering order
            size = batch_size or len(jobs)
            batches = tuple(range((len(jobs) + size - 1) // size))
            (run_id,) = conn.execute(
                "insert into pipeline.invoice_runs (issuer, period_start, first_number, documents, batches,"
                " usage_as_of) values (%s, %s, %s, %s, %s, %s) returning run_id",
                (issuer.key, period_start, last_number + 1, len(jobs), len(batches), month.usage_as_of)).fetchone()
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into pipeline.invoice_run_documents (run_id, invoice_number, position, batch, tenant_id,"
                    " job) values (%s, %s, %s, %s, %s, %s)",
                    [(run_id, job.invoice.invoice_number, n, n // size, job.invoice.tenant_id,
                      Jsonb(to_plain(dataclasses.replace(job, reports_dir="")))) for n, job in enumerate(jobs)])
            run = Plan(run_id, period, len(jobs), batches, jobs[0].invoice.invoice_number,
                       jobs[-1].invoice.invoice_number)
    discard(fs, leftovers)  # once the plan that replaced their run is committed
    if run:
        log.info("issuing run %d of %s: %d invoices in %d batches, %s to %s", run.run_id, period, run.documents,
                 len(run.batches), run.first_number, run.last_number)
    return run


def render_batch(run_id: int, batch: int | None = None, *, workers: int = 1,
                 settings: Settings | None = None) -> int:
    """Render one batch of an open run (``None``: all of it) and stage its PDFs; how many.

    The pages come from the plan, with this process's templates (``settings.reports_dir``).
    ``workers`` processes render in parallel (1: this process, as a mapped task does).
    """
    settings = settings or get_settings()
    with warehouse.connect(settings) as conn:
        run = _run(conn, run_id)
        _require_open(run, "render")
        rows = conn.execute(
            "select job from pipeline.invoice_run_documents where run_id = %s"
            " and (%s::integer is null or batch = %s) order by position", (run_id, batch, batch)).fetchall()
    if not rows:
        raise InvoiceError(f"issuing run {run_id} has no batch {batch}")
    reports_dir = str(settings.reports_dir.resolve())
    jobs = [dataclasses.replace(from_plain(RenderJob, job), reports_dir=reports_dir) for (job,) in rows]
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    staged = stage(jobs, fs, f"{out_root.rstrip('/')}/{run.period_start:%Y-%m}", workers)
    try:
        with warehouse.connect(settings) as conn:
            _require_open(_run(conn, run_id, lock=True), "render")
            earlier = [uri for (uri,) in conn.execute(  # an earlier rendering of these documents
                "select staged_uri from pipeline.invoice_run_documents where run_id = %s"
                " and invoice_number = any(%s) and staged_uri is not null", (run_id, list(staged)))]
            with conn.cursor() as cur:
                cur.executemany(
                    "update pipeline.invoice_run_documents set staged_uri = %s, pdf_sha256 = %s, rendered_at = now()"
                    " where run_id = %s and invoice_number = %s",
                    [(temp, digest, run_id, key) for key, (temp, _, digest) in staged.items()])
    except BaseException:
        discard(fs, [temp for temp, _, _ in staged.values()])
        raise
    discard(fs, earlier)
    log.info("issuing run %d: batch %s rendered, %d invoices", run_id, "all" if batch is None else batch, len(jobs))
    return len(jobs)


def commit(run_id: int, *, settings: Settings | None = None, issuer: Issuer = DEFAULT_ISSUER) -> list[InvoiceRecord]:
    """Issue every document of the run, in number order, in one transaction; the records.

    Refuses, with nothing issued, a run with a document not rendered yet (naming its
    batches) or one whose numbers are no longer the issuer's next. Committing a run issued
    already returns its documents.
    """
    settings = settings or get_settings()
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    with warehouse.connect(settings) as conn:
        run = _run(conn, run_id)
        if run.issuer != issuer.key:
            raise InvoiceError(f"issuing run {run_id} is issuer {run.issuer}'s, not {issuer.key}'s")
        if run.status == "issued":
            return store.final_documents(conn, run.period_start, document_type="invoice")
        _require_open(run, "commit")
        last_number = store.lock_issuer(conn, issuer, run_id=run_id)
        run = _run(conn, run_id, lock=True)
        _require_open(run, "commit")  # a plan of the month may have replaced it while we waited
        period = f"{run.period_start:%Y-%m}"
        if run.first_number != last_number + 1:  # cannot happen while the reservation holds
            raise InvoiceError(f"issuing run {run_id} of {period} reserved numbers from {run.first_number}, but the "
                               f"issuer's next number is {last_number + 1}: close {period} again to plan it anew")
        rows = conn.execute(
            "select invoice_number, batch, job, staged_uri, pdf_sha256 from pipeline.invoice_run_documents"
            " where run_id = %s order by position", (run_id,)).fetchall()
        unrendered = sorted({batch for _, batch, _, uri, _ in rows if uri is None})
        if unrendered:
            raise InvoiceError(f"issuing run {run_id} of {period}: batches {unrendered} are not rendered yet — let"
                               " billing_monthly's render_invoice_batch tasks finish (or clear them), or close "
                               f"{period} again")
        jobs = [from_plain(RenderJob, job) for _, _, job, _, _ in rows]
        out_dir = f"{out_root.rstrip('/')}/{period}"
        written = place(fs, {number: (uri, f"{out_dir}/{number}.pdf", digest)
                             for number, _, _, uri, digest in rows})
        records = [store.record_of(job, issuer, settings.reports_out, period, written) for job in jobs]
        for job, record in zip(jobs, records, strict=True):
            store.record_final(conn, record, job.lines, close_period=run.period_start)
        conn.execute("update pipeline.invoice_runs set status = 'issued', ended_at = now() where run_id = %s",
                     (run_id,))
        conn.execute("delete from pipeline.invoice_run_documents where run_id = %s", (run_id,))
        conn.execute("update pipeline.month_closes set finalized_at = now() where period = %s"
                     " and finalized_at is null", (run.period_start,))
    discard(fs, [f"{out_dir}/drafts/{job.tenant.tenant_id}.pdf" for job in jobs])  # superseded
    log.info("issuing run %d: %d invoices of %s issued, %s to %s", run_id, len(records), period,
             records[0].invoice_number, records[-1].invoice_number)
    return records


def abandon(run_id: int, *, settings: Settings | None = None) -> None:
    """End an open run unissued (its numbers free again, its files removed); a run that ended is left as it is."""
    settings = settings or get_settings()
    fs, out_root = fsspec.core.url_to_fs(settings.reports_out)
    with warehouse.connect(settings) as conn:
        run = _run(conn, run_id, lock=True)
        leftovers = _abandon(conn, run_id, f"{out_root.rstrip('/')}/{run.period_start:%Y-%m}") \
            if run.status == "open" else []
    discard(fs, leftovers)


@dataclasses.dataclass(frozen=True)
class _Run:
    run_id: int
    issuer: str
    period_start: dt.date
    first_number: int
    status: str


def _run(conn, run_id: int, *, lock: bool = False) -> _Run:
    row = conn.execute("select run_id, issuer, period_start, first_number, status from pipeline.invoice_runs"
                       " where run_id = %s" + (" for update" if lock else ""), (run_id,)).fetchone()
    if row is None:
        raise InvoiceError(f"there is no issuing run {run_id}")
    return _Run(*row)


def _require_open(run: _Run, step: str) -> None:
    if run.status != "open":
        raise InvoiceError(
            f"issuing run {run.run_id} of {run.period_start:%Y-%m} is {run.status}: nothing to {step}"
            + (" (a later plan of the month replaced it: let that run finish, or close the month again)"
               if run.status == "abandoned" else ""))


def _abandon(conn, run_id: int, out_dir: str) -> list[str]:
    """End an open run unissued; the files it leaves, for the caller to remove once this commits:
    its staged PDFs, and any PDF a failed commit moved to a number's name that no final document has."""
    rows = conn.execute(
        "delete from pipeline.invoice_run_documents as d where run_id = %s returning d.staged_uri,"
        " case when not exists (select from pipeline.invoices as i where i.invoice_number = d.invoice_number)"
        " then d.invoice_number end", (run_id,)).fetchall()
    conn.execute("update pipeline.invoice_runs set status = 'abandoned', ended_at = now()"
                 " where run_id = %s and status = 'open'", (run_id,))
    return [uri for uri, _ in rows if uri] + [f"{out_dir}/{number}.pdf" for _, number in rows if number]
