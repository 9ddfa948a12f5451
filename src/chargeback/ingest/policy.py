"""The quarantine policy, per producer: one bad producer never stops the others.

Under ``quarantine_policy = fail`` the gate holds back each *producer* of a load whose
rows broke the policy, for the landed hours where it broke it, and only it:

* a **tenant** — the tenant whose landing prefix a file is under, or, in the shared
  folders, the tenant a row names (when it is a known tenant) — whose quarantined rows
  in a landed hour exceed ``max_bad_share`` of its rows there, or one of whose files
  was rejected whole;
* a **file** of the shared folders, for quarantined rows that name no known tenant
  (over ``max_bad_share`` of the file's unattributed rows, or the file rejected whole).

A held producer's staged rows of those hours are quarantined too (field ``policy``, naming the hold),
so nothing is published for it from this load and ``rows in = loaded + duplicates +
quarantined`` still holds; :func:`chargeback.ingest.load.publish` keeps what was
published for it before. Every other producer's rows publish. The hold is recorded in
``pipeline.load_holds`` and said in one line per producer; the load's files are recorded
as seen, so a late bad file is not picked up again by every hourly run: it waits for
``chargeback quarantine replay``. Under ``warn`` nothing is held.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from chargeback.platform import events, warehouse
from chargeback.platform.settings import Settings


@dataclass(frozen=True)
class Hold:
    holder: str
    kind: str  # "tenant" | "file"
    reason: str
    landed_hours: tuple[dt.datetime, ...] | list[dt.datetime]
    """The landed hours held back: the producer's other hours of the load publish."""


_HOLDS = """
with files as (
    select file_url, producer, status, message, landed_hour from pipeline.load_files where load_id = %(load_id)s
), attributed as (
    select s.landed_hour, s.source_file, coalesce(f.producer, s.tenant_id) as holder, 'tenant' as holder_kind,
           false as bad
    from raw.usage_staging as s
    join files as f on f.file_url = s.source_file
    where s.load_id = %(load_id)s
    union all
    select q.landed_hour, q.source_file,
           coalesce(f.producer, t.tenant_id, q.source_file),
           case when f.producer is not null or t.tenant_id is not null then 'tenant' else 'file' end,
           true
    from raw.usage_quarantine as q
    join files as f on f.file_url = q.source_file
    left join config.tenants as t on t.tenant_id = q.tenant_id
    where q.load_id = %(load_id)s and q.field not in ('file', 'policy')
), shares as (
    -- a tenant: its bad rows among its rows; a shared file: its rows naming no known tenant
    -- among all of its rows
    select holder, holder_kind, landed_hour, count(*) filter (where bad) as bad, count(*) as total
    from attributed where holder_kind = 'tenant'
    group by holder, holder_kind, landed_hour
    union all
    select source_file, 'file', landed_hour, count(*) filter (where bad and holder_kind = 'file'), count(*)
    from attributed
    group by source_file, landed_hour
), over_share as (
    select * from shares where bad > %(max_bad_share)s * total
), reasons as (
    select holder, holder_kind, landed_hour,
           bad || ' of ' || total || ' rows of landed hour '
           || to_char(landed_hour at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"') || ' quarantined ('
           || round(100.0 * bad / total, 1) || '%% > max_bad_share ' || %(share_text)s || ')' as reason
    from over_share
    union all
    select coalesce(producer, file_url), case when producer is null then 'file' else 'tenant' end, landed_hour,
           'file ' || file_url || ' rejected whole: ' || substr(message, 7)
    from files
    where status = 'rejected'
)
select holder, holder_kind,
       (array_agg(reason order by landed_hour, reason))[1]
       || case when count(*) > 1 then ' (and ' || count(*) - 1 || ' more)' else '' end,
       array_agg(distinct landed_hour order by landed_hour)
from reasons
group by holder, holder_kind
order by holder_kind desc, holder
"""

_HOLD_ROWS = """
with held as (
    select holder, holder_kind, reason, landed_hours from pipeline.load_holds where load_id = %(load_id)s
), moved as (
    delete from raw.usage_staging as s
    using pipeline.load_files as f, held as h
    where s.load_id = %(load_id)s and f.load_id = s.load_id and f.file_url = s.source_file
      and ((h.holder_kind = 'tenant' and h.holder = coalesce(f.producer, s.tenant_id))
           or (h.holder_kind = 'file' and h.holder = s.source_file))
      and s.landed_hour = any(h.landed_hours)
    returning s.*, h.holder, h.holder_kind, h.reason as hold_reason
), quarantined as (
    insert into raw.usage_quarantine (load_id, source_file, source_line, landed_hour, field, reason,
                                      snapshot_id, tenant_id)
    select load_id, source_file, source_line, landed_hour, 'policy',
           'policy: held back with ' || holder_kind || ' ' || holder || ' (' || hold_reason || ')',
           snapshot_id, tenant_id
    from moved
)
select source_file, count(*) from moved group by source_file
"""


def apply(load_id: int, settings: Settings) -> list[Hold]:
    """Hold back the load's producers that broke the policy (once per load: a retried gate
    finds the holds already made). Returns the holds, one line recorded for each."""
    if settings.quarantine_policy == "warn":
        return []
    with warehouse.connect(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.policy'), %s::int)", (load_id,))
        done = conn.execute("select holder, holder_kind, reason, landed_hours from pipeline.load_holds"
                            " where load_id = %s"
                            " order by holder_kind desc, holder", (load_id,)).fetchall()
        if done or conn.execute("select exists (select from pipeline.load_runs where load_id = %s"
                                " and status <> 'staged')", (load_id,)).fetchone()[0]:
            return [Hold(*row) for row in done]
        holds = [Hold(*row) for row in conn.execute(
            _HOLDS, {"load_id": load_id, "max_bad_share": settings.max_bad_share,
                     "share_text": f"{settings.max_bad_share:%}"})]
        if holds:
            conn.cursor().executemany(
                "insert into pipeline.load_holds (load_id, holder, holder_kind, reason, landed_hours)"
                " values (%s, %s, %s, %s, %s)",
                [(load_id, h.holder, h.kind, h.reason, list(h.landed_hours)) for h in holds])
            _move_held_rows(conn, load_id)
    for hold in holds:
        _say(load_id, hold, settings)
    return holds


def _move_held_rows(conn: psycopg.Connection, load_id: int) -> None:
    moved = conn.execute(_HOLD_ROWS, {"load_id": load_id}).fetchall()
    for url, rows in moved:
        conn.execute("update pipeline.load_files set rows_loaded = rows_loaded - %s,"
                     " rows_quarantined = rows_quarantined + %s where load_id = %s and file_url = %s",
                     (rows, rows, load_id, url))
    if moved:
        total = sum(rows for _, rows in moved)
        conn.execute("update pipeline.load_runs set rows_loaded = rows_loaded - %s,"
                     " rows_quarantined = rows_quarantined + %s where load_id = %s", (total, total, load_id))


def _say(load_id: int, hold: Hold, settings: Settings) -> str:
    who = f"tenant {hold.holder}" if hold.kind == "tenant" else f"file {hold.holder}"
    return events.record(
        events.Event(
            "quarantine", f"{who} held back in load {load_id}",
            f"{hold.reason}; nothing of it was published from this load, every other producer's rows were",
            f"fix the producer or config, then chargeback quarantine replay --load {load_id}",
            hold.holder, severity="warning",
        ),
        details={"load_id": load_id, "holder": hold.holder, "kind": hold.kind}, settings=settings,
    )
