"""Extract and load: files land in raw.usage_snapshots exactly once, or not at all."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.ingest import load
from chargeback.ingest.simulate import simulate
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import steps
from chargeback.platform import warehouse

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
        "file: header: missing column(s) kind"
        " (expected snapshot_id, tenant_id, meter, value, unit, hour, emitted_at, kind)",
    )]


def test_hour_over_the_bad_row_share_holds_back_only_its_tenant_and_the_others_publish(landing):
    simulate(str(landing), TENANTS, *TWO_HOURS, fmt="jsonl")
    _load(landing, *TWO_HOURS)  # a clean load: 3 tenants x 5 meters x 2 hours
    bad = _hour_file(landing, START)
    lines = bad.read_text().splitlines()
    held = json.loads(lines[3])["tenant_id"]
    lines[3] = lines[3].replace('"value":"', '"value":"-', 1)
    bad.write_text("\n".join(lines) + "\n")

    staged = load.stage(FileSource(str(landing)), *TWO_HOURS)
    steps.gate(staged.load_id, *TWO_HOURS)  # passes: only the tenant is held back
    load.publish(staged.load_id)

    with warehouse.connect() as conn:
        by_tenant = dict(conn.execute(
            "select tenant_id, string_agg(distinct load_id::text, ',') from raw.usage_snapshots group by 1"))
        holds = conn.execute("select holder, holder_kind, reason from pipeline.load_holds where load_id = %s",
                             (staged.load_id,)).fetchall()
        line = conn.execute("select line from pipeline.events where line like %s",
                            (f"%held back in load {staged.load_id}%",)).fetchone()[0]
        run = conn.execute("select status, rows_in, rows_loaded, rows_duplicate, rows_quarantined"
                           " from pipeline.load_runs where load_id = %s", (staged.load_id,)).fetchone()
    reason = "1 of 5 rows of landed hour 2026-09-03T00:00Z quarantined (20.0% > max_bad_share 1%)"
    assert holds == [(held, "tenant", reason)]
    assert line == (f"chargeback quarantine: tenant {held} held back in load {staged.load_id} at {held}: {reason};"
                    " nothing of it was published from this load, every other producer's rows were"
                    f" — fix the producer or config, then chargeback quarantine replay --load {staged.load_id}")
    # the held tenant keeps what the first load published for the held hour; the rest is the new load's
    assert by_tenant == {t: f"{staged.load_id - 1},{staged.load_id}" if t == held else str(staged.load_id)
                         for t in TENANTS}
    assert _fingerprint()[0] == 30
    # the held tenant's rows of the landed hour are quarantined: 1 bad + 4 held back; its other hour publishes
    assert run == ("published", 30, 25, 0, 5)
    assert [r[2] for r in _quarantined(staged.load_id)].count("policy") == 4

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


# --------------------------------------------------------------------------- duplicates, landed hours

H = dt.datetime(2026, 9, 5, 10, tzinfo=dt.UTC)
H1 = H + dt.timedelta(hours=1)


def snapshot(snapshot_id: str, hour: dt.datetime = H, **overrides) -> dict:
    row = {"snapshot_id": snapshot_id, "tenant_id": "t001", "meter": "ingested_gb", "value": "2.5", "unit": "GB",
           "hour": f"{hour:%Y-%m-%dT%H:%M:%SZ}", "emitted_at": f"{hour + dt.timedelta(minutes=59):%Y-%m-%dT%H:%M:%SZ}",
           "kind": "counter"}
    row.update(overrides)
    return row


def write_jsonl(landing: Path, folder: dt.datetime, name: str, rows: list[dict]) -> Path:
    import json

    path = landing / "usage" / f"{folder:%Y-%m-%d}" / f"{folder:%H}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _snapshots() -> dict[str, tuple]:
    with warehouse.connect() as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "select snapshot_id, value, source_file, source_line, landed_hour, hour_start, learned_at"
            " from raw.usage_snapshots")}


def _file_accounting(load_id: int) -> dict[str, tuple]:
    with warehouse.connect() as conn:
        return {Path(r[0]).name: r[1:] for r in conn.execute(
            "select file_url, rows_in, rows_loaded, rows_duplicate, rows_quarantined, status"
            " from pipeline.load_files where load_id = %s", (load_id,))}


def test_thousand_copies_of_a_snapshot_count_once(landing):
    from chargeback.engine import transform

    others = [snapshot("other-1", meter="stored_gb", kind="gauge", value="7"),
              snapshot("other-2", tenant_id="t002", value="1.25")]
    path = write_jsonl(landing, H, "copies.jsonl", [others[0]] + [snapshot("copied")] * 1000 + [others[1]])

    staged = load.stage(FileSource(str(landing)), H, H1)
    result = load.publish(staged.load_id)

    assert (staged.rows_in, staged.rows, staged.rows_duplicate, staged.rows_quarantined) == (1002, 3, 999, 0)
    assert result.rows_loaded == 3
    assert _snapshots()["copied"][:3] == (Decimal("2.5"), str(path), 2)  # the first copy, at line 2
    transform.build(H, H1)
    with warehouse.connect() as conn:
        marts = conn.execute(
            "select tenant_id, meter, quantity, snapshot_count from marts.fct_usage_hourly"
            " where hour_start = %s order by 1, 2", (H,)).fetchall()
    assert marts == [("t001", "ingested_gb", Decimal("2.5"), 1), ("t001", "stored_gb", Decimal("7"), 1),
                     ("t002", "ingested_gb", Decimal("1.25"), 1)]


def test_identical_copies_across_files_hours_and_replays_count_once(landing):
    write_jsonl(landing, H, "a.jsonl", [snapshot("s1"), snapshot("s2", value="1")])
    write_jsonl(landing, H, "b.jsonl", [snapshot("s1"), snapshot("s3", value="3")])
    # a producer re-sent s2 (same content) with the next hour's file
    write_jsonl(landing, H1, "c.jsonl", [snapshot("s2", value="1"), snapshot("s4", hour=H1)])

    first = load.stage(FileSource(str(landing)), H, H1)
    load.publish(first.load_id)
    second = load.stage(FileSource(str(landing)), H1, H1 + dt.timedelta(hours=1))
    assert (second.rows, second.rows_duplicate) == (1, 1)  # known before the gate runs
    load.publish(second.load_id)
    before = _fingerprint()
    replay = load.stage(FileSource(str(landing)), H, H1 + dt.timedelta(hours=1))
    load.publish(replay.load_id)

    assert sorted(_snapshots()) == ["s1", "s2", "s3", "s4"]
    assert _fingerprint() == before
    assert _file_accounting(first.load_id) == {"a.jsonl": (2, 2, 0, 0, "loaded"), "b.jsonl": (2, 1, 1, 0, "loaded")}
    assert _file_accounting(second.load_id) == {"c.jsonl": (2, 1, 1, 0, "loaded")}
    assert (replay.rows_in, replay.rows, replay.rows_duplicate, replay.rows_quarantined) == (6, 4, 2, 0)


def test_learned_at_is_when_the_file_was_first_seen_and_survives_replays(landing):
    write_jsonl(landing, H, "a.jsonl", [snapshot("s1")])
    first = load.stage(FileSource(str(landing)), H, H1)
    load.publish(first.load_id)
    learned = _snapshots()["s1"][5]
    with warehouse.connect() as conn:
        first_seen = conn.execute("select first_seen_at from pipeline.load_files where load_id = %s",
                                  (first.load_id,)).fetchone()[0]

    again = load.stage(FileSource(str(landing)), H, H1)
    load.publish(again.load_id)

    assert learned == first_seen
    with warehouse.connect() as conn:
        seen_again = conn.execute("select first_seen_at from pipeline.load_files where load_id = %s",
                                  (again.load_id,)).fetchone()[0]
        loaded_at = conn.execute("select loaded_at from raw.usage_snapshots").fetchone()[0]
    assert seen_again == first_seen
    assert loaded_at > learned  # loaded again, but Chargeback knew of it since the first load
    assert _snapshots()["s1"][5] == learned


def test_late_snapshot_in_the_current_folder_survives_the_old_hours_replay(landing):
    write_jsonl(landing, H, "a.jsonl", [snapshot("on-time")])
    write_jsonl(landing, H1, "b.jsonl", [snapshot("late", hour=H), snapshot("current", hour=H1)])
    load.publish(load.stage(FileSource(str(landing)), H, H1).load_id)
    late = load.publish(load.stage(FileSource(str(landing)), H1, H1 + dt.timedelta(hours=1)).load_id)
    assert (late.usage_start, late.usage_end) == (H, H1 + dt.timedelta(hours=1))

    replayed = load.publish(load.stage(FileSource(str(landing)), H, H1).load_id)

    rows = _snapshots()
    assert sorted(rows) == ["current", "late", "on-time"]
    assert (rows["late"][3], rows["late"][4]) == (H1, H)  # landed in the 11:00 folder, usage of 10:00
    assert (replayed.rows_deleted, replayed.rows_loaded) == (1, 1)
    assert (replayed.usage_start, replayed.usage_end) == (H, H1)


def test_publish_reports_no_usage_hours_for_an_empty_window(landing):
    result = load.publish(load.stage(FileSource(str(landing)), H, H1).load_id)
    assert (result.rows_deleted, result.rows_loaded, result.usage_start, result.usage_end) == (0, 0, None, None)


def test_a_copy_published_meanwhile_from_another_hour_counts_once(landing):
    """Stage saw no copy; another load published one before this one's publish: still once."""
    write_jsonl(landing, H, "a.jsonl", [snapshot("s1"), snapshot("s2", value="1")])
    write_jsonl(landing, H1, "b.jsonl", [snapshot("s1"), snapshot("s2", value="9")])
    later = load.stage(FileSource(str(landing)), H1, H1 + dt.timedelta(hours=1))
    assert later.rows == 2
    load.publish(load.stage(FileSource(str(landing)), H, H1).load_id)

    result = load.publish(later.load_id)

    assert result.rows_loaded == 0
    assert _file_accounting(later.load_id) == {"b.jsonl": (2, 0, 1, 1, "loaded")}
    (reason,) = [r[3] for r in _quarantined(later.load_id)]
    assert reason == (f"snapshot_id: 's2' already published from {landing}/usage/2026-09-05/10/a.jsonl:2"
                      " with different content (value 1 there, 9 here)")
    with warehouse.connect() as conn:
        run = conn.execute("select rows_in, rows_loaded, rows_duplicate, rows_quarantined from pipeline.load_runs"
                           " where load_id = %s", (later.load_id,)).fetchone()
    assert run == (2, 0, 1, 1)


def test_upgrade_backfills_landed_hour_and_learned_at_of_published_rows(settings):
    """A warehouse of the previous release: usage_snapshots without landed_hour/learned_at."""
    import dataclasses

    name = f"{settings.database}_upgrade"
    old = dataclasses.replace(settings, database=name)
    warehouse.drop_database(name, settings)
    try:
        with warehouse.connect(old, admin=True) as conn:  # the owner, as that release's schema was
            conn.execute("""
                create schema raw;
                create table raw.usage_snapshots (
                    snapshot_id text primary key, tenant_id text not null, meter text not null,
                    value numeric not null, unit text not null, hour_start timestamptz not null,
                    emitted_at timestamptz not null, kind text not null, source_file text not null,
                    source_line integer not null, load_id bigint not null,
                    loaded_at timestamptz not null default now());
                insert into raw.usage_snapshots values ('old-1', 't001', 'ingested_gb', 1, 'GB',
                    '2026-08-01T10:00Z', '2026-08-01T10:59Z', 'counter', 'f.jsonl', 1, 1, '2026-08-01T11:05Z');
                create table raw.usage_staging (
                    load_id bigint not null, snapshot_id text, tenant_id text, meter text, value numeric,
                    unit text, hour_start timestamptz, emitted_at timestamptz, kind text,
                    source_file text not null, source_line integer not null);
            """)

        warehouse.ensure_schema(old)
        warehouse.ensure_schema(old)  # idempotent

        with warehouse.connect(old) as conn:
            row = conn.execute("select landed_hour, learned_at, source, labels from raw.usage_snapshots").fetchone()
            nullable = conn.execute(
                "select is_nullable from information_schema.columns where table_schema = 'raw'"
                " and table_name = 'usage_snapshots' and column_name = 'learned_at'").fetchone()[0]
            staging = conn.execute("select relpersistence from pg_class where oid = 'raw.usage_staging'::regclass"
                                   ).fetchone()[0]
        assert staging == "u"  # that release's logged staging table, unlogged now
        assert row == (dt.datetime(2026, 8, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 8, 1, 11, 5, tzinfo=dt.UTC),
                       "(none)", {})  # issue 11: a row without a source or labels
        assert nullable == "NO"
    finally:
        warehouse.drop_database(name, settings)
