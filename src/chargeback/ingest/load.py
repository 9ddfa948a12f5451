"""Extract and load: landed snapshot files -> ``raw.usage_staging`` -> ``raw.usage_snapshots``.

Loading is two steps with the gate between them, so a bad interval never reaches the
tables dbt reads:

1. :func:`stage` streams every file of the window into PostgreSQL with ``COPY`` (no
   row-by-row inserts) and classifies every landed row in set-based statements (one per
   file, then one pass per load for duplicates). Each row ends up in exactly one place:

   * **loaded** — clean, the first copy of its snapshot: ``raw.usage_staging``;
   * **duplicate** — an identical copy (same snapshot_id, tenant, meter, value, unit, hour,
     kind) of a row loaded earlier in this load, or already published from another landed
     hour: counted, not kept;
   * **quarantined** — anything else (not JSON, a missing field, not a number, negative,
     unknown tenant, ...; or the same snapshot_id with different content):
     ``raw.usage_quarantine`` with file, line, field and a one-line reason.

   A file that cannot be parsed at all (bad CSV header, not UTF-8, no line a JSON object)
   is rejected whole: one quarantine row with field ``file``. Per file, and per load,
   ``rows_in = rows_loaded + rows_duplicate + rows_quarantined`` (``pipeline.load_files``,
   ``pipeline.load_runs``).
2. :func:`publish` replaces exactly the rows that came from the window's landing folders
   (``landed_hour``) of ``raw.usage_snapshots`` with the staged ones in one transaction
   under an advisory lock — so replaying a window changes nothing, a late snapshot put in
   a later folder survives a replay of its usage hour, and a crash leaves the previous
   state intact.

Landed files are only read, never moved or deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from chargeback.ingest import classify, readers
from chargeback.ingest.sources import SnapshotFile, UsageSource
from chargeback.platform import events, warehouse
from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)


class LoadError(ValueError):
    """A load cannot run; the message says why."""


@dataclass(frozen=True)
class StageResult:
    load_id: int
    window_start: dt.datetime
    window_end: dt.datetime
    files: int
    rows: int
    """Rows staged (clean first copies): what publish will load."""
    rows_in: int = 0
    rows_duplicate: int = 0
    rows_quarantined: int = 0
    files_rejected: int = 0


@dataclass(frozen=True)
class PublishResult:
    load_id: int
    rows_deleted: int
    rows_loaded: int
    usage_start: dt.datetime | None = None
    """First usage hour (``hour_start``) of the rows deleted or inserted; ``None`` when there were none."""
    usage_end: dt.datetime | None = None
    """End (exclusive, a whole hour) of those usage hours; ``None`` with ``usage_start``."""


def stage(
    source: UsageSource,
    start: dt.datetime,
    end: dt.datetime,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StageResult:
    """Stage the snapshots of ``[start, end)`` from ``source``; return the new ``load_id``.

    Bad rows are quarantined and rejected files recorded (one event line each) rather than
    failing the load: the gate decides, by policy, whether they fail it.
    ``progress(done, total)`` is called after each file, for long windows.
    """
    settings = settings or get_settings()
    warehouse.ensure_schema(settings)
    files = source.files(start, end)
    with warehouse.connect(settings) as conn:
        load_id = conn.execute(
            "insert into pipeline.load_runs (source, window_start, window_end, files, status)"
            " values (%s, %s, %s, %s, 'staging') returning load_id",
            (source.name, start, end, len(files)),
        ).fetchone()[0]
    try:
        with warehouse.connect(settings) as conn:
            _stage_files(conn, load_id, start, end, files, settings, progress)
            totals = conn.execute(
                "select coalesce(sum(rows_in), 0), coalesce(sum(rows_loaded), 0), coalesce(sum(rows_duplicate), 0),"
                " coalesce(sum(rows_quarantined), 0), count(*) filter (where status = 'rejected')"
                " from pipeline.load_files where load_id = %s",
                (load_id,),
            ).fetchone()
            conn.execute(
                "update pipeline.load_runs set status = 'staged', rows_in = %s, rows_loaded = %s,"
                " rows_duplicate = %s, rows_quarantined = %s, files_rejected = %s where load_id = %s",
                (*totals, load_id),
            )
    except Exception as exc:
        _finish_run(settings, load_id, "failed", " ".join(str(exc).split()) or type(exc).__name__)
        raise
    rows_in, loaded, duplicates, quarantined, rejected = (int(v) for v in totals)
    with warehouse.connect(settings) as conn:
        # Fresh statistics, or the gate's queries plan the bulk load as if it were empty.
        conn.execute("select raw.analyze_usage(%s)", ("usage_staging",))  # as the owner
    report_quarantine(load_id, settings)
    return StageResult(load_id, start, end, len(files), loaded, rows_in, duplicates, quarantined, rejected)


def _read_file(conn: psycopg.Connection, f: SnapshotFile, params: dict, settings: Settings
               ) -> tuple[int, readers.FileOutcome | None, str | None]:
    """COPY one file and classify its rows into ``parsed``: (stored bytes, rejection, note).

    A file refused by its name or place is not parsed; its lines are counted (rows in).
    The note lists a CSV file's columns that were ignored.
    """
    limits = (settings.max_file_bytes, settings.max_line_bytes)
    if f.refusal is not None:
        rows = readers.count_lines(f, settings.max_file_bytes)
        return f.size or 0, readers.FileOutcome(None, f.refusal, rows), None
    if f.compression is None and f.size is not None and f.size > settings.max_file_bytes:
        reason = f"file: larger than {settings.max_file_bytes:,} bytes (max_file_bytes); not read"
        return f.size, readers.FileOutcome(None, reason, 0), None
    if f.format == "jsonl":
        size, rejected = readers.copy_jsonl(conn, f, *limits)
        if rejected is None:
            labelled = conn.execute(classify.JSONL_MAY_HOLD_LABELS).fetchone()[0]
            conn.execute(classify.CLASSIFY_JSONL if labelled else classify.CLASSIFY_JSONL_WITHOUT_LABELS, params)
            rejected = classify.garbage(conn, params["file_seq"])
        return size, rejected, None
    size, header, rejected = readers.copy_csv(conn, f, *limits)
    if rejected is None and header is not None:
        conn.execute(classify.classify_csv(header), params)
    ignored = f"ignored unknown column(s): {', '.join(header.ignored)}" if header and header.ignored else None
    return size, rejected, ignored


def _stage_files(conn: psycopg.Connection, load_id: int, start: dt.datetime, end: dt.datetime,
                 files: list[SnapshotFile], settings: Settings,
                 progress: Callable[[int, int], None] | None = None) -> None:
    # A whole window's rows fit in memory: without this, the temp tables spill at 8 MB.
    conn.execute("set local temp_buffers = '128MB'")
    conn.execute("set local work_mem = '64MB'")  # a file's distinct labels are found in memory
    conn.execute("create temp table landed_jsonl (line bigint generated always as identity, doc text) on commit drop")
    conn.execute(
        "create temp table landed_csv (line bigint generated by default as identity, "
        + ", ".join(f"c{i} text" for i in range(1, readers.MAX_CSV_COLUMNS + 1))
        + ", problem text, raw text) on commit drop"
    )
    conn.execute(
        """
        create temp table parsed (
            pid bigint generated always as identity, file_seq integer, source_file text, source_line integer,
            landed_hour timestamptz, learned_at timestamptz, raw_record text,
            snapshot_id text, tenant_id text, meter text, value numeric, unit text,
            hour_start timestamptz, emitted_at timestamptz, kind text, source text, labels jsonb,
            reason text, duplicate boolean not null default false
        ) on commit drop
        """
    )
    conn.execute("create index on parsed (file_seq)")  # each file's rows are checked after its COPY
    window_end_text = f"{end.astimezone(dt.UTC):%Y-%m-%dT%H:%MZ}"
    platform_start = settings.platform_start
    for seq, f in enumerate(files, start=1):
        first_seen = conn.execute(
            "select coalesce(min(first_seen_at), now()) from pipeline.load_files where file_url = %s", (f.url,)
        ).fetchone()[0]
        params = {"file_seq": seq, "file": f.url, "landed_hour": f.hour, "learned_at": first_seen,
                  "window_end": end, "window_end_text": window_end_text, "producer": f.producer,
                  "platform_start": platform_start, "platform_start_text": str(platform_start)}
        size, rejected, message = _read_file(conn, f, params, settings)
        if rejected is not None:
            conn.execute("delete from parsed where file_seq = %s", (seq,))
            conn.execute(
                "insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,"
                " tenant_id) values (%s, %s, %s, %s, 'file', %s, %s)",
                (load_id, f.url, rejected.line, f.hour, rejected.reason, f.producer),
            )
        conn.execute(
            "insert into pipeline.load_files (load_id, file_url, landed_hour, bytes, rows_in, rows_quarantined,"
            " status, message, first_seen_at, producer) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (load_id, f.url, f.hour, size, rejected.rows_in if rejected else 0,
             rejected.rows_in if rejected else 0, "rejected" if rejected else "loaded",
             rejected.reason if rejected else message, first_seen, f.producer),
        )
        if progress:
            progress(seq, len(files))
    # The planner must know whether to probe raw.usage_snapshots by index: the columns the load's
    # checks join, group and filter on (not the raw lines and labels, two thirds of the time).
    conn.execute("analyze parsed (tenant_id, snapshot_id, meter, hour_start, reason, duplicate, source_file)")
    conn.execute(classify.DEDUPE_WITHIN_LOAD)
    # Read before the check, so every publish it may not see is numbered after this one.
    conn.execute(
        "update pipeline.load_runs set checked_through_seq = (select coalesce(max(published_seq), 0)"
        " from pipeline.load_runs where status = 'published') where load_id = %s", (load_id,))
    window = {"start": start, "end": end}
    if conn.execute(classify.PUBLISHED_CANDIDATES, window).rowcount:
        conn.execute("analyze published_candidates")
        conn.execute(classify.DEDUPE_AGAINST_PUBLISHED, window)
    conn.execute(classify.TENANT_HOUR_BOUND, {"start": start, "end": end})
    conn.execute(
        """
        insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,
                                          raw_record, snapshot_id, tenant_id)
        select %s, source_file, source_line, landed_hour, split_part(reason, ':', 1), reason, raw_record,
               left(snapshot_id, 200), left(tenant_id, 200)
        from parsed where reason is not null
        order by file_seq, source_line
        """,
        (load_id,),
    )
    conn.execute(
        """
        insert into raw.usage_staging (load_id, snapshot_id, tenant_id, meter, value, unit, hour_start,
                                       emitted_at, kind, source_file, source_line, landed_hour, learned_at,
                                       source, labels)
        select %s, snapshot_id, tenant_id, meter, value, unit, hour_start,
               emitted_at, kind, source_file, source_line, landed_hour, learned_at, source, labels
        from parsed where reason is null and not duplicate
        """,
        (load_id,),
    )
    conn.execute(
        """
        update pipeline.load_files as f
        set rows_in = c.rows_in, rows_loaded = c.loaded, rows_duplicate = c.duplicates, rows_quarantined = c.bad
        from (
            select source_file, count(*) as rows_in,
                   count(*) filter (where reason is null and not duplicate) as loaded,
                   count(*) filter (where duplicate) as duplicates,
                   count(*) filter (where reason is not null) as bad
            from parsed group by source_file
        ) as c
        where f.load_id = %s and f.file_url = c.source_file
        """,
        (load_id,),
    )


def report_quarantine(load_id: int, settings: Settings | None = None) -> list[str]:
    """Log and record one line for the load's quarantined rows and one per rejected file.

    Warnings: whether they fail the load is the gate's decision (``quarantine_policy``).
    """
    lines = []
    action = f"fix the producer or config, then chargeback quarantine replay --load {load_id}"
    with warehouse.connect(settings) as conn:
        summary = conn.execute(
            """
            select count(*), (array_agg(source_file || ':' || source_line order by quarantine_id))[1],
                   (array_agg(reason order by quarantine_id))[1], count(distinct field)
            from raw.usage_quarantine where load_id = %s and field <> 'file'
            """,
            (load_id,),
        ).fetchone()
        files = conn.execute(
            "select source_file, source_line, reason from raw.usage_quarantine"
            " where load_id = %s and field = 'file' order by quarantine_id",
            (load_id,),
        ).fetchall()
    count, where, reason, fields = summary
    if count:
        more = f" (+{count - 1} more)" if count > 1 else ""
        others = ""
        if fields > 1:
            others = f" (and {fields - 1} other field(s); see chargeback quarantine list --load {load_id})"
        lines.append(events.record(
            events.Event("quarantine", f"{count} row(s) of load {load_id}", f"{reason}{others}", action,
                          f"{where}{more}", severity="warning"),
            details={"load_id": load_id, "rows": count}, settings=settings,
        ))
    for url, line, why in files:
        lines.append(events.record(
            events.Event("rejected_file", f"file of load {load_id} rejected whole", why.removeprefix("file: "),
                         "fix or replace the file (it stays in landing), then"
                         f" chargeback quarantine replay --file {url}",
                         f"{url}:{line}" if line else url, severity="warning"),
            details={"load_id": load_id, "file": url}, settings=settings,
        ))
    return lines


def publish(load_id: int, settings: Settings | None = None) -> PublishResult:
    """Replace the rows of the window's landed hours in ``raw.usage_snapshots`` by the staged ones.

    One transaction under an advisory lock: a concurrent load of the same window waits here
    and then replaces the same hours, so the end state equals one load; a crash (even a
    SIGKILL between the delete and the insert) rolls back to the previous state.
    Quarantine rows of earlier loads of these landed hours are resolved: ``replayed`` (the
    row loaded now) or ``superseded`` (quarantined again by this load).
    """
    with warehouse.connect(settings) as conn:
        run = conn.execute(
            "select window_start, window_end, status from pipeline.load_runs where load_id = %s for update",
            (load_id,),
        ).fetchone()
        if run is None:
            raise LoadError(events.refuse(f"load {load_id}", "no such load run in pipeline.load_runs",
                                          "stage the window first (chargeback load)", settings=settings))
        start, end, status = run
        if status == "published":  # a retried task: report the hours this load wrote
            first, last = conn.execute(
                "select min(date_trunc('hour', hour_start, 'UTC')), max(date_trunc('hour', hour_start, 'UTC'))"
                " from raw.usage_snapshots where load_id = %s", (load_id,)).fetchone()
            return PublishResult(load_id, 0, 0, first, last + dt.timedelta(hours=1) if last else None)
        if status != "staged":
            raise LoadError(events.refuse(
                f"load {load_id}", f"it is {status}, not staged: only a staged load that passed the gate is published",
                "load the window again (chargeback load, or chargeback quarantine replay)", settings=settings))
        lock_window(conn)
        _check_staged_rows_kept(conn, load_id, settings)
        if _published_since_stage(conn, load_id):
            _settle_against_published(conn, load_id, start, end)
        deleted = _delete_landed_hours(conn, load_id, start, end)
        loaded = _insert_staged(conn, load_id)
        usage_start, usage_end = _changed_usage_hours(conn, load_id)
        conn.execute("delete from raw.usage_staging where load_id = %s", (load_id,))
        _resolve_quarantine(conn, load_id, start, end, published=True)
        if _changes_statistics(conn, loaded):  # a backfill: keep the planner's statistics true for dbt's reads
            conn.execute("select raw.analyze_usage(%s)", ("usage_snapshots",))  # as the owner
        conn.execute(
            "update pipeline.load_runs set status = 'published', rows_loaded = %s, finished_at = now(),"
            " published_seq = nextval('pipeline.publish_seq') where load_id = %s",
            (loaded, load_id),
        )
    _truncate_staging_if_empty(settings)
    return PublishResult(load_id, deleted, loaded, usage_start, usage_end)


def _check_staged_rows_kept(conn: psycopg.Connection, load_id: int, settings: Settings | None) -> None:
    """Refuse to publish a load whose staged rows are not all there: ``raw.usage_staging`` is
    unlogged, and a crash of the server between stage and publish empties it. Publishing then
    would replace the window's published rows with what is left (nothing). The load is marked
    failed (its rows counted at stage are gone); loading the window again stages them anew."""
    expected, kept = conn.execute(
        "select r.rows_loaded, (select count(*) from raw.usage_staging as s where s.load_id = r.load_id)"
        " from pipeline.load_runs as r where r.load_id = %s", (load_id,)).fetchone()
    if kept == expected:
        return
    conn.rollback()
    if kept < expected:
        why = f"{expected - kept} of its {expected} staged rows are gone (staging is unlogged: a crash empties it)"
    else:
        why = f"it has {kept} staged rows where stage counted {expected}"
    _finish_run(settings, load_id, "failed", why)
    raise LoadError(events.refuse(
        f"load {load_id}", f"{why}; nothing was published",
        "load the window again (chargeback load; in Airflow, clear the run's stage task)", settings=settings))


def _changes_statistics(conn: psycopg.Connection, loaded: int) -> bool:
    """Whether ``loaded`` new rows change ``raw.usage_snapshots`` enough to analyze it now: more
    than 10,000 and more than a tenth of what the planner believes it holds (a backfill, a first
    load). An ordinary hour of a large installation (90,000 rows of sources every hour) is left
    to autovacuum: analyzing millions of rows every hour would cost more than the hour's load."""
    if loaded <= 10_000:
        return False
    believed = conn.execute("select reltuples from pg_class where oid = 'raw.usage_snapshots'::regclass").fetchone()[0]
    return believed < 0 or loaded > 0.1 * believed


def _truncate_staging_if_empty(settings: Settings | None) -> None:
    """After a publish has committed: truncate staging when no load's rows are left in it (none
    staged meanwhile, no rejected load kept for inspection).

    A delete leaves the rows behind as dead tuples until autovacuum passes: after a backfill
    (hundreds of thousands of rows), every query the next hour's gate runs on its few thousand
    staged rows would scan them all. A short transaction of its own, the lock taken without
    waiting: when another load (or autovacuum) is using staging, nothing is done."""
    try:
        with warehouse.connect(settings) as conn:
            conn.execute("lock table raw.usage_staging in access exclusive mode nowait")
            if not conn.execute("select exists (select from raw.usage_staging)").fetchone()[0]:
                conn.execute("truncate raw.usage_staging")
    except psycopg.errors.LockNotAvailable:
        log.info("staging is in use: the published rows are deleted, the table not truncated")


def lock_window(conn: psycopg.Connection) -> None:
    """Take the publish lock (until the transaction ends). One lock for all windows: the
    duplicate check reads other landed hours, so publishes must not interleave at all."""
    conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.usage'))")


def _kept_by_hold(row: str) -> str:
    """SQL: the published row ``row`` is kept by a hold of this load (``%(load_id)s``): the
    producer the gate's policy held back for that landed hour (:mod:`chargeback.ingest.policy`)."""
    return f"""exists (
                  select from pipeline.load_holds as h
                  where h.load_id = %(load_id)s
                    and {row}.landed_hour = any(h.landed_hours)
                    and ((h.holder_kind = 'tenant' and h.holder = {row}.tenant_id)
                         or (h.holder_kind = 'file' and h.holder = {row}.source_file)))"""


def _published_since_stage(conn: psycopg.Connection, load_id: int) -> bool:
    """Whether the staged rows must be checked against the published ones again (under the
    publish lock): another load published after this one's duplicate check, or the gate held
    producers back (their published rows stay). Otherwise stage's check still holds, and the
    lookup of every staged key is saved."""
    return conn.execute(
        """
        select r.checked_through_seq is null
               or exists (select from pipeline.load_runs as o
                          where o.status = 'published' and o.published_seq > r.checked_through_seq)
               or exists (select from pipeline.load_holds as h where h.load_id = r.load_id)
        from pipeline.load_runs as r where r.load_id = %s
        """,
        (load_id,),
    ).fetchone()[0]


def _settle_against_published(conn: psycopg.Connection, load_id: int, start: dt.datetime, end: dt.datetime) -> None:
    """Staged rows whose snapshot another load published (from another landed hour) since this
    load was staged: duplicates if identical, else quarantined — as stage would have said."""
    moved = conn.execute(
        """
        with moved as (
            delete from raw.usage_staging as s
            using raw.usage_snapshots as u
            where s.load_id = %(load_id)s and u.tenant_id = s.tenant_id and u.snapshot_id = s.snapshot_id
              and (""" + classify.PUBLISHED_OUTSIDE_WINDOW + " or " + _kept_by_hold("u") + """)
            returning s.*, u.source_file as first_file, u.source_line as first_line,
                      """ + classify.difference("u", "s") + """ as difference,
                      (s.tenant_id, s.meter, s.value, s.unit, s.hour_start, s.kind, s.source, s.labels)
                      is not distinct from
                      (u.tenant_id, u.meter, u.value, u.unit, u.hour_start, u.kind, u.source, u.labels) as same
        ), quarantined as (
            insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,
                                              snapshot_id)
            select %(load_id)s, source_file, source_line, landed_hour, 'snapshot_id',
                   'snapshot_id: ' || quote_literal(snapshot_id) || ' already published from ' || first_file
                   || ':' || first_line || ' with different content (' || difference || ')', snapshot_id
            from moved where not same
        )
        select source_file, count(*) filter (where same), count(*) filter (where not same)
        from moved group by source_file
        """,
        {"load_id": load_id, "start": start, "end": end},
    ).fetchall()
    for url, duplicates, bad in moved:
        conn.execute(
            "update pipeline.load_files set rows_loaded = rows_loaded - %s - %s, rows_duplicate = rows_duplicate + %s,"
            " rows_quarantined = rows_quarantined + %s where load_id = %s and file_url = %s",
            (duplicates, bad, duplicates, bad, load_id, url),
        )
    if moved:
        conn.execute(
            "update pipeline.load_runs set rows_duplicate = rows_duplicate + %s, rows_quarantined = rows_quarantined"
            " + %s where load_id = %s",
            (sum(m[1] for m in moved), sum(m[2] for m in moved), load_id),
        )


def _resolve_quarantine(conn: psycopg.Connection, load_id: int, start: dt.datetime, end: dt.datetime,
                        *, published: bool) -> None:
    """Close open quarantine rows of other loads of these landed hours: this load re-read their files."""
    conn.execute(
        """
        update raw.usage_quarantine as q
        set status = case when exists (
                select from raw.usage_quarantine as n
                where n.load_id = %(load_id)s and n.source_file = q.source_file
                  and n.source_line is not distinct from q.source_line
            ) then 'superseded' else 'replayed' end,
            resolved_at = now()
        where q.status = 'open' and q.load_id <> %(load_id)s
          and q.landed_hour >= %(start)s and q.landed_hour < %(end)s
          and (%(published)s or exists (
                select from raw.usage_quarantine as n
                where n.load_id = %(load_id)s and n.source_file = q.source_file
                  and n.source_line is not distinct from q.source_line))
        """,
        {"load_id": load_id, "start": start, "end": end, "published": published},
    )


def _delete_landed_hours(conn: psycopg.Connection, load_id: int, start: dt.datetime, end: dt.datetime) -> int:
    """Delete the rows that came from the window's landing folders, keeping them aside (until
    commit) so the insert keeps each snapshot's ``learned_at`` and the changed hours are known.

    By landed hour, not ``hour_start``: a late snapshot a producer put in a later folder is
    not dropped when its usage hour's folder is replayed. Rows of producers the gate's
    policy held back in this load (``pipeline.load_holds``) are kept as they were.
    """
    conn.execute(
        "create temp table replaced_snapshots on commit drop as"
        " select snapshot_id, tenant_id, meter, value, unit, hour_start, kind, learned_at"
        " from raw.usage_snapshots limit 0"
    )
    return conn.execute(
        """
        with deleted as (
            delete from raw.usage_snapshots
            where ((landed_hour >= %(start)s and landed_hour < %(end)s)
                   or (landed_hour is null and hour_start >= %(start)s and hour_start < %(end)s))  -- by hand
              and not """ + _kept_by_hold("raw.usage_snapshots") + """
            returning snapshot_id, tenant_id, meter, value, unit, hour_start, kind, learned_at
        )
        insert into replaced_snapshots select * from deleted
        """,
        {"start": start, "end": end, "load_id": load_id},
    ).rowcount


def _insert_staged(conn: psycopg.Connection, load_id: int) -> int:
    """Insert the load's staged rows; a snapshot published before keeps its ``learned_at``."""
    return conn.execute(
        """
        insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start,
                                         emitted_at, kind, source_file, source_line, load_id,
                                         landed_hour, learned_at, source, labels)
        select s.snapshot_id, s.tenant_id, s.meter, s.value, s.unit, s.hour_start,
               s.emitted_at, s.kind, s.source_file, s.source_line, s.load_id,
               coalesce(s.landed_hour, date_trunc('hour', s.hour_start, 'UTC')),
               coalesce(least(r.learned_at, s.learned_at), now()),
               coalesce(s.source, '(none)'), coalesce(s.labels, '{}')
        from raw.usage_staging as s
        left join replaced_snapshots as r on r.tenant_id = s.tenant_id and r.snapshot_id = s.snapshot_id
        where s.load_id = %s
        """,
        (load_id,),
    ).rowcount


def _changed_usage_hours(conn: psycopg.Connection, load_id: int) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``[first, last + 1h)`` of the usage hours of the rows deleted or inserted (dbt's window)."""
    first, last = conn.execute(
        """
        select min(date_trunc('hour', hour_start, 'UTC')), max(date_trunc('hour', hour_start, 'UTC'))
        from (
            select hour_start from replaced_snapshots
            union all
            select hour_start from raw.usage_staging where load_id = %s
        ) as touched
        """,
        (load_id,),
    ).fetchone()
    if first is None:
        return None, None
    return first, last + dt.timedelta(hours=1)


def reject(load_id: int, reason: str, settings: Settings | None = None) -> None:
    """Mark a staged load as rejected by the gate; its rows stay in staging for inspection.

    Earlier open quarantine rows that this load quarantined again are superseded by its rows.
    """
    _finish_run(settings, load_id, "rejected", reason)
    with warehouse.connect(settings) as conn:
        start, end = conn.execute(
            "select window_start, window_end from pipeline.load_runs where load_id = %s", (load_id,)).fetchone()
        _resolve_quarantine(conn, load_id, start, end, published=False)


def _finish_run(settings: Settings | None, load_id: int, status: str, message: str) -> None:
    with warehouse.connect(settings) as conn:
        conn.execute(
            "update pipeline.load_runs set status = %s, message = %s, finished_at = now() where load_id = %s",
            (status, message, load_id),
        )

