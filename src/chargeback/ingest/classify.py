"""Classification of landed rows, set-based: every row loaded, a duplicate, or quarantined.

One SQL statement per file casts the text of each landed row safely and names the first
problem of a bad row (``field: reason``); then two passes per load mark later copies of a
snapshot as duplicates (identical) or quarantine them (different content), within the
load and against what is already published. :mod:`chargeback.ingest.load` runs them.
"""

from __future__ import annotations

import functools

import psycopg

from chargeback.ingest.layout import (
    MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_SOURCE_CHARS,
    NO_SOURCE,
    SNAPSHOT_FIELDS,
    UNPRINTABLE_CLASS,
)
from chargeback.ingest.readers import CsvHeader, FileOutcome

_TEXT_FIELDS = ("snapshot_id", "tenant_id", "meter", "unit", "kind")
_ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)? *([Zz]|[+-]\d{2}(:?\d{2})?)?$"

# Attribution (docs/SNAPSHOTS.md): control and invisible formatting characters are refused in
# a source, a label key or value; names in parentheses are Chargeback's own ('(none)', '(shared)').
_CONTROL = UNPRINTABLE_CLASS
_BEFORE_CONTROL = "^[^" + UNPRINTABLE_CLASS[1:] + "*"
_RESERVED = r"^\(.*\)$"
# A JSON text holding an escaped NUL (\u0000, not \\u0000): valid JSON, but no PostgreSQL text can hold it.
_ESCAPED_NUL = r"(^|[^\\])(\\\\)*\\u0000"
# CSV labels: key=value pairs separated by ';' (a trailing ';' allowed); a backslash makes the
# next character literal (\; \= \\); a key ends at the first unescaped '='.
_LABEL_KEY, _LABEL_VALUE = r"(?:[^\\;=]|\\.)*", r"(?:[^\\;]|\\.)*"
_LABELS_SYNTAX = rf"^{_LABEL_KEY}={_LABEL_VALUE}(?:;{_LABEL_KEY}={_LABEL_VALUE})*;?$"
_LABEL_PAIR = rf"({_LABEL_KEY})=({_LABEL_VALUE})(?:;|$)"
_UNESCAPE = r"regexp_replace({}, '\\(.)', '\1', 'g')"


def _control_at(expr: str) -> str:
    """SQL: ``a control character 0x07 at column 5`` (C0, DEL, C1) or ``an invisible character
    U+202E at column 5`` of the text ``expr`` (which holds one)."""
    code = f"ascii(substring({expr} from '{_CONTROL}'))"
    return (f"case when {code} < 256 then 'a control character 0x' || lpad(to_hex({code}), 2, '0')"
            f" else 'an invisible character U+' || upper(lpad(to_hex({code}), 4, '0')) end"
            f" || ' at column ' || (length(substring({expr} from '{_BEFORE_CONTROL}')) + 1)")


def _shown(expr: str, limit: int) -> str:
    """SQL: ``expr`` in quotes for a reason (as written: no E'' escapes), cut at ``limit``
    characters, control characters as '?'."""
    return (f"('''' || regexp_replace(left({expr}, {limit}), '{_CONTROL}', '?', 'g')"
            f" || case when length({expr}) > {limit} then '…' else '' end || '''')")


_KEY, _VALUE = _shown("e.key", 40), "(e.value #>> '{}')"
_LABEL_CHECKS = f"""
    select labels_text, count(*) as n_labels, min(problem collate "C") as problem
    from (
        select p.labels_text, case
            when e.key = '' then 'labels: an empty key'
            when length(e.key) > {MAX_LABEL_KEY_CHARS} then 'labels: key ' || {_KEY}
                || ' is ' || length(e.key) || ' characters long, more than {MAX_LABEL_KEY_CHARS}'
            when e.key ~ '{_CONTROL}' then 'labels: key ' || {_KEY} || ' holds ' || {_control_at('e.key')}
            when e.key <> btrim(e.key) then 'labels: key ' || {_KEY} || ' has leading or trailing spaces'
            when jsonb_typeof(e.value) <> 'string' then 'labels: the value of ' || {_KEY} || ' is a JSON '
                || jsonb_typeof(e.value) || '; labels are a flat object of text values'
            when {_VALUE} = '' then 'labels: the value of ' || {_KEY} || ' is empty (leave the key out)'
            when length({_VALUE}) > {MAX_LABEL_VALUE_CHARS} then 'labels: the value of ' || {_KEY}
                || ' is ' || length({_VALUE}) || ' characters long, more than {MAX_LABEL_VALUE_CHARS}'
            when {_VALUE} ~ '{_CONTROL}' then 'labels: the value of ' || {_KEY} || ' holds '
                || {_control_at(_VALUE)}
            when {_VALUE} ~ '{_RESERVED}' then 'labels: the value of ' || {_KEY} || ', '
                || {_shown(_VALUE, 40)} || ', is reserved: values in parentheses are Chargeback''s own'
        end as problem
        from (select distinct labels::text as labels_text from fields where jsonb_typeof(labels) = 'object') as p
        cross join lateral jsonb_each(p.labels_text::jsonb) as e
    ) as keyed
    group by labels_text
"""


# A CSV row's labels cell (``labels_cell``) as a JSON object, or why it cannot be read.
_CSV_LABELS = f"""
    select case when btrim(labels_cell) <> '' and labels_cell !~ '{_LABELS_SYNTAX}'
                    then 'labels: not key=value pairs separated by '';'': ' || {_shown('labels_cell', 60)}
                when bool_or(copies > 1) then 'labels: key ' || {_shown('min(key) filter (where copies > 1)', 40)}
                    || ' appears more than once'
           end as labels_problem,
           jsonb_object_agg(key, value) as parsed_labels
    from (
        select key, value, count(*) over (partition by key) as copies
        from (
            select {_UNESCAPE.format('m[1]')} as key, to_jsonb({_UNESCAPE.format('m[2]')}) as value
            from regexp_matches(case when labels_cell ~ '{_LABELS_SYNTAX}' then labels_cell end, '{_LABEL_PAIR}', 'g')
                as m
        ) as pairs
    ) as counted
"""


def _classify_sql(fields_cte: str, *, labels: bool = True) -> str:
    """One statement that classifies every row of one landed file into ``parsed``.

    ``fields_cte`` yields per row: ``line, raw_record, doc_problem`` and each snapshot field
    as text plus its JSON type (``t_<field>``; null for CSV). The first problem found, in
    the order below, is the row's ``reason`` (``field: why``); no problem: a clean row.
    Casts are guarded by ``raw.is_numeric``/``raw.is_timestamptz`` so nothing raises.
    ``labels``: the file may hold labels (checked once per distinct labels object); without,
    the statement skips the check and the materialization it needs.
    """
    label_checks = f"""), label_checks as (
    -- each distinct labels object of the file checked once (their number is small: the
    -- label values' combinations), then found again by each row with a hash join
{_LABEL_CHECKS}""" if labels else ""
    label_join = "left join label_checks as lb on f.labels::text = lb.labels_text" if labels else (
        "cross join (select null::bigint as n_labels, null::text as problem) as lb")
    missing = "\n".join(
        # blank: null, or only spaces (compared as bytes first: btrim runs only on a value that
        # is empty or starts with a space)
        f"            when t.{f} is null or (t.{f} collate \"C\" < '!' and btrim(t.{f}) = '')"
        f" then '{f}: missing'" for f in SNAPSHOT_FIELDS
    )
    wrong_type = "\n".join(
        f"            when t.t_{f} in ('object', 'array') then '{f}: expected text, got a JSON ' || t.t_{f}"
        for f in _TEXT_FIELDS
    )
    return f"""
insert into parsed (file_seq, source_file, source_line, landed_hour, learned_at, raw_record,
                    snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at, kind, source, labels,
                    reason)
with fields as (
{fields_cte}
{label_checks}
), instants as (
    -- each distinct hour and emitted_at text of the file read once (a file holds few: the
    -- hours it covers, its producer's emission times), then found again by a hash join
    select t, ts, ts = date_trunc('hour', ts, 'UTC') as on_the_hour
    from (
        select d.t, case when d.t ~ '{_ISO_TIMESTAMP}' and raw.is_timestamptz(d.t) then d.t::timestamptz end as ts
        from (select hour as t from fields union select emitted_at from fields) as d
    ) as parsed
), typed as (
    select f.*,
           case when raw.is_numeric(f.value) and coalesce(f.t_value, 'string') in ('string', 'number')
                then f.value::numeric end as n_value,
           ih.ts as ts_hour, ih.on_the_hour as hour_on_the_hour, ie.ts as ts_emitted,
           lb.n_labels, lb.problem as label_problem
    from fields as f
    left join instants as ih on ih.t = f.hour
    left join instants as ie on ie.t = f.emitted_at
    {label_join}
    offset 0  -- evaluate the casts once per row: keep the planner from copying them into every use
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
            when not t.hour_on_the_hour
                then 'hour: not the start of an hour: ' || t.hour
            when t.ts_hour >= %(window_end)s
                then 'hour: after the load window (it ends ' || %(window_end_text)s || ')'
            when %(producer)s::text is not null and t.tenant_id <> %(producer)s::text
                then 'tenant_id: ' || quote_literal(left(t.tenant_id, 100)) || ' in a file under tenant '
                     || quote_literal(%(producer)s::text) || '''s landing prefix: a producer writes only its own'
                     || ' tenant''s usage'
            when te.tenant_id is null
                then 'tenant_id: unknown tenant ' || quote_literal(left(t.tenant_id, 100)) || ' (not in config.tenants)'
            when m.meter is null
                then 'meter: unknown meter ' || quote_literal(t.meter) || ' (not in config.meters)'
            when t.unit <> m.unit
                then 'unit: ' || quote_literal(t.unit) || ' is not the unit of meter ' || m.meter
                     || ' (' || m.unit || ')'
            when t.kind <> m.kind
                then 'kind: ' || quote_literal(t.kind) || ' is not the kind of meter ' || m.meter
                     || ' (' || m.kind || ')'
            when t.n_value > m.max_per_snapshot
                then 'value: ' || t.value || ' is implausible for one snapshot of ' || m.meter
                     || ' (above max_per_snapshot ' || trim_scale(m.max_per_snapshot) || ' ' || m.unit || ')'
            when t.ts_hour < %(platform_start)s::timestamptz
                then 'hour: ' || to_char(t.ts_hour at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
                     || ' is before the platform start (' || %(platform_start_text)s::text
                     || ', CHARGEBACK_PLATFORM_START)'
            when t.ts_hour < te.starts_at
                then 'hour: ' || to_char(t.ts_hour at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
                     || ' is before tenant ' || te.tenant_id || '''s start_date (' || te.start_date || ')'
            when pb.first_from is null or t.ts_hour < pb.first_at
                then 'hour: ' || to_char(t.ts_hour at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"')
                     || ' is before the first version of price book ' || quote_literal(te.price_book)
                     || coalesce(' (valid from ' || pb.first_from || ')', ' (it has no version)')
                     || ': no price is in force then'
            when t.t_source in ('object', 'array') then 'source: expected text, got a JSON ' || t.t_source
            when btrim(t.source) = '' then 'source: empty (leave the field out for usage without a source)'
            when length(t.source) > {MAX_SOURCE_CHARS}
                then 'source: ' || length(t.source) || ' characters long, more than {MAX_SOURCE_CHARS}: '
                     || {_shown('t.source', 40)}
            when t.source ~ '{_CONTROL}|{_RESERVED}' then case  -- one regular expression for a good source
                when t.source ~ '{_CONTROL}' then 'source: ' || {_shown('t.source', 40)} || ' holds '
                    || {_control_at('t.source')}
                else 'source: ' || {_shown('t.source', 40)} || ' is reserved: names in parentheses are'
                     || ' Chargeback''s own ({NO_SOURCE} is usage without a source)'
            end
            when t.labels_problem is not null then t.labels_problem
            when jsonb_typeof(t.labels) not in ('object', 'null')
                then 'labels: expected a flat JSON object of text values, got a JSON ' || jsonb_typeof(t.labels)
            when t.n_labels > {MAX_LABELS} then 'labels: ' || t.n_labels || ' keys, more than {MAX_LABELS}'
            when t.label_problem is not null then t.label_problem
        end as reason
    from typed as t
    -- the tenants' and price books' first instants computed once per tenant and book, not per row
    left join (
        select tenant_id, price_book, start_date, start_date::timestamp at time zone 'UTC' as starts_at
        from config.tenants
    ) as te on te.tenant_id = t.tenant_id
    left join config.meters as m on m.meter = t.meter
    left join (
        select price_book, first_from, first_from::timestamp at time zone 'UTC' as first_at
        from (select price_book, min(valid_from) as first_from from config.prices group by price_book) as books
    ) as pb on pb.price_book = te.price_book
)
select %(file_seq)s, %(file)s, line, %(landed_hour)s, %(learned_at)s,
       case when reason is not null then raw_record end,
       case when coalesce(t_snapshot_id, 'string') in ('string', 'number') then snapshot_id end,
       tenant_id, meter, n_value, unit, ts_hour, ts_emitted, kind, coalesce(source, '{NO_SOURCE}'),
       case when jsonb_typeof(labels) = 'object' then labels else '{{}}'::jsonb end, reason
from classified
"""


_TEXT_OF = ", ".join(f"j ->> '{f}' as {f}, jsonb_typeof(j -> '{f}') as t_{f}" for f in SNAPSHOT_FIELDS)
_JSONL_FIELDS = f"""
    select line, coalesce(split_part(marked, chr(2), 2), doc) as raw_record,
           case when marked is not null then split_part(marked, chr(2), 1)
                when escaped_nul then 'record: an escaped NUL character (\\u0000), which no text can hold'
                when j is null then 'record: not valid JSON'
                when jsonb_typeof(j) <> 'object' then 'record: not a JSON object but a JSON ' || jsonb_typeof(j)
           end as doc_problem,
           {_TEXT_OF},
           j ->> 'source' as source, jsonb_typeof(j -> 'source') as t_source,
           j -> 'labels' as labels, null::text as labels_problem
    from (
        select line::integer as line, doc, escaped_nul,
               case when left(doc, 1) = chr(1) then substr(doc, 2) end as marked,
               case when left(doc, 1) <> chr(1) and not escaped_nul and raw.is_json(doc) then doc::jsonb end as j
        from (select *, strpos(doc, '\\u0000') > 0 and doc ~ '{_ESCAPED_NUL}' as escaped_nul
              from landed_jsonl) as landed
        where btrim(coalesce(doc, '')) <> ''
        offset 0  -- parse each line once, not once per field
    ) as docs
    offset 0
"""
CLASSIFY_JSONL = _classify_sql(_JSONL_FIELDS)
CLASSIFY_JSONL_WITHOUT_LABELS = _classify_sql(_JSONL_FIELDS, labels=False)
JSONL_MAY_HOLD_LABELS = (r"select exists (select from landed_jsonl"
                         r" where strpos(doc, 'labels') > 0 or strpos(doc, '\u') > 0)")
"""Whether a landed JSON Lines file may hold labels: a line naming ``labels``, or with a
``\\u`` escape (a key may be written escaped). Most files of producers without labels do not,
and classify with :data:`CLASSIFY_JSONL_WITHOUT_LABELS`."""


@functools.lru_cache(maxsize=64)
def classify_csv(header: CsvHeader) -> str:
    """The classification of a CSV file whose header is ``header`` (cells in ``c1 … cN``).

    A line the reader marked (``\x01reason\x02raw`` in its first cell) is quarantined with
    that reason; unknown columns are not read.
    """
    cells = ", ".join(f"coalesce(c{i}, '')" for i in range(1, header.width + 1))
    fields = ", ".join(
        f"case when marked is null then c{pos} end as {name}, null::text as t_{name}"
        for name, pos in zip(SNAPSHOT_FIELDS, header.positions, strict=True)
    )
    source_at, labels_at = header.optional
    source = f"case when marked is null then nullif(c{source_at}, '') end" if source_at else "null::text"
    if labels_at:
        labels_cell = f"case when marked is null then c{labels_at} end"
        parsed = f"""), cells as (
        -- each distinct labels cell of the file parsed once (their number is small: the label
        -- values' combinations), then found again by each row with a hash join
        select d.labels_cell, lp.labels_problem, lp.parsed_labels
        from (select distinct labels_cell from landed where btrim(labels_cell) <> '') as d
        cross join lateral ({_CSV_LABELS}) as lp
    )"""
        labels = """case when lp.labels_cell is null or lp.labels_problem is not null then null
                else coalesce(lp.parsed_labels, '{}'::jsonb) end as labels,
           lp.labels_problem"""
        join = "left join cells as lp on lp.labels_cell = landed.labels_cell"
    else:  # no labels column: no cells to parse, nothing to join
        labels_cell, parsed = "null::text", ")"
        labels, join = "null::jsonb as labels, null::text as labels_problem", ""
    return _classify_sql(f"""
    with landed as (
        select landed.*, {source} as source, {labels_cell} as labels_cell
        from (
            select landed_csv.*, case when left(c1, 1) = chr(1) then substr(c1, 2) end as marked
            from landed_csv
        ) as landed
    {parsed}
    select line::integer + 1 as line,
           coalesce(split_part(marked, chr(2), 2), raw, concat_ws(',', {cells})) as raw_record,
           coalesce(split_part(marked, chr(2), 1), problem) as doc_problem,
           {fields},
           source, null::text as t_source,
           {labels}
    from landed
    {join}
""", labels=labels_at is not None)

def difference(first: str, this: str) -> str:
    """SQL: how two copies of a snapshot differ, for the reason: ``value 1 there, 4 here`` (the
    value, unless only the source or the labels differ)."""
    return (f"case when {first}.value is distinct from {this}.value"
            f" or ({first}.source, {first}.labels) is not distinct from ({this}.source, {this}.labels)"
            f" then 'value ' || {first}.value || ' there, ' || {this}.value || ' here'"
            f" when {first}.source is distinct from {this}.source then 'source ' || quote_literal({first}.source)"
            f" || ' there, ' || quote_literal({this}.source) || ' here'"
            f" else 'labels ' || {first}.labels::text || ' there, ' || {this}.labels::text || ' here' end")


# A published row ``u`` that came from a landed hour outside the load's window [start, end):
# rows of the window's own hours are about to be replaced, so they do not count.
PUBLISHED_OUTSIDE_WINDOW = """not (coalesce(u.landed_hour, date_trunc('hour', u.hour_start, 'UTC')) >= %(start)s
         and coalesce(u.landed_hour, date_trunc('hour', u.hour_start, 'UTC')) < %(end)s)"""

# Load-level pass over every file's clean rows: later copies of a snapshot are duplicates
# when identical to its first copy (by file, then line), quarantined when they differ.
DEDUPE_WITHIN_LOAD = f"""
with repeated as (
    select tenant_id, snapshot_id from parsed where reason is null group by tenant_id, snapshot_id
    having count(*) > 1
), ranked as (
    select pid, row_number() over w as copy_no, first_value(pid) over w as first_pid
    from parsed
    where reason is null and (tenant_id, snapshot_id) in (select tenant_id, snapshot_id from repeated)
    window w as (partition by tenant_id, snapshot_id order by file_seq, source_line)
), compared as (
    select r.pid, f.source_file, f.source_line, {difference('f', 'p')} as difference,
           (p.tenant_id, p.meter, p.value, p.unit, p.hour_start, p.kind, p.source, p.labels)
           = (f.tenant_id, f.meter, f.value, f.unit, f.hour_start, f.kind, f.source, f.labels) as same
    from ranked as r
    join parsed as p on p.pid = r.pid
    join parsed as f on f.pid = r.first_pid
    where r.copy_no > 1
)
update parsed as p
set duplicate = c.same,
    reason = case when not c.same then
        'snapshot_id: ' || quote_literal(p.snapshot_id) || ' repeats ' || c.source_file || ':' || c.source_line
        || ' with different content (' || c.difference || ')'
    end
from compared as c
where p.pid = c.pid
"""
# The keys of the snapshots published from the load's window's own landed hours, read by
# landed hour (rows by hand, without one, by their usage hour): publish replaces them.
PUBLISHED_IN_WINDOW = """
    select tenant_id, snapshot_id from raw.usage_snapshots
    where landed_hour >= %(start)s and landed_hour < %(end)s
    union all
    select tenant_id, snapshot_id from raw.usage_snapshots as u
    where landed_hour is null
      and hour_start >= %(start)s - interval '1 hour' and hour_start < %(end)s + interval '1 hour'
      and not (""" + PUBLISHED_OUTSIDE_WINDOW + ")"

# ... and copies of a snapshot already published from a landed hour outside this load's
# window (rows of the window's own hours are about to be replaced, so they do not count).
# A key has one published row: a key published from the window's hours is published from
# nowhere else, so only the other keys are looked up in the primary key (a replayed hour
# then probes nothing). Two statements: the candidates are kept (and analyzed) first, so the
# planner knows how few there are; in one statement it misjudged the anti-join and joined
# every staged row to the whole published table before setting the window's keys aside.
PUBLISHED_CANDIDATES = f"""
create temp table published_candidates on commit drop as
with in_window as materialized ({PUBLISHED_IN_WINDOW}
)
select p.pid, p.tenant_id, p.snapshot_id from parsed as p
where p.reason is null and not p.duplicate
  and not exists (select from in_window as w where w.tenant_id = p.tenant_id and w.snapshot_id = p.snapshot_id)
"""
DEDUPE_AGAINST_PUBLISHED = f"""
with compared as (
    select p.pid, u.source_file, u.source_line, {difference('u', 'p')} as difference,
           (p.tenant_id, p.meter, p.value, p.unit, p.hour_start, p.kind, p.source, p.labels)
           = (u.tenant_id, u.meter, u.value, u.unit, u.hour_start, u.kind, u.source, u.labels) as same
    from published_candidates as c
    join raw.usage_snapshots as u on u.tenant_id = c.tenant_id and u.snapshot_id = c.snapshot_id
    join parsed as p on p.pid = c.pid
    where {PUBLISHED_OUTSIDE_WINDOW}
)
update parsed as p
set duplicate = c.same,
    reason = case when not c.same then
        'snapshot_id: ' || quote_literal(p.snapshot_id) || ' already published from ' || c.source_file || ':'
        || c.source_line || ' with different content (' || c.difference || ')'
    end
from compared as c
where p.pid = c.pid
"""


# Load-level pass after the duplicates: a tenant-hour of a meter whose clean rows (this
# load's, plus those published from landed hours outside the window) add up to more than
# the meter's max_per_tenant_hour is implausible: the load's rows of it are quarantined.
TENANT_HOUR_BOUND = f"""
with loaded as (
    select tenant_id, meter, hour_start, sum(value) as total
    from parsed where reason is null and not duplicate
    group by tenant_id, meter, hour_start
), published as (
    select u.tenant_id, u.meter, u.hour_start, sum(u.value) as total
    from raw.usage_snapshots as u
    join loaded as l on (l.tenant_id, l.meter, l.hour_start) = (u.tenant_id, u.meter, u.hour_start)
    where u.hour_start between (select min(hour_start) from loaded) and (select max(hour_start) from loaded)
      and {PUBLISHED_OUTSIDE_WINDOW}
    group by u.tenant_id, u.meter, u.hour_start
), implausible as (
    select l.tenant_id, l.meter, l.hour_start, l.total + coalesce(p.total, 0) as total,
           m.max_per_tenant_hour, m.unit
    from loaded as l
    join config.meters as m on m.meter = l.meter
    left join published as p on (p.tenant_id, p.meter, p.hour_start) = (l.tenant_id, l.meter, l.hour_start)
    where l.total + coalesce(p.total, 0) > m.max_per_tenant_hour
)
update parsed as p
set reason = 'value: tenant ' || i.tenant_id || '''s ' || i.meter || ' of hour '
    || to_char(i.hour_start at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"') || ' adds up to '
    || trim_scale(i.total) || ' ' || i.unit || ', implausible (above max_per_tenant_hour '
    || trim_scale(i.max_per_tenant_hour) || ')'
from implausible as i
where (p.tenant_id, p.meter, p.hour_start) = (i.tenant_id, i.meter, i.hour_start)
  and p.reason is null and not p.duplicate
"""


def garbage(conn: psycopg.Connection, seq: int) -> FileOutcome | None:
    """A file none of whose lines is a JSON object is not a snapshot file: reject it whole."""
    rows, garbage, first = conn.execute(
        "select count(*), count(*) filter (where reason like 'record: %%'),"
        " min(source_line) filter (where reason like 'record: %%') from parsed where file_seq = %s",
        (seq,),
    ).fetchone()
    if rows and rows == garbage:
        return FileOutcome(first, f"file: no line is a JSON object ({rows} line(s)); not a JSON Lines file", rows)
    return None
