"""Extract and load: landed snapshot files -> ``raw.usage_staging`` -> ``raw.usage_snapshots``.

Loading is two steps with the gate between them, so a bad interval never reaches the
tables dbt reads:

1. :func:`stage` streams every file of the window into PostgreSQL with ``COPY`` (no
   row-by-row inserts), parses and casts the rows in one set-based statement, and
   keeps them in ``raw.usage_staging`` under a new ``load_id``. A file that cannot be
   parsed fails the run with ``file:line: field`` and nothing is staged.
2. :func:`publish` replaces exactly the window's rows of ``raw.usage_snapshots`` with
   the staged ones in one transaction — so replaying a window changes nothing, and a
   crash leaves the previous state intact.

Landed files are only read, never moved or deleted.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import psycopg
from psycopg import sql

from chargeback import warehouse
from chargeback.settings import Settings
from chargeback.sources import SNAPSHOT_FIELDS, SnapshotFile, UsageSource

_CHUNK = 1 << 20

# Set-based parse of the landed text: one statement casts every row of the load.
_PARSE_JSONL = """
insert into raw.usage_staging (load_id, snapshot_id, tenant_id, meter, value, unit,
                               hour_start, emitted_at, kind, source_file, source_line, landed_hour, learned_at)
select %(load_id)s, r.snapshot_id, r.tenant_id, r.meter, r.value::numeric, r.unit,
       r.hour::timestamptz, r.emitted_at::timestamptz, r.kind, l.file, l.line::integer,
       %(landed_hour)s, %(learned_at)s
from landed_jsonl as l
cross join lateral json_to_record(l.doc::json) as r(
    snapshot_id text, tenant_id text, meter text, value text, unit text,
    hour text, emitted_at text, kind text
)
where btrim(coalesce(l.doc, '')) <> ''
"""
_PARSE_CSV = """
insert into raw.usage_staging (load_id, snapshot_id, tenant_id, meter, value, unit,
                               hour_start, emitted_at, kind, source_file, source_line, landed_hour, learned_at)
select %(load_id)s, snapshot_id, tenant_id, meter, value::numeric, unit,
       hour::timestamptz, emitted_at::timestamptz, kind, file, line::integer + 1,
       %(landed_hour)s, %(learned_at)s
from landed_csv
"""


class LoadError(ValueError):
    """A landed file cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class StageResult:
    load_id: int
    window_start: dt.datetime
    window_end: dt.datetime
    files: int
    rows: int


@dataclass(frozen=True)
class PublishResult:
    load_id: int
    rows_deleted: int
    rows_loaded: int
    usage_start: dt.datetime | None = None
    """First usage hour (``hour_start``) whose rows changed, or ``None`` when nothing changed."""
    usage_end: dt.datetime | None = None
    """End (exclusive, a whole hour) of the usage hours whose rows changed; ``None`` with ``usage_start``."""


def stage(
    source: UsageSource,
    start: dt.datetime,
    end: dt.datetime,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StageResult:
    """Stage the snapshots of ``[start, end)`` from ``source``; return the new ``load_id``.

    ``progress(done, total)`` is called after each file, for long windows.
    """
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
            rows = _stage_files(conn, load_id, files, progress)
    except LoadError as exc:
        _finish_run(settings, load_id, "failed", str(exc))
        raise
    with warehouse.connect(settings) as conn:
        # Fresh statistics, or the gate's queries plan the bulk load as if it were empty.
        conn.execute("analyze raw.usage_staging")
        conn.execute(
            "update pipeline.load_runs set status = 'staged', rows_in = %s where load_id = %s", (rows, load_id)
        )
    return StageResult(load_id, start, end, len(files), rows)


def _stage_files(conn: psycopg.Connection, load_id: int, files: list[SnapshotFile],
                 progress: Callable[[int, int], None] | None = None) -> int:
    conn.execute(
        "create temp table landed_jsonl (line bigint generated always as identity, file text, doc text)"
        " on commit drop"
    )
    conn.execute(
        "create temp table landed_csv (line bigint generated always as identity, file text, "
        + ", ".join(f"{f} text" for f in SNAPSHOT_FIELDS)
        + ") on commit drop"
    )
    rows = 0
    for done, f in enumerate(files, start=1):
        if f.format == "jsonl":
            _copy_jsonl(conn, f)
            rows += _parse(conn, f, _PARSE_JSONL, "landed_jsonl", load_id, _first_seen(conn, f))
        else:
            _copy_csv(conn, f)
            rows += _parse(conn, f, _PARSE_CSV, "landed_csv", load_id, _first_seen(conn, f))
        if progress:
            progress(done, len(files))
    return rows


def _copy_jsonl(conn: psycopg.Connection, f: SnapshotFile) -> None:
    # One text column per line; delimiter and quote are control characters that JSON
    # text never contains raw, so every line arrives verbatim and in order.
    conn.execute("truncate landed_jsonl restart identity")
    conn.execute(sql.SQL("alter table landed_jsonl alter column file set default {}").format(sql.Literal(f.url)))
    with conn.cursor().copy(
        "copy landed_jsonl (doc) from stdin with (format csv, delimiter e'\\x1f', quote e'\\x1e')"
    ) as copy, f.open() as fh:
        while chunk := fh.read(_CHUNK):
            copy.write(chunk)


def _copy_csv(conn: psycopg.Connection, f: SnapshotFile) -> None:
    conn.execute("truncate landed_csv restart identity")
    conn.execute(sql.SQL("alter table landed_csv alter column file set default {}").format(sql.Literal(f.url)))
    with f.open() as fh:
        header_line = fh.readline().decode("utf-8-sig", errors="replace")
        header = next(csv.reader([header_line]), [])
        missing = [c for c in SNAPSHOT_FIELDS if c not in header]
        unknown = [c for c in header if c not in SNAPSHOT_FIELDS]
        if missing or unknown:
            detail = "; ".join(
                part for part in (
                    f"missing column(s) {', '.join(missing)}" if missing else "",
                    f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                ) if part
            )
            raise LoadError(f"{f.url}:1: header: {detail} (expected {', '.join(SNAPSHOT_FIELDS)})")
        columns = ", ".join(header)
        try:
            with conn.cursor().copy(f"copy landed_csv ({columns}) from stdin with (format csv)") as copy:
                while chunk := fh.read(_CHUNK):
                    copy.write(chunk)
        except psycopg.errors.DataError as exc:
            line = _copy_error_line(exc)
            raise LoadError(f"{f.url}:{line + 1 if line else '?'}: row: {exc.diag.message_primary}") from None


def _copy_error_line(exc: psycopg.Error) -> int | None:
    context = exc.diag.context or ""
    marker = ", line "
    if marker in context:
        digits = context.split(marker, 1)[1].split(":", 1)[0].split(",", 1)[0].strip()
        return int(digits) if digits.isdigit() else None
    return None


def _first_seen(conn: psycopg.Connection, f: SnapshotFile) -> dt.datetime:
    return conn.execute(
        "select coalesce(min(first_seen_at), now()) from pipeline.load_files where file_url = %s", (f.url,)
    ).fetchone()[0]


def _parse(conn: psycopg.Connection, f: SnapshotFile, statement: str, table: str, load_id: int,
           learned_at: dt.datetime) -> int:
    try:
        with conn.transaction():
            rows = conn.execute(statement, {"load_id": load_id, "landed_hour": f.hour,
                                            "learned_at": learned_at}).rowcount
            conn.execute(
                "insert into pipeline.load_files (load_id, file_url, landed_hour, rows_in, rows_loaded, status,"
                " first_seen_at) values (%s, %s, %s, %s, %s, 'loaded', %s)",
                (load_id, f.url, f.hour, rows, rows, learned_at),
            )
            return rows
    except (psycopg.errors.DataError, psycopg.errors.InvalidTextRepresentation) as exc:
        # The set-based cast failed somewhere: find the first offending line and field.
        raise LoadError(_diagnose(conn, f, table) or f"{f.url}: {exc.diag.message_primary}") from None


def _diagnose(conn: psycopg.Connection, f: SnapshotFile, table: str) -> str | None:
    if table == "landed_jsonl":
        records = conn.execute("select line, doc from landed_jsonl order by line").fetchall()
        for line, doc in records:
            if doc is None or not doc.strip():
                continue
            try:
                record = json.loads(doc)
            except json.JSONDecodeError as exc:
                return f"{f.url}:{line}: not valid JSON ({exc.msg} at column {exc.colno})"
            if not isinstance(record, dict):
                return f"{f.url}:{line}: expected a JSON object, got {type(record).__name__}"
            problem = _field_problem(record)
            if problem:
                return f"{f.url}:{line}: {problem}"
    else:
        cols = ", ".join(SNAPSHOT_FIELDS)
        for row in conn.execute(f"select line, {cols} from landed_csv order by line").fetchall():
            problem = _field_problem(dict(zip(SNAPSHOT_FIELDS, row[1:], strict=True)))
            if problem:
                return f"{f.url}:{row[0] + 1}: {problem}"
    return None


def _field_problem(record: dict) -> str | None:
    """Why this record's fields cannot be cast (mirrors the casts of the parse statements)."""
    value = record.get("value")
    if value is not None:
        try:
            Decimal(str(value))
        except InvalidOperation:
            return f"value: not a number: {value!r}"
        if isinstance(value, bool):
            return f"value: not a number: {value!r}"
    for field in ("hour", "emitted_at"):
        text = record.get(field)
        if text is not None:
            try:
                dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
            except ValueError:
                return f"{field}: not an ISO-8601 timestamp: {text!r}"
    for field in ("snapshot_id", "tenant_id", "meter", "unit", "kind"):
        if isinstance(record.get(field), dict | list):
            return f"{field}: expected text, got {type(record[field]).__name__}"
    return None


def publish(load_id: int, settings: Settings | None = None) -> PublishResult:
    """Replace the window's rows in ``raw.usage_snapshots`` by the staged ones, atomically."""
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
        # One writer per window at a time; concurrent loads of the same hours queue here.
        conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.usage'))")
        deleted = _delete_landed_hours(conn, start, end)
        loaded = _insert_staged(conn, load_id)
        usage_start, usage_end = _changed_usage_hours(conn, load_id)
        conn.execute("delete from raw.usage_staging where load_id = %s", (load_id,))
        if loaded > 10_000:  # a backfill: keep the planner's statistics true for dbt's reads
            conn.execute("analyze raw.usage_snapshots")
        conn.execute(
            "update pipeline.load_runs set status = 'published', rows_loaded = %s, finished_at = now()"
            " where load_id = %s",
            (loaded, load_id),
        )
    return PublishResult(load_id, deleted, loaded, usage_start, usage_end)


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
               s.landed_hour, coalesce(least(r.learned_at, s.learned_at), s.learned_at, now())
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
    """Mark a staged load as rejected by the gate; its rows stay in staging for inspection."""
    _finish_run(settings, load_id, "rejected", reason)


def _finish_run(settings: Settings | None, load_id: int, status: str, message: str) -> None:
    with warehouse.connect(settings) as conn:
        conn.execute(
            "update pipeline.load_runs set status = %s, message = %s, finished_at = now() where load_id = %s",
            (status, message, load_id),
        )
