"""Hostile or careless producers (issue 10): every landed file is accounted for, a bad value or
hour never reaches a transform, a producer cannot bill another tenant, and one bad producer
is held back alone while everyone else's usage publishes.

Each test lands real files, runs the real loader and gate against PostgreSQL and asserts what
was published, what was quarantined (file, line, field, reason) and that, for every file,
rows in = loaded + duplicates + quarantined.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.ingest import load
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import steps
from chargeback.platform import warehouse
from snapshots import FIELDS, snapshot_row

pytestmark = [pytest.mark.warehouse, pytest.mark.usefixtures("empty_raw")]

H = dt.datetime(2026, 9, 8, 10, tzinfo=dt.UTC)
H1 = H + dt.timedelta(hours=1)


def snap(snapshot_id: str, **overrides) -> dict:
    return snapshot_row(snapshot_id, H, **overrides)


def jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def csv_text(*rows: dict, header: tuple[str, ...] = FIELDS) -> bytes:
    lines = [",".join(header)] + [",".join(str(r.get(f, "")) for f in header) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def land(landing: Path, name: str, data: bytes, tenant: str | None = None, hour: dt.datetime = H) -> Path:
    folder = landing / "usage" / (tenant or "") / f"{hour:%Y-%m-%d}" / f"{hour:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def stage(landing: Path, start: dt.datetime = H, end: dt.datetime = H1) -> load.StageResult:
    return load.stage(FileSource(str(landing)), start, end)


def publish(landing: Path, *, gate: bool = False) -> load.StageResult:
    """Stage and publish the hour; through the gate (and its policy) when ``gate``."""
    staged = stage(landing)
    if gate:
        steps.gate(staged.load_id, H, H1)
    load.publish(staged.load_id)
    return staged


def files(load_id: int) -> dict[str, tuple]:
    """Per file: (status, rows_in, loaded, duplicates, quarantined, message), the accounting checked."""
    with warehouse.connect() as conn:
        rows = conn.execute("select file_url, status, rows_in, rows_loaded, rows_duplicate, rows_quarantined,"
                            " message from pipeline.load_files where load_id = %s", (load_id,)).fetchall()
    for _, _, rows_in, loaded, dup, bad, _ in rows:
        assert rows_in == loaded + dup + bad
    return {Path(url).name: tuple(rest) for url, *rest in rows}


def quarantined(load_id: int) -> list[tuple]:
    with warehouse.connect() as conn:
        return [(Path(f).name, line, field, reason) for f, line, field, reason in conn.execute(
            "select source_file, source_line, field, reason from raw.usage_quarantine where load_id = %s"
            " order by source_file, source_line, quarantine_id", (load_id,))]


def published() -> dict[tuple[str, str], Decimal]:
    with warehouse.connect() as conn:
        return {(t, s): v for t, s, v in conn.execute(
            "select tenant_id, snapshot_id, value from raw.usage_snapshots order by 1, 2")}


# ---- every file is accounted for ----------------------------------------------------------


def test_compressed_and_differently_named_files_are_read_and_others_rejected_with_a_reason(landing):
    land(landing, "a.jsonl.gz", gzip.compress(jsonl(snap("s1"), snap("s2"))))
    land(landing, "b.json", jsonl(snap("s3")))
    land(landing, "c.JSONL", jsonl(snap("s4")))
    land(landing, "d.CSV.GZ", gzip.compress(csv_text(snap("s5"))))
    land(landing, "e.txt", jsonl(snap("s6"), snap("s7")))
    land(landing, "f.jsonl.gz", b"not gzip at all\n")

    staged = publish(landing)

    assert set(published()) == {("t001", s) for s in ("s1", "s2", "s3", "s4", "s5")}
    accounting = files(staged.load_id)
    assert {name: row[:5] for name, row in accounting.items()} == {
        "a.jsonl.gz": ("loaded", 2, 2, 0, 0), "b.json": ("loaded", 1, 1, 0, 0), "c.JSONL": ("loaded", 1, 1, 0, 0),
        "d.CSV.GZ": ("loaded", 1, 1, 0, 0), "e.txt": ("rejected", 2, 0, 0, 2), "f.jsonl.gz": ("rejected", 0, 0, 0, 0),
    }
    assert accounting["e.txt"][5] == ("file: not a snapshot file type (.txt); expected .csv, .json, .jsonl, .ndjson"
                                      " (optionally .gz)")
    assert accounting["f.jsonl.gz"][5].startswith("file: not a readable gzip stream (")
    assert (staged.rows_in, staged.rows, staged.rows_quarantined, staged.files_rejected) == (7, 5, 2, 2)


def test_a_byte_order_mark_is_dropped_in_json_lines_as_in_csv(landing):
    land(landing, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(snap("s1"), snap("s2")))
    land(landing, "bom.csv", b"\xef\xbb\xbf" + csv_text(snap("s3")))

    staged = publish(landing)

    assert set(published()) == {("t001", "s1"), ("t001", "s2"), ("t001", "s3")}
    assert quarantined(staged.load_id) == []


@pytest.mark.parametrize("name", ["mixed.jsonl", "mixed.csv"])
def test_an_undecodable_line_or_a_nul_is_quarantined_alone_and_the_good_lines_load(landing, name):
    good = [snap("s1"), snap("s4")]
    if name.endswith(".csv"):
        text = csv_text(*good).split(b"\n")
        data = b"\n".join([text[0], text[1], b"s2,t\xe9,ingested_gb,1,GB,x,y,counter", b"s3,t001,\x00,1,GB,x,y,z",
                           text[2]]) + b"\n"
        first_bad = 3
    else:
        data = jsonl(good[0]) + b'{"snapshot_id": "s2", "tenant_id": "t\xe9"}\n' + b'{"a": "\x00"}\n' + jsonl(good[1])
        first_bad = 2
    land(landing, name, data)

    staged = publish(landing)

    assert set(published()) == {("t001", "s1"), ("t001", "s4")}
    rows = quarantined(staged.load_id)
    assert [(line, field) for _, line, field, _ in rows] == [(first_bad, "record"), (first_bad + 1, "record")]
    assert rows[0][3].startswith("record: not UTF-8 text (byte 0xe9 at column ")
    assert rows[1][3].startswith("record: a NUL byte at column ")
    assert files(staged.load_id)[name][:5] == ("loaded", 4, 2, 0, 2)


def test_csv_unknown_columns_are_ignored_and_listed_repeated_columns_reject_the_file(landing):
    land(landing, "extra.csv", csv_text(snap("s1", region="eu"), header=(*FIELDS, "region")))
    land(landing, "twice.csv", csv_text(snap("s2"), snap("s3"), header=(*FIELDS, "value")))
    land(landing, "headless.csv", csv_text(snap("s4"), snap("s5")).split(b"\n", 1)[1])

    staged = publish(landing)

    assert set(published()) == {("t001", "s1")}
    accounting = files(staged.load_id)
    assert accounting["extra.csv"] == ("loaded", 1, 1, 0, 0, "ignored unknown column(s): region")
    assert accounting["twice.csv"] == ("rejected", 2, 0, 0, 2,
                                       "file: header repeats column(s): 'value' in columns 4, 9")
    assert accounting["headless.csv"][:5] == ("rejected", 2, 0, 0, 2)  # every line is a row
    assert accounting["headless.csv"][5].startswith("file: no header (the first line names none of ")


def test_a_line_or_a_file_over_the_size_limits_is_refused_without_being_read_whole(landing, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_MAX_LINE_BYTES", "1000")
    monkeypatch.setenv("CHARGEBACK_MAX_FILE_BYTES", "100000")
    land(landing, "long.jsonl", jsonl(snap("s1")) + b'{"x": "' + b"a" * 5000 + b'"}\n' + jsonl(snap("s2")))
    land(landing, "long.csv", csv_text(snap("s3")) + b"s4," + b"b" * 5000 + b"\n")
    land(landing, "huge.jsonl", jsonl(*(snap(f"h{i}") for i in range(1000))))
    land(landing, "wide.csv", b"snapshot_id," + b"c" * 5000 + b"\n")

    staged = publish(landing)

    assert set(published()) == {("t001", "s1"), ("t001", "s2"), ("t001", "s3")}
    rows = quarantined(staged.load_id)
    assert ("long.jsonl", 2, "record", "record: line longer than 1,000 bytes (max_line_bytes)") in rows
    assert ("long.csv", 3, "record", "record: line longer than 1,000 bytes (max_line_bytes)") in rows
    accounting = files(staged.load_id)
    assert accounting["huge.jsonl"] == ("rejected", 0, 0, 0, 0,
                                        "file: larger than 100,000 bytes (max_file_bytes); not read")
    assert accounting["wide.csv"][0] == "rejected"
    assert accounting["wide.csv"][5] == "file: header longer than 1,000 bytes (max_line_bytes)"


def test_a_file_name_is_never_read_as_a_url(landing):
    land(landing, "a", jsonl(snap("decoy")))  # what fsspec would read for "a::b.jsonl"
    land(landing, "a::b.jsonl", jsonl(snap("s1")))

    staged = publish(landing)

    assert set(published()) == {("t001", "s1")}
    assert files(staged.load_id)["a::b.jsonl"][:2] == ("loaded", 1)


# ---- implausible values and hours never reach a transform ---------------------------------


def test_implausible_values_and_hours_are_quarantined_with_the_reason_never_published(landing, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_PLATFORM_START", "2021-01-01")
    land(landing, "a.jsonl", jsonl(
        snap("ok"),
        snap("overflow-mart", value="1e30"),
        snap("overflow-invoice", value="1e20"),
        snap("epoch", hour="1970-01-01T00:00:00Z"),
        snap("before-start", hour="2020-06-01T00:00:00Z"),
        snap("big1", meter="scanned_gb", value="900000"),
        snap("big2", meter="scanned_gb", value="900000"),
    ))

    staged = publish(landing)

    assert set(published()) == {("t001", "ok")}
    reasons = {r[1]: r[3] for r in quarantined(staged.load_id)}
    assert reasons[2] == "value: 1e30 is implausible for one snapshot of ingested_gb (above max_per_snapshot 100000 GB)"
    assert reasons[3] == "value: 1e20 is implausible for one snapshot of ingested_gb (above max_per_snapshot 100000 GB)"
    assert reasons[4] == ("hour: 1970-01-01T00:00Z is before the platform start (2021-01-01,"
                          " CHARGEBACK_PLATFORM_START)")
    assert reasons[5] == "hour: 2020-06-01T00:00Z is before the platform start (2021-01-01, CHARGEBACK_PLATFORM_START)"
    tenant_hour = (f"value: tenant t001's scanned_gb of hour {H:%Y-%m-%dT%H}:00Z adds up to 1800000 GB,"
                   " implausible (above max_per_tenant_hour 1000000)")
    assert (reasons[6], reasons[7]) == (tenant_hour, tenant_hour)


def test_an_hour_before_the_first_price_book_version_is_quarantined(landing):
    land(landing, "a.jsonl", jsonl(snap("ok"), snap("epoch", hour="1970-01-01T00:00:00Z")))

    staged = publish(landing)

    assert set(published()) == {("t001", "ok")}
    assert quarantined(staged.load_id)[-1][2:] == ("hour", (
        "hour: 1970-01-01T00:00Z is before the first version of price book 'enterprise' (valid from 2020-01-01):"
        " no price is in force then"))


# ---- producer identity -------------------------------------------------------------------


def test_a_producer_writes_only_its_own_tenants_usage_and_cannot_pre_empt_anothers_ids(landing):
    land(landing, "agent.jsonl", jsonl(snap("s1", tenant_id="t002"), snap("shared-id", tenant_id="t002")),
         tenant="t002")
    land(landing, "agent.jsonl", jsonl(snap("s1"), snap("shared-id", value="7"), snap("forged", tenant_id="t002")),
         tenant="t001")

    staged = publish(landing)

    # both tenants' "shared-id" load: snapshot ids are unique per tenant only
    assert published() == {("t001", "s1"): Decimal("2.5"), ("t001", "shared-id"): Decimal("7"),
                           ("t002", "s1"): Decimal("2.5"), ("t002", "shared-id"): Decimal("2.5")}
    assert quarantined(staged.load_id)[0][1:] == (3, "tenant_id", (
        "tenant_id: 't002' in a file under tenant 't001''s landing prefix: a producer writes only its own"
        " tenant's usage"))


def test_a_shared_folder_accepts_only_trusted_producers_when_configured(landing, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_TRUSTED_PRODUCERS", "platform-*")
    land(landing, "platform-meter-1.jsonl", jsonl(snap("s1")))
    land(landing, "someone.jsonl", jsonl(snap("s2")))

    staged = publish(landing, gate=True)

    assert set(published()) == {("t001", "s1")}
    assert files(staged.load_id)["someone.jsonl"][5].startswith(
        "file: 'someone.jsonl' is in a shared hour folder, which only trusted platform producers (platform-*) may"
        " write")


# ---- one bad producer is held back alone ---------------------------------------------------


def test_a_bad_producer_is_held_back_alone_and_a_late_bad_file_is_recorded_once(landing):
    land(landing, "agent.jsonl", jsonl(snap("a1", tenant_id="t001")), tenant="t001")
    land(landing, "agent.jsonl", jsonl(snap("b1", tenant_id="t002")), tenant="t002")
    first = publish(landing, gate=True)
    assert set(published()) == {("t001", "a1"), ("t002", "b1")}

    # t002's producer breaks: a late file in the same hour, rejected whole; t001 adds a snapshot
    land(landing, "late.csv", b"garbage\x00header\n1,2,3\n", tenant="t002")
    land(landing, "more.jsonl", jsonl(snap("a2", tenant_id="t001")), tenant="t001")
    later = H1 + dt.timedelta(hours=1)
    plan = steps.plan_window(H1, later)
    assert [r.hour for r in plan.restated] == [H]
    load_id = steps.extract_and_stage(plan.load_start, plan.load_end, FileSource(str(landing)))
    steps.gate(load_id, plan.load_start, plan.load_end)  # passes: only t002 is held back
    load.publish(load_id)

    assert set(published()) == {("t001", "a1"), ("t001", "a2"), ("t002", "b1")}  # t002 keeps what it had
    with warehouse.connect() as conn:
        holds = conn.execute("select holder, holder_kind from pipeline.load_holds where load_id = %s",
                             (load_id,)).fetchall()
    assert holds == [("t002", "tenant")]
    assert load_id > first.load_id
    # the next hourly run does not pick the bad file up again: it waits for quarantine replay
    assert steps.plan_window(later, later + dt.timedelta(hours=1)).restated == ()


def test_an_hour_before_the_tenants_start_date_is_quarantined(landing):
    with warehouse.connect() as conn:
        conn.execute("update config.tenants set start_date = date '2026-09-09' where tenant_id = 't001'")
    try:
        land(landing, "a.jsonl", jsonl(snap("early"), snap("other", tenant_id="t002")))
        staged = publish(landing)
    finally:
        with warehouse.connect() as conn:
            conn.execute("update config.tenants set start_date = null where tenant_id = 't001'")

    assert set(published()) == {("t002", "other")}
    assert quarantined(staged.load_id)[0][2:] == (
        "hour", f"hour: {H:%Y-%m-%dT%H}:00Z is before tenant t001's start_date (2026-09-09)")


def test_crlf_files_load_like_lf_files(landing):
    land(landing, "win.jsonl", jsonl(snap("s1"), snap("s2")).replace(b"\n", b"\r\n"))
    land(landing, "win.csv", csv_text(snap("s3"), snap("s4")).replace(b"\n", b"\r\n"))
    land(landing, "cr.jsonl", jsonl(snap("s5")) + b'{"snapshot_id": "s6",\r "tenant_id": "t001"}\n')

    staged = publish(landing)

    assert set(published()) == {("t001", s) for s in ("s1", "s2", "s3", "s4", "s5")}
    assert quarantined(staged.load_id) == [("cr.jsonl", 2, "record", "record: control character 0x0d at column 22")]


def test_a_held_producers_kept_row_and_its_late_copy_elsewhere_count_once(landing):
    first = land(landing, "a.jsonl", jsonl(snap("s1")))
    publish(landing, gate=True)
    first.write_bytes(jsonl(snap("s1", value="x")))  # the hour's file turns bad: t001 is held for it
    land(landing, "b.jsonl", jsonl(snap("s1")), hour=H1)  # a late copy of s1 in the next hour

    staged = stage(landing, H, H1 + dt.timedelta(hours=1))
    steps.gate(staged.load_id, H, H1 + dt.timedelta(hours=1))
    load.publish(staged.load_id)  # no duplicate key: the kept row counts as published

    assert published() == {("t001", "s1"): Decimal("2.5")}
    assert files(staged.load_id)["b.jsonl"][:5] == ("loaded", 1, 0, 1, 0)
