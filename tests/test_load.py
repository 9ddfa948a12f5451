"""Extract and load: files land in raw.usage_snapshots exactly once, or not at all."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback import load, pipeline, warehouse
from chargeback.simulate import simulate
from chargeback.sources import FileSource

pytestmark = pytest.mark.warehouse

START = dt.datetime(2026, 9, 3, 0, tzinfo=dt.UTC)
TWO_HOURS = (START, START + dt.timedelta(hours=2))
TENANTS = ["t001", "t002", "t003"]

FINGERPRINT = """
select count(*), md5(coalesce(string_agg(concat_ws('|', snapshot_id, tenant_id, meter, value::text, unit,
       hour_start, emitted_at, kind, source_file, source_line), ',' order by snapshot_id), ''))
from raw.usage_snapshots
"""


@pytest.fixture(autouse=True)
def empty_raw():
    with warehouse.connect() as conn:
        conn.execute("truncate raw.usage_snapshots, raw.usage_staging, raw.usage_quarantine, pipeline.load_files")


def _load(landing: Path, start: dt.datetime, end: dt.datetime) -> load.PublishResult:
    staged = load.stage(FileSource(str(landing)), start, end)
    return load.publish(staged.load_id)


def _fingerprint():
    with warehouse.connect() as conn:
        return conn.execute(FINGERPRINT).fetchone()


def _hour_file(landing: Path, hour: dt.datetime) -> Path:
    (path,) = (landing / "usage" / f"{hour:%Y-%m-%d}" / f"{hour:%H}").iterdir()
    return path


def test_both_file_formats_load_every_snapshot_with_exact_values(landing):
    rows = simulate(str(landing), TENANTS, *TWO_HOURS)  # hour 00 is JSON Lines, hour 01 is CSV
    assert rows == 2 * 3 * 5
    assert _hour_file(landing, START).suffix == ".jsonl"
    assert _hour_file(landing, START + dt.timedelta(hours=1)).suffix == ".csv"

    result = _load(landing, *TWO_HOURS)

    assert result.rows_loaded == 30
    csv_file = _hour_file(landing, START + dt.timedelta(hours=1))
    header, first = csv_file.read_text().splitlines()[:2]
    record = dict(zip(header.split(","), first.split(","), strict=True))
    with warehouse.connect() as conn:
        value, source_file, source_line, hour = conn.execute(
            "select value, source_file, source_line, hour_start from raw.usage_snapshots where snapshot_id = %s",
            (record["snapshot_id"],),
        ).fetchone()
    assert value == Decimal(record["value"])
    assert (source_file, source_line) == (str(csv_file), 2)
    assert hour == START + dt.timedelta(hours=1)


def test_replayed_hour_changes_nothing(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS)
    _load(landing, *TWO_HOURS)
    before = _fingerprint()

    again = _load(landing, START, START + dt.timedelta(hours=1))

    assert again.rows_deleted == again.rows_loaded == 15
    assert _fingerprint() == before


def test_replay_replaces_the_window_so_a_vanished_tenant_leaves_no_stale_rows(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS)
    _load(landing, *TWO_HOURS)
    simulate(str(landing), TENANTS[:2], START, START + dt.timedelta(hours=1))  # t003 gone from hour 00

    _load(landing, START, START + dt.timedelta(hours=1))

    with warehouse.connect() as conn:
        per_hour = dict(conn.execute(
            "select hour_start, count(distinct tenant_id) from raw.usage_snapshots group by 1").fetchall())
    assert per_hour == {START: 2, START + dt.timedelta(hours=1): 3}


def _quarantined(load_id: int | None = None) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(
            "select source_file, source_line, field, reason from raw.usage_quarantine"
            " where %s::bigint is null or load_id = %s order by quarantine_id",
            (load_id, load_id),
        ).fetchall()


def test_malformed_json_line_is_quarantined_naming_file_and_line_and_the_rest_loads(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS)
    bad = _hour_file(landing, START)
    lines = bad.read_text().splitlines()
    lines[6] = lines[6][:-1]  # drop the closing brace of line 7
    bad.write_text("\n".join(lines) + "\n")
    content = bad.read_bytes()

    result = _load(landing, *TWO_HOURS)

    assert result.rows_loaded == 29
    assert _quarantined() == [(str(bad), 7, "record", "record: not valid JSON")]
    assert bad.read_bytes() == content  # the input file stays where it was, untouched
    with warehouse.connect() as conn:
        run = conn.execute(
            "select status, rows_in, rows_loaded, rows_duplicate, rows_quarantined from pipeline.load_runs"
            " order by load_id desc limit 1").fetchone()
        staged = conn.execute("select count(*) from raw.usage_staging").fetchone()[0]
    assert run == ("published", 30, 29, 0, 1)
    assert staged == 0


def test_unparsable_value_is_quarantined_naming_file_line_and_field(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS, fmt="csv")
    bad = _hour_file(landing, START)
    lines = bad.read_text().splitlines()
    cells = lines[4].split(",")
    cells[3] = "12,5".replace(",", ";")
    lines[4] = ",".join(cells)
    bad.write_text("\n".join(lines) + "\n")

    assert _load(landing, *TWO_HOURS).rows_loaded == 29
    assert _quarantined() == [(str(bad), 5, "value", "value: not a number: '12;5'")]


def test_bad_timestamp_is_quarantined_naming_the_field(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS, fmt="jsonl")
    bad = _hour_file(landing, START)
    text = bad.read_text().splitlines()
    text[2] = text[2].replace('"emitted_at":"', '"emitted_at":"yesterday ')
    bad.write_text("\n".join(text) + "\n")

    assert _load(landing, *TWO_HOURS).rows_loaded == 29
    ((file, line, field, reason),) = _quarantined()
    assert (file, line, field) == (str(bad), 3, "emitted_at")
    assert reason.startswith("emitted_at: not an ISO-8601 timestamp: 'yesterday 2026-09-03T")


def test_csv_without_a_required_column_is_rejected_whole_at_its_header(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS, fmt="csv")
    bad = _hour_file(landing, START)
    bad.write_text(bad.read_text().replace(",kind\n", ",sort\n", 1))

    result = _load(landing, *TWO_HOURS)

    assert result.rows_loaded == 15  # the other hour's file
    assert _quarantined() == [(
        str(bad), 1, "file",
        "file: header: missing column(s) kind; unknown column(s) sort"
        " (expected snapshot_id, tenant_id, meter, value, unit, hour, emitted_at, kind)",
    )]


def test_hour_over_the_bad_row_share_fails_the_gate_with_one_line_and_publishes_nothing(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS, fmt="jsonl")
    bad = _hour_file(landing, START)
    lines = bad.read_text().splitlines()
    lines[3] = lines[3].replace('"value":"', '"value":"-', 1)
    bad.write_text("\n".join(lines) + "\n")
    from chargeback.gate import GateFailed

    staged = load.stage(FileSource(str(landing)), *TWO_HOURS)
    with pytest.raises(GateFailed) as err:
        pipeline.gate(staged.load_id, *TWO_HOURS)

    first_line = str(err.value).splitlines()[0]
    assert first_line == (
        f"chargeback quarantine: load {staged.load_id} refused by the gate: 1 of 15 rows of landed hour"
        " 2026-09-03T00:00Z quarantined (6.7% > max_bad_share 1%) — fix the producer or config, then"
        f" chargeback quarantine replay --load {staged.load_id} (or set CHARGEBACK_QUARANTINE_POLICY=warn"
        " to publish the good rows anyway)"
    )
    assert "no landed hour has a bad-row share above max_bad_share" in str(err.value)
    assert _quarantined(staged.load_id) == [(str(bad), 4, "value", "value: negative: -" + _value(lines[3]))]
    assert _fingerprint()[0] == 0
    with warehouse.connect() as conn:
        status = conn.execute("select status from pipeline.load_runs where load_id = %s",
                              (staged.load_id,)).fetchone()[0]
        logged = conn.execute("select line from pipeline.events where kind = 'quarantine' and severity = 'error'"
                              " order by event_id desc limit 1").fetchone()[0]
    assert status == "rejected"
    assert logged == first_line


def _value(jsonl_line: str) -> str:
    import json

    return str(json.loads(jsonl_line)["value"]).lstrip("-")


def test_an_empty_window_loads_nothing_and_is_not_an_error(landing):
    staged = load.stage(FileSource(str(landing)), *TWO_HOURS)
    assert (staged.files, staged.rows) == (0, 0)
    assert load.publish(staged.load_id).rows_loaded == 0


def test_window_bounds_must_be_whole_utc_hours(landing):
    with pytest.raises(ValueError, match="whole hours"):
        load.stage(FileSource(str(landing)), START + dt.timedelta(minutes=30), START + dt.timedelta(hours=2))


def test_any_fsspec_landing_location_loads_like_a_local_directory():
    landing = "memory://chargeback-landing"
    simulate(landing, TENANTS, *TWO_HOURS)

    staged = load.stage(FileSource(landing), *TWO_HOURS)
    result = load.publish(staged.load_id)

    assert (staged.files, result.rows_loaded) == (2, 30)
    with warehouse.connect() as conn:
        files = {r[0] for r in conn.execute("select distinct source_file from raw.usage_snapshots")}
    assert files == {f"memory:///chargeback-landing/usage/2026-09-03/{h:02d}/simulated-42.{ext}"
                     for h, ext in ((0, "jsonl"), (1, "csv"))}
