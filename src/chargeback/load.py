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

import codecs
import csv
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from chargeback import events, warehouse
from chargeback.settings import Settings, get_settings
from chargeback.sources import SNAPSHOT_FIELDS, SnapshotFile, UsageSource

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TEXT_FIELDS = ("snapshot_id", "tenant_id", "meter", "unit", "kind")
_ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)? *([Zz]|[+-]\d{2}(:?\d{2})?)?$"


def _classify_sql(fields_cte: str) -> str:
    """One statement that classifies every row of one landed file into ``parsed``.

    ``fields_cte`` yields per row: ``line, raw_record, doc_problem`` and each snapshot field
    as text plus its JSON type (``t_<field>``; null for CSV). The first problem found, in
    the order below, is the row's ``reason`` (``field: why``); no problem: a clean row.
    Casts are guarded by ``raw.is_numeric``/``raw.is_timestamptz`` so nothing raises.
    """
    missing = "\n".join(
        f"            when nullif(btrim(t.{f}), '') is null then '{f}: missing'" for f in SNAPSHOT_FIELDS
    )
    wrong_type = "\n".join(
        f"            when t.t_{f} in ('object', 'array') then '{f}: expected text, got a JSON ' || t.t_{f}"
        for f in _TEXT_FIELDS
    )
    return f"""
insert into parsed (file_seq, source_file, source_line, landed_hour, learned_at, raw_record,
                    snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at, kind, reason)
with fields as (
{fields_cte}
), typed as (
    select f.*,
           case when raw.is_numeric(f.value) and coalesce(f.t_value, 'string') in ('string', 'number')
                then f.value::numeric end as n_value,
           case when f.hour ~ '{_ISO_TIMESTAMP}' and raw.is_timestamptz(f.hour)
                then f.hour::timestamptz end as ts_hour,
           case when f.emitted_at ~ '{_ISO_TIMESTAMP}' and raw.is_timestamptz(f.emitted_at)
                then f.emitted_at::timestamptz end as ts_emitted
    from fields as f
), classified as (
    select t.*,
        case
            when t.doc_problem is not null then t.doc_problem
{missing}
{wrong_type}
            when t.n_value is null then 'value: not a number: ' || quote_literal(t.value)
            when t.n_value in ('NaN', 'Infinity', '-Infinity') then 'value: not a finite number: ' || t.value
            when t.n_value < 0 then 'value: negative: ' || t.value
            when t.ts_hour is null then 'hour: not an ISO-8601 timestamp: ' || quote_literal(t.hour)
            when t.ts_emitted is null then 'emitted_at: not an ISO-8601 timestamp: ' || quote_literal(t.emitted_at)
            when t.ts_hour <> date_trunc('hour', t.ts_hour, 'UTC')
                then 'hour: not the start of an hour: ' || t.hour
            when t.ts_hour >= %(window_end)s
                then 'hour: after the load window (it ends ' || %(window_end_text)s || ')'
            when te.tenant_id is null
                then 'tenant_id: unknown tenant ' || quote_literal(t.tenant_id) || ' (not in config.tenants)'
            when m.meter is null
                then 'meter: unknown meter ' || quote_literal(t.meter) || ' (not in config.meters)'
            when t.unit <> m.unit
                then 'unit: ' || quote_literal(t.unit) || ' is not the unit of meter ' || m.meter
                     || ' (' || m.unit || ')'
            when t.kind <> m.kind
                then 'kind: ' || quote_literal(t.kind) || ' is not the kind of meter ' || m.meter
                     || ' (' || m.kind || ')'
        end as reason
    from typed as t
    left join config.tenants as te on te.tenant_id = t.tenant_id
    left join config.meters as m on m.meter = t.meter
)
select %(file_seq)s, %(file)s, line, %(landed_hour)s, %(learned_at)s, raw_record,
       case when coalesce(t_snapshot_id, 'string') in ('string', 'number') then snapshot_id end,
       tenant_id, meter, n_value, unit, ts_hour, ts_emitted, kind, reason
from classified
order by line
"""


_TEXT_OF = ", ".join(f"j ->> '{f}' as {f}, json_typeof(j -> '{f}') as t_{f}" for f in SNAPSHOT_FIELDS)
_CLASSIFY_JSONL = _classify_sql(f"""
    select line, doc as raw_record,
           case when j is null then 'record: not valid JSON'
                when json_typeof(j) <> 'object' then 'record: not a JSON object but a JSON ' || json_typeof(j)
           end as doc_problem,
           {_TEXT_OF}
    from (
        select line::integer as line, doc, case when raw.is_json(doc) then doc::json end as j
        from landed_jsonl
        where btrim(coalesce(doc, '')) <> ''
    ) as docs
""")
_CLASSIFY_CSV = _classify_sql(f"""
    select line::integer + 1 as line,
           concat_ws(',', {", ".join(f"coalesce({f}, '')" for f in SNAPSHOT_FIELDS)}) as raw_record,
           null::text as doc_problem,
           {", ".join(f"{f}, null::text as t_{f}" for f in SNAPSHOT_FIELDS)}
    from landed_csv
""")

# Load-level pass over every file's clean rows: later copies of a snapshot are duplicates
# when identical to its first copy (by file, then line), quarantined when they differ.
_DEDUPE_WITHIN_LOAD = """
with ranked as (
    select pid, row_number() over w as copy_no, first_value(pid) over w as first_pid
    from parsed
    where reason is null
    window w as (partition by snapshot_id order by file_seq, source_line)
), compared as (
    select r.pid, f.source_file, f.source_line, f.value as first_value,
           (p.tenant_id, p.meter, p.value, p.unit, p.hour_start, p.kind)
           = (f.tenant_id, f.meter, f.value, f.unit, f.hour_start, f.kind) as same,
           p.value as this_value
    from ranked as r
    join parsed as p on p.pid = r.pid
    join parsed as f on f.pid = r.first_pid
    where r.copy_no > 1
)
update parsed as p
set duplicate = c.same,
    reason = case when not c.same then
        'snapshot_id: ' || quote_literal(p.snapshot_id) || ' repeats ' || c.source_file || ':' || c.source_line
        || ' with different content (value ' || c.first_value || ' there, ' || c.this_value || ' here)'
    end
from compared as c
where p.pid = c.pid
"""
# ... and copies of a snapshot already published from a landed hour outside this load's
# window (rows of the window's own hours are about to be replaced, so they do not count).
_DEDUPE_AGAINST_PUBLISHED = """
with compared as (
    select p.pid, u.source_file, u.source_line, u.value as first_value, p.value as this_value,
           (p.tenant_id, p.meter, p.value, p.unit, p.hour_start, p.kind)
           = (u.tenant_id, u.meter, u.value, u.unit, u.hour_start, u.kind) as same
    from parsed as p
    join raw.usage_snapshots as u on u.snapshot_id = p.snapshot_id
    where p.reason is null and not p.duplicate
      and not (u.landed_hour >= %(start)s and u.landed_hour < %(end)s)
)
update parsed as p
set duplicate = c.same,
    reason = case when not c.same then
        'snapshot_id: ' || quote_literal(p.snapshot_id) || ' already published from ' || c.source_file || ':'
        || c.source_line || ' with different content (value ' || c.first_value || ' there, '
        || c.this_value || ' here)'
    end
from compared as c
where p.pid = c.pid
"""


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


@dataclass(frozen=True)
class _FileOutcome:
    """A landed file the parse could not read at all: rejected whole."""

    line: int | None
    reason: str
    rows_in: int


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
            _stage_files(conn, load_id, start, end, files, progress)
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
        conn.execute("analyze raw.usage_staging")
    report_quarantine(load_id, settings)
    return StageResult(load_id, start, end, len(files), loaded, rows_in, duplicates, quarantined, rejected)


def _stage_files(conn: psycopg.Connection, load_id: int, start: dt.datetime, end: dt.datetime,
                 files: list[SnapshotFile], progress: Callable[[int, int], None] | None = None) -> None:
    conn.execute("create temp table landed_jsonl (line bigint generated always as identity, doc text) on commit drop")
    conn.execute(
        "create temp table landed_csv (line bigint generated always as identity, "
        + ", ".join(f"{f} text" for f in SNAPSHOT_FIELDS)
        + ") on commit drop"
    )
    conn.execute(
        """
        create temp table parsed (
            pid bigint generated always as identity, file_seq integer, source_file text, source_line integer,
            landed_hour timestamptz, learned_at timestamptz, raw_record text,
            snapshot_id text, tenant_id text, meter text, value numeric, unit text,
            hour_start timestamptz, emitted_at timestamptz, kind text,
            reason text, duplicate boolean not null default false
        ) on commit drop
        """
    )
    window_end_text = f"{end.astimezone(dt.UTC):%Y-%m-%dT%H:%MZ}"
    for seq, f in enumerate(files, start=1):
        first_seen = conn.execute(
            "select coalesce(min(first_seen_at), now()) from pipeline.load_files where file_url = %s", (f.url,)
        ).fetchone()[0]
        params = {"file_seq": seq, "file": f.url, "landed_hour": f.hour, "learned_at": first_seen,
                  "window_end": end, "window_end_text": window_end_text}
        size, rejected = (_copy_jsonl(conn, f) if f.format == "jsonl" else _copy_csv(conn, f))
        if rejected is None:
            conn.execute(_CLASSIFY_JSONL if f.format == "jsonl" else _CLASSIFY_CSV, params)
            rejected = _garbage(conn, seq)
        if rejected is not None:
            conn.execute("delete from parsed where file_seq = %s", (seq,))
            conn.execute(
                "insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason)"
                " values (%s, %s, %s, %s, 'file', %s)",
                (load_id, f.url, rejected.line, f.hour, rejected.reason),
            )
        conn.execute(
            "insert into pipeline.load_files (load_id, file_url, landed_hour, bytes, rows_in, rows_quarantined,"
            " status, message, first_seen_at) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (load_id, f.url, f.hour, size, rejected.rows_in if rejected else 0,
             rejected.rows_in if rejected else 0, "rejected" if rejected else "loaded",
             rejected.reason if rejected else None, first_seen),
        )
        if progress:
            progress(seq, len(files))
    conn.execute(_DEDUPE_WITHIN_LOAD)
    conn.execute(_DEDUPE_AGAINST_PUBLISHED, {"start": start, "end": end})
    conn.execute(
        """
        insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,
                                          raw_record, snapshot_id)
        select %s, source_file, source_line, landed_hour, split_part(reason, ':', 1), reason, raw_record, snapshot_id
        from parsed where reason is not null
        order by file_seq, source_line
        """,
        (load_id,),
    )
    conn.execute(
        """
        insert into raw.usage_staging (load_id, snapshot_id, tenant_id, meter, value, unit, hour_start,
                                       emitted_at, kind, source_file, source_line, landed_hour, learned_at)
        select %s, snapshot_id, tenant_id, meter, value, unit, hour_start,
               emitted_at, kind, source_file, source_line, landed_hour, learned_at
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


def _garbage(conn: psycopg.Connection, seq: int) -> _FileOutcome | None:
    """A file none of whose lines is a JSON object is not a snapshot file: reject it whole."""
    rows, garbage, first = conn.execute(
        "select count(*), count(*) filter (where reason like 'record: %%'),"
        " min(source_line) filter (where reason like 'record: %%') from parsed where file_seq = %s",
        (seq,),
    ).fetchone()
    if rows and rows == garbage:
        return _FileOutcome(first, f"file: no line is a JSON object ({rows} line(s)); not a JSON Lines file", rows)
    return None


class _Counting:
    """Wrap a binary stream, counting bytes and newlines as COPY reads it."""

    def __init__(self, fh):
        self.fh = fh
        self.bytes = 0
        self.lines = 0
        self.last = b"\n"

    def read(self, n: int) -> bytes:
        chunk = self.fh.read(n)
        if chunk:
            self.bytes += len(chunk)
            self.lines += chunk.count(b"\n")
            self.last = chunk[-1:]
        return chunk

    @property
    def rows(self) -> int:
        return self.lines + (self.last != b"\n")


def _copy_jsonl(conn: psycopg.Connection, f: SnapshotFile) -> tuple[int, _FileOutcome | None]:
    # One text column per line; delimiter and quote are control characters that JSON
    # text never contains raw, so every line arrives verbatim and in order.
    with f.open() as raw:
        fh = _Counting(raw)
        try:
            with conn.transaction():
                conn.execute("truncate landed_jsonl restart identity")
                with conn.cursor().copy(
                    "copy landed_jsonl (doc) from stdin with (format csv, delimiter e'\\x1f', quote e'\\x1e')"
                ) as copy:
                    while chunk := fh.read(_CHUNK):
                        copy.write(chunk)
        except psycopg.errors.DataError as exc:
            return fh.bytes, _unreadable(f, exc, fh, header=False)
    return fh.bytes, None


def _copy_csv(conn: psycopg.Connection, f: SnapshotFile) -> tuple[int, _FileOutcome | None]:
    with f.open() as raw:
        fh = _Counting(raw)
        header_bytes = fh.fh.readline()
        fh.bytes += len(header_bytes)
        try:
            header_line = codecs.decode(header_bytes, "utf-8-sig")
        except UnicodeDecodeError:
            return fh.bytes + _drain(fh), _FileOutcome(1, "file: header is not UTF-8 text", _drain_rows(f) - 1)
        header = [c.strip() for c in next(csv.reader([header_line]), [])]
        missing = [c for c in SNAPSHOT_FIELDS if c not in header]
        unknown = [c for c in header if c not in SNAPSHOT_FIELDS]
        if missing or unknown:
            detail = "; ".join(
                part for part in (
                    f"missing column(s) {', '.join(missing)}" if missing else "",
                    f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                ) if part
            )
            reason = f"header: {detail} (expected {', '.join(SNAPSHOT_FIELDS)})"
            return fh.bytes + _drain(fh), _FileOutcome(1, f"file: {reason}", max(_drain_rows(f) - 1, 0))
        try:
            with conn.transaction():
                conn.execute("truncate landed_csv restart identity")
                with conn.cursor().copy(f"copy landed_csv ({', '.join(header)}) from stdin with (format csv)") as copy:
                    while chunk := fh.read(_CHUNK):
                        copy.write(chunk)
        except psycopg.errors.DataError as exc:
            return fh.bytes, _unreadable(f, exc, fh, header=True)
    return fh.bytes, None


def _drain(fh: _Counting) -> int:
    while fh.read(_CHUNK):
        pass
    return 0


def _drain_rows(f: SnapshotFile) -> int:
    """Non-blank lines of a file that will not be parsed (its rows, for the accounting)."""
    with f.open() as fh:
        return sum(1 for line in fh if line.strip())


def _unreadable(f: SnapshotFile, exc: psycopg.Error, fh: _Counting, *, header: bool) -> _FileOutcome:
    """COPY refused the file (not UTF-8, a NUL byte, broken CSV quoting): reject it whole."""
    _drain(fh)
    line = _copy_error_line(exc)
    if line is not None and header:
        line += 1
    why = " ".join((exc.diag.message_primary or str(exc)).split())
    if isinstance(exc, psycopg.errors.CharacterNotInRepertoire | psycopg.errors.UntranslatableCharacter):
        why = f"not UTF-8 text ({why})"
    rows = _drain_rows(f) - (1 if header else 0)
    return _FileOutcome(line, f"file: cannot be parsed: {why}", max(rows, 0))


def _copy_error_line(exc: psycopg.Error) -> int | None:
    context = exc.diag.context or ""
    marker = ", line "
    if marker in context:
        digits = context.split(marker, 1)[1].split(":", 1)[0].split(",", 1)[0].strip()
        return int(digits) if digits.isdigit() else None
    return None


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
            raise LoadError(f"load {load_id} does not exist")
        start, end, status = run
        if status == "published":  # a retried task: report the hours this load wrote
            first, last = conn.execute(
                "select min(date_trunc('hour', hour_start, 'UTC')), max(date_trunc('hour', hour_start, 'UTC'))"
                " from raw.usage_snapshots where load_id = %s", (load_id,)).fetchone()
            return PublishResult(load_id, 0, 0, first, last + dt.timedelta(hours=1) if last else None)
        if status not in ("staged", "publishing"):
            raise LoadError(f"load {load_id} is {status}, not staged: it cannot be published")
        lock_window(conn)
        _settle_against_published(conn, load_id, start, end)
        deleted = _delete_landed_hours(conn, start, end)
        loaded = _insert_staged(conn, load_id)
        usage_start, usage_end = _changed_usage_hours(conn, load_id)
        conn.execute("delete from raw.usage_staging where load_id = %s", (load_id,))
        _resolve_quarantine(conn, load_id, start, end, published=True)
        if loaded > 10_000:  # a backfill: keep the planner's statistics true for dbt's reads
            conn.execute("analyze raw.usage_snapshots")
        conn.execute(
            "update pipeline.load_runs set status = 'published', rows_loaded = %s, finished_at = now()"
            " where load_id = %s",
            (loaded, load_id),
        )
    return PublishResult(load_id, deleted, loaded, usage_start, usage_end)


def lock_window(conn: psycopg.Connection) -> None:
    """Take the publish lock (until the transaction ends). One lock for all windows: the
    duplicate check reads other landed hours, so publishes must not interleave at all."""
    conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.usage'))")


def _settle_against_published(conn: psycopg.Connection, load_id: int, start: dt.datetime, end: dt.datetime) -> None:
    """Staged rows whose snapshot another load published (from another landed hour) since this
    load was staged: duplicates if identical, else quarantined — as stage would have said."""
    moved = conn.execute(
        """
        with moved as (
            delete from raw.usage_staging as s
            using raw.usage_snapshots as u
            where s.load_id = %(load_id)s and u.snapshot_id = s.snapshot_id
              and not (u.landed_hour >= %(start)s and u.landed_hour < %(end)s)
            returning s.*, u.source_file as first_file, u.source_line as first_line, u.value as first_value,
                      (s.tenant_id, s.meter, s.value, s.unit, s.hour_start, s.kind)
                      = (u.tenant_id, u.meter, u.value, u.unit, u.hour_start, u.kind) as same
        ), quarantined as (
            insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,
                                              snapshot_id)
            select %(load_id)s, source_file, source_line, landed_hour, 'snapshot_id',
                   'snapshot_id: ' || quote_literal(snapshot_id) || ' already published from ' || first_file
                   || ':' || first_line || ' with different content (value ' || first_value || ' there, '
                   || value || ' here)', snapshot_id
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


def _delete_landed_hours(conn: psycopg.Connection, start: dt.datetime, end: dt.datetime) -> int:
    """Delete the rows that came from the window's landing folders, keeping them aside (until
    commit) so the insert keeps each snapshot's ``learned_at`` and the changed hours are known.

    By landed hour, not ``hour_start``: a late snapshot a producer put in a later folder is
    not dropped when its usage hour's folder is replayed.
    """
    conn.execute(
        "create temp table replaced_snapshots on commit drop as"
        " select snapshot_id, tenant_id, meter, value, unit, hour_start, kind, learned_at"
        " from raw.usage_snapshots limit 0"
    )
    return conn.execute(
        """
        with deleted as (
            delete from raw.usage_snapshots where landed_hour >= %s and landed_hour < %s
            returning snapshot_id, tenant_id, meter, value, unit, hour_start, kind, learned_at
        )
        insert into replaced_snapshots select * from deleted
        """,
        (start, end),
    ).rowcount


def _insert_staged(conn: psycopg.Connection, load_id: int) -> int:
    """Insert the load's staged rows; a snapshot published before keeps its ``learned_at``."""
    return conn.execute(
        """
        insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start,
                                         emitted_at, kind, source_file, source_line, load_id,
                                         landed_hour, learned_at)
        select s.snapshot_id, s.tenant_id, s.meter, s.value, s.unit, s.hour_start,
               s.emitted_at, s.kind, s.source_file, s.source_line, s.load_id,
               coalesce(s.landed_hour, date_trunc('hour', s.hour_start, 'UTC')),
               coalesce(least(r.learned_at, s.learned_at), now())
        from raw.usage_staging as s
        left join replaced_snapshots as r on r.snapshot_id = s.snapshot_id
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
