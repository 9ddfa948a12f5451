"""The classification statement's shortcut (docs/DECISIONS.md, "The loader's fast path"): a row
passing the one short clean test is what walking every check in order would have found clean,
and a row failing it gets the same reason — on a hostile file of each format, row for row.

Runs the real reader and statements against PostgreSQL (15 and 18 in CI's two runs)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from chargeback.ingest import classify, load, readers
from chargeback.ingest.sources import FileSource
from chargeback.platform import warehouse
from snapshots import snapshot_row

pytestmark = [pytest.mark.warehouse, pytest.mark.usefixtures("empty_raw")]

H = dt.datetime(2026, 9, 8, 10, tzinfo=dt.UTC)
H1 = H + dt.timedelta(hours=1)


def snap(snapshot_id: str, **overrides) -> dict:
    return snapshot_row(snapshot_id, H, **overrides)


def _without(row: dict, field: str) -> dict:
    return {k: v for k, v in row.items() if k != field}


# One row per check (and a few that only look bad): the expected reason, or None for a clean row.
ROWS: list[tuple[dict, str | None]] = [
    (snap("clean-1"), None),
    (snap("clean-zero", value="0"), None),
    (snap("clean-attributed", source="web", labels={"team": "a", "env": "prod"}), None),
    (snap("{looks-like-json"), None),
    (_without(snap("x"), "snapshot_id"), "snapshot_id: missing"),
    (snap("  "), "snapshot_id: missing"),
    (snap("s-tenant", tenant_id="nobody"), "tenant_id: 'nobody' in a file under tenant 't001''s landing prefix:"
                                           " a producer writes only its own tenant's usage"),
    (snap("s-meter", meter="nope"), "meter: unknown meter 'nope' (not in config.meters)"),
    (snap("s-unit", unit="TB"), "unit: 'TB' is not the unit of meter ingested_gb (GB)"),
    (snap("s-kind", kind="gauge"), "kind: 'gauge' is not the kind of meter ingested_gb (counter)"),
    (snap("s-abc", value="abc"), "value: not a number: 'abc'"),
    (snap("s-nan", value="NaN"), "value: not a finite number: NaN"),
    (snap("s-inf", value="Infinity"), "value: not a finite number: Infinity"),
    (snap("s-neg", value="-1"), "value: negative: -1"),
    (snap("s-big", value="1e30"),
     "value: 1e30 is implausible for one snapshot of ingested_gb (above max_per_snapshot 100000 GB)"),
    (snap("s-hour", hour="yesterday"), "hour: not an ISO-8601 timestamp: 'yesterday'"),
    (snap("s-half", hour="2026-09-08T10:30:00Z"), "hour: not the start of an hour: 2026-09-08T10:30:00Z"),
    (snap("s-late", hour="2026-09-08T12:00:00Z"), "hour: after the load window (it ends 2026-09-08T11:00Z)"),
    (snap("s-1970", hour="1970-01-01T00:00:00Z"),
     "hour: 1970-01-01T00:00Z is before the first version of price book 'enterprise' (valid from 2020-01-01):"
     " no price is in force then"),
    (snap("s-emitted", emitted_at="soon"), "emitted_at: not an ISO-8601 timestamp: 'soon'"),
    (snap("s-reserved", source="(mine)"),
     "source: '(mine)' is reserved: names in parentheses are Chargeback's own ((none) is usage without a source)"),
    (snap("s-bell", source="a\u0007b"), "source: 'a?b' holds a control character 0x07 at column 2"),
    (snap("s-long", source="x" * 300), "source: 300 characters long, more than 256: '" + "x" * 40 + "…'"),
    (snap("s-reserved-label", labels={"team": "(x)"}),
     "labels: the value of 'team', '(x)', is reserved: values in parentheses are Chargeback's own"),
]
JSON_ONLY: list[tuple[dict | str, str | None]] = [
    (snap({"a": 1}), "snapshot_id: expected text, got a JSON object"),
    (snap("s-tenant-array", tenant_id=[1]), "tenant_id: expected text, got a JSON array"),
    (snap("s-true", value=True), "value: not a number: 'true'"),
    (snap("s-source-object", source={"s": 1}), "source: expected text, got a JSON object"),
    (snap("s-empty-source", source=""), "source: empty (leave the field out for usage without a source)"),
    (snap("s-labels-array", labels=[1]), "labels: expected a flat JSON object of text values, got a JSON array"),
    (snap("s-labels-number", labels={"k": 1}),
     "labels: the value of 'k' is a JSON number; labels are a flat object of text values"),
    (snap("s-labels-many", labels={f"k{i}": "v" for i in range(17)}), "labels: 17 keys, more than 16"),
    ("{not json", "record: not valid JSON"),
    ("[1, 2]", "record: not a JSON object but a JSON array"),
    ('{"snapshot_id": "a\\u0000b"}', "record: an escaped NUL character (\\u0000), which no text can hold"),
]


def _jsonl() -> bytes:
    lines = [r if isinstance(r, str) else json.dumps(r) for r, _ in ROWS + JSON_ONLY]
    return ("\n".join(lines) + "\n").encode() + b'{"bad": "\xff"}\n'


def _csv() -> bytes:
    header = ("snapshot_id", "tenant_id", "meter", "value", "unit", "hour", "emitted_at", "kind", "source", "labels")

    def cell(row: dict, field: str) -> str:
        value = row.get(field, "")
        if field == "labels":
            value = ";".join(f"{k}={v}" for k, v in value.items()) if value else ""
        return '"' + str(value).replace('"', '""') + '"' if value != "" else ""

    lines = [",".join(header)] + [",".join(cell(r, f) for f in header) for r, _ in ROWS]
    lines += ["s-pairs,t001,ingested_gb,1,GB,2026-09-08T10:00:00Z,2026-09-08T10:59:00Z,counter,,team",
              "s-twice,t001,ingested_gb,1,GB,2026-09-08T10:00:00Z,2026-09-08T10:59:00Z,counter,,a=1;a=2"]
    return ("\n".join(lines) + "\n").encode() + b"s-utf8,t001,ingested_gb,1,GB,\xff,x,counter,,\n"


CSV_ONLY = [
    "labels: not key=value pairs separated by ';': 'team'",
    "labels: key 'a' appears more than once",
    "record: not UTF-8 text (byte 0xff at column 30)",
]


def _classify_both_ways(landing: Path, name: str, data: bytes, settings) -> tuple[list, list]:
    folder = landing / "usage" / "t001" / f"{H:%Y-%m-%d}" / f"{H:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    (f,) = FileSource(str(landing)).files(H, H1)
    params = load.classification_params(1, f, H1, H, settings)
    limits = (settings.max_file_bytes, settings.max_line_bytes)
    results = []
    with warehouse.connect() as conn:
        load.create_work_tables(conn)
        if f.format == "jsonl":
            _, rejected, labelled = readers.copy_jsonl(conn, f, *limits)
            statements = [classify.classify_jsonl(labels=labelled, shortcut=s) for s in (True, False)]
        else:
            _, header, rejected = readers.copy_csv(conn, f, *limits)
            statements = [classify.classify_csv(header, shortcut=s) for s in (True, False)]
        assert rejected is None
        for statement in statements:
            conn.execute("truncate parsed")
            conn.execute(statement, params)
            results.append(conn.execute(
                "select source_line, raw_record, snapshot_id, tenant_id, meter, value::text, unit, hour_start,"
                " emitted_at, kind, source, labels, reason from parsed order by source_line").fetchall())
        conn.rollback()
    return results[0], results[1]


def test_the_clean_shortcut_classifies_a_hostile_jsonl_file_as_every_check_does(landing, settings):
    fast, full = _classify_both_ways(landing, "hostile.jsonl", _jsonl(), settings)
    assert fast == full
    expected = [reason for _, reason in ROWS + JSON_ONLY] + ["record: not UTF-8 text (byte 0xff at column 10)"]
    assert [row[-1] for row in fast] == expected
    assert [row[0] for row in fast] == list(range(1, len(expected) + 1))


def test_the_clean_shortcut_classifies_a_hostile_csv_file_as_every_check_does(landing, settings):
    fast, full = _classify_both_ways(landing, "hostile.csv", _csv(), settings)
    assert fast == full
    assert [row[-1] for row in fast] == [reason for _, reason in ROWS] + CSV_ONLY
    assert [row[0] for row in fast] == list(range(2, len(ROWS) + len(CSV_ONLY) + 2))  # line 1 is the header
