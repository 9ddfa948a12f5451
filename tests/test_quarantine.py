"""Quarantine: every bad row is kept with its file, line, field and reason; nothing is lost.

Each landed row is loaded, counted as a duplicate or quarantined — per file and per load,
rows_in = rows_loaded + rows_duplicate + rows_quarantined — and a file that cannot be
parsed at all is rejected whole and left where it landed. The gate's policy decides
whether quarantined rows fail the run; ``chargeback quarantine replay`` brings them back
once the cause is fixed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback import cli
from chargeback.engine import configuration
from chargeback.ingest import load
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import steps
from chargeback.platform import warehouse
from snapshots import FIELDS, snapshot_row

pytestmark = [pytest.mark.warehouse, pytest.mark.usefixtures("empty_raw")]

ROOT = Path(__file__).resolve().parents[1]
H = dt.datetime(2026, 9, 7, 10, tzinfo=dt.UTC)
H1 = H + dt.timedelta(hours=1)


def snapshot(snapshot_id: str, **overrides) -> dict:
    return snapshot_row(snapshot_id, H, **overrides)


def land(landing: Path, name: str, lines: list, folder: dt.datetime = H) -> Path:
    """Write ``lines`` (dicts as JSON, strings verbatim; a CSV for ``*.csv``) into ``folder``."""
    path = landing / "usage" / f"{folder:%Y-%m-%d}" / f"{folder:%H}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".csv"):
        text = ",".join(FIELDS) + "\n" + "".join(
            (",".join(str(r[f]) for f in FIELDS) if isinstance(r, dict) else r) + "\n" for r in lines)
    else:
        text = "".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in lines)
    path.write_text(text)
    return path


def stage_and_publish(landing: Path, start: dt.datetime = H, end: dt.datetime = H1) -> load.StageResult:
    staged = load.stage(FileSource(str(landing)), start, end)
    load.publish(staged.load_id)
    return staged


def quarantined(load_id: int) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(
            "select source_file, source_line, field, reason from raw.usage_quarantine where load_id = %s"
            " order by quarantine_id", (load_id,)).fetchall()


def loaded_ids() -> list[str]:
    with warehouse.connect() as conn:
        return [r[0] for r in conn.execute("select snapshot_id from raw.usage_snapshots order by 1")]


def accounting(load_id: int) -> dict[str, tuple]:
    with warehouse.connect() as conn:
        return {Path(r[0]).name: r[1:] for r in conn.execute(
            "select file_url, rows_in, rows_loaded, rows_duplicate, rows_quarantined, status"
            " from pipeline.load_files where load_id = %s", (load_id,))}


def events(kind: str) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute("select severity, line from pipeline.events where kind = %s order by event_id",
                            (kind,)).fetchall()


BAD_ROWS = [
    ("not valid JSON", '{"snapshot_id": "bad", "value":', "record", "record: not valid JSON"),
    ("not an object", "[1, 2]", "record", "record: not a JSON object but a JSON array"),
    ("missing field", {k: v for k, v in snapshot("bad").items() if k != "tenant_id"}, "tenant_id",
     "tenant_id: missing"),
    ("value not a number", snapshot("bad", value="abc"), "value", "value: not a number: 'abc'"),
    ("value of a wrong type", snapshot("bad", value=True), "value", "value: not a number: 'true'"),
    ("negative value", snapshot("bad", value="-3.5"), "value", "value: negative: -3.5"),
    ("NaN", snapshot("bad", value="NaN"), "value", "value: not a finite number: NaN"),
    ("Infinity", snapshot("bad", value="Infinity"), "value", "value: not a finite number: Infinity"),
    ("unparsable hour", snapshot("bad", hour="2026-13-45T00:00:00Z"), "hour",
     "hour: not an ISO-8601 timestamp: '2026-13-45T00:00:00Z'"),
    ("unparsable emitted_at", snapshot("bad", emitted_at="soon"), "emitted_at",
     "emitted_at: not an ISO-8601 timestamp: 'soon'"),
    ("hour not whole", snapshot("bad", hour="2026-09-07T10:30:00Z"), "hour",
     "hour: not the start of an hour: 2026-09-07T10:30:00Z"),
    ("hour after the window", snapshot("bad", hour="2026-09-07T11:00:00Z"), "hour",
     "hour: after the load window (it ends 2026-09-07T11:00Z)"),
    ("unknown tenant", snapshot("bad", tenant_id="t999"), "tenant_id",
     "tenant_id: unknown tenant 't999' (not in config.tenants)"),
    ("unknown meter", snapshot("bad", meter="sold_gb"), "meter",
     "meter: unknown meter 'sold_gb' (not in config.meters)"),
    ("unit not the meter's", snapshot("bad", unit="MB"), "unit",
     "unit: 'MB' is not the unit of meter ingested_gb (GB)"),
    ("kind not the meter's", snapshot("bad", kind="gauge"), "kind",
     "kind: 'gauge' is not the kind of meter ingested_gb (counter)"),
    ("object where text expected", snapshot("bad", tenant_id={"id": "t001"}), "tenant_id",
     "tenant_id: expected text, got a JSON object"),
    ("array where text expected", snapshot("bad", meter=["ingested_gb"]), "meter",
     "meter: expected text, got a JSON array"),
]


@pytest.mark.parametrize(("case", "bad", "field", "reason"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_row_is_quarantined_with_file_line_field_and_reason_and_good_rows_load(landing, case, bad, field,
                                                                                   reason):
    path = land(landing, "mixed.jsonl", [snapshot("good-1"), bad, snapshot("good-2", tenant_id="t002")])

    staged = stage_and_publish(landing)

    assert quarantined(staged.load_id) == [(str(path), 2, field, reason)]
    assert loaded_ids() == ["good-1", "good-2"]
    assert accounting(staged.load_id) == {"mixed.jsonl": (3, 2, 0, 1, "loaded")}


@pytest.mark.parametrize(("bad", "field", "reason"), [
    ("bad,t001,ingested_gb,12;5,GB,2026-09-07T10:00:00Z,2026-09-07T10:59:00Z,counter", "value",
     "value: not a number: '12;5'"),
    ("bad,t001,ingested_gb,,GB,2026-09-07T10:00:00Z,2026-09-07T10:59:00Z,counter", "value", "value: missing"),
    ("bad,t404,ingested_gb,1,GB,2026-09-07T10:00:00Z,2026-09-07T10:59:00Z,counter", "tenant_id",
     "tenant_id: unknown tenant 't404' (not in config.tenants)"),
], ids=["not a number", "missing", "unknown tenant"])
def test_bad_csv_row_is_quarantined_at_its_line_counting_the_header(landing, bad, field, reason):
    path = land(landing, "mixed.csv", [snapshot("good-1"), bad])

    staged = stage_and_publish(landing)

    assert quarantined(staged.load_id) == [(str(path), 3, field, reason)]
    assert loaded_ids() == ["good-1"]


def test_trailing_blank_lines_of_a_csv_file_are_not_rows(landing):
    path = land(landing, "a.csv", [snapshot("s1"), snapshot("s2", value="1")])
    path.write_text(path.read_text() + "\n\r\n  \n")

    staged = stage_and_publish(landing)

    assert loaded_ids() == ["s1", "s2"]
    assert accounting(staged.load_id) == {"a.csv": (2, 2, 0, 0, "loaded")}


def test_a_csv_line_with_too_many_cells_is_quarantined_and_the_rest_of_the_file_loads(landing):
    path = land(landing, "a.csv", [
        snapshot("s1"),
        "s2,t001,ingested_gb,1,5,GB,2026-09-07T10:00:00Z,2026-09-07T10:59:00Z,counter",  # 1,5: a decimal comma
        "",
        snapshot("s3", value="3"),
        "s4,t001",
    ])

    staged = stage_and_publish(landing)

    expected = f"expected 8 ({','.join(FIELDS)})"
    assert quarantined(staged.load_id) == [
        (str(path), 3, "record", f"record: 9 cell(s), {expected}"),
        (str(path), 6, "record", f"record: 2 cell(s), {expected}"),
    ]
    assert loaded_ids() == ["s1", "s3"]
    assert accounting(staged.load_id) == {"a.csv": (4, 2, 0, 2, "loaded")}


def test_a_csv_file_with_only_its_header_is_an_empty_hour(landing):
    land(landing, "a.csv", []).write_text(",".join(FIELDS) + "\n\n")

    staged = stage_and_publish(landing)

    assert accounting(staged.load_id) == {"a.csv": (0, 0, 0, 0, "loaded")}


def test_same_id_with_different_value_is_quarantined_naming_the_first_copy(landing):
    first = land(landing, "a.jsonl", [snapshot("s0", value="1"), snapshot("s1", value="1")])
    second = land(landing, "b.jsonl", [snapshot("s1", value="1"), snapshot("s1", value="4")])

    staged = stage_and_publish(landing)

    assert quarantined(staged.load_id) == [(
        str(second), 2, "snapshot_id",
        f"snapshot_id: 's1' repeats {first}:2 with different content (value 1 there, 4 here)",
    )]
    with warehouse.connect() as conn:
        assert conn.execute("select value, source_file, source_line from raw.usage_snapshots"
                            " where snapshot_id = 's1'").fetchone() == (Decimal("1"), str(first), 2)
    assert accounting(staged.load_id) == {"a.jsonl": (2, 2, 0, 0, "loaded"), "b.jsonl": (2, 0, 1, 1, "loaded")}


def test_same_id_with_different_value_as_a_published_row_of_another_hour_is_quarantined(landing):
    first = land(landing, "a.jsonl", [snapshot("s1")])
    stage_and_publish(landing)
    land(landing, "b.jsonl", [snapshot("s1", value="3")], folder=H1)

    staged = stage_and_publish(landing, H1, H1 + dt.timedelta(hours=1))

    assert [r[3] for r in quarantined(staged.load_id)] == [
        f"snapshot_id: 's1' already published from {first}:1 with different content (value 2.5 there, 3 here)"]
    assert staged.rows_quarantined == 1


def test_rows_in_equal_loaded_plus_duplicates_plus_quarantined(landing):
    land(landing, "a.jsonl", [snapshot("s1"), snapshot("s1"), "not json", "", snapshot("s2", value="-1"),
                              snapshot("s3", tenant_id="t002")])
    land(landing, "b.csv", [snapshot("s1"), snapshot("s4", meter="stored_gb", kind="gauge"),
                            snapshot("s3", tenant_id="t002", value="9")])
    land(landing, "c.jsonl", ["garbage", "more garbage"])

    staged = stage_and_publish(landing)

    # a: s1 loaded, s1 again duplicate, "not json" and s2 quarantined, the blank line is no row, s3 loaded
    assert accounting(staged.load_id) == {
        "a.jsonl": (5, 2, 1, 2, "loaded"),
        "b.csv": (3, 1, 1, 1, "loaded"),
        "c.jsonl": (2, 0, 0, 2, "rejected"),
    }
    with warehouse.connect() as conn:
        run = conn.execute("select rows_in, rows_loaded, rows_duplicate, rows_quarantined, files_rejected, status"
                           " from pipeline.load_runs where load_id = %s", (staged.load_id,)).fetchone()
        in_quarantine = conn.execute("select count(*) from raw.usage_quarantine where load_id = %s",
                                     (staged.load_id,)).fetchone()[0]
    assert run == (10, 3, 2, 5, 1, "published")
    assert (staged.rows_in, staged.rows, staged.rows_duplicate, staged.rows_quarantined) == (10, 3, 2, 5)
    assert in_quarantine == 4  # three rows, and one row for the file rejected whole
    assert loaded_ids() == ["s1", "s3", "s4"]


def test_unparsable_file_is_rejected_whole_and_kept_in_place(landing):
    good = land(landing, "good.jsonl", [snapshot("s1")])
    not_utf8 = landing / "usage/2026-09-07/10/latin1.jsonl"
    latin1 = json.dumps(snapshot("s2", tenant_id="t\u00e9"), ensure_ascii=False).encode("latin-1")
    not_utf8.write_bytes(latin1 + b"\n" + json.dumps(snapshot("s5")).encode() + b"\n")
    garbage = land(landing, "garbage.jsonl", ["<html>", "<body>oops</body>", "</html>"])
    headless = land(landing, "headless.csv", [])
    headless.write_text("s3,t001,ingested_gb,1,GB,2026-09-07T10:00:00Z,2026-09-07T10:59:00Z,counter\n")
    contents = {p: p.read_bytes() for p in (good, not_utf8, garbage, headless)}

    staged = load.stage(FileSource(str(landing)), H, H1)

    assert quarantined(staged.load_id) == [
        (str(garbage), 1, "file", "file: no line is a JSON object (3 line(s)); not a JSON Lines file"),
        (str(headless), 1, "file",
         "file: no header (the first line names none of snapshot_id, tenant_id, meter, value, unit, hour,"
         " emitted_at, kind); a CSV file starts with a header"),
        # one undecodable line is quarantined alone: the file's other line loads
        (str(not_utf8), 1, "record", f"record: not UTF-8 text (byte 0xe9 at column {latin1.index(0xe9) + 1})"),
    ]
    assert {p: p.read_bytes() for p in contents} == contents  # all still in landing, untouched
    assert staged.files_rejected == 2
    assert (staged.rows_in, staged.rows, staged.rows_quarantined) == (7, 2, 5)  # 1 + 2 + 3 + 1 lines
    rejected_lines = [line for _, line in events("rejected_file") if f"load {staged.load_id} " in line]
    assert rejected_lines[0] == (
        f"chargeback rejected_file: file of load {staged.load_id} rejected whole at {garbage}:1: no line is a JSON"
        " object (3 line(s)); not a JSON Lines file — fix or replace the file (it stays in landing), then"
        f" chargeback quarantine replay --file {garbage}"
    )
    assert len(rejected_lines) == 2
    # under the default policy each bad shared file is held back, alone: good.jsonl publishes
    steps.gate(staged.load_id, H, H1)
    load.publish(staged.load_id)
    assert loaded_ids() == ["s1"]
    with warehouse.connect() as conn:
        holds = conn.execute("select holder, holder_kind from pipeline.load_holds where load_id = %s"
                             " order by holder", (staged.load_id,)).fetchall()
    assert holds == sorted([(str(garbage), "file"), (str(headless), "file"), (str(not_utf8), "file")])


def test_one_summary_line_per_load_for_its_quarantine(landing):
    path = land(landing, "a.jsonl", [snapshot("s1"), snapshot("s2", value="x"), snapshot("s3", value="-1"),
                                     snapshot("s4", tenant_id="t999")])

    staged = stage_and_publish(landing)

    lines = [line for _, line in events("quarantine") if f"of load {staged.load_id} " in line]
    assert lines == [
        f"chargeback quarantine: 3 row(s) of load {staged.load_id} at {path}:2 (+2 more): value: not a number: 'x'"
        f" (and 1 other field(s); see chargeback quarantine list --load {staged.load_id}) — fix the producer or"
        f" config, then chargeback quarantine replay --load {staged.load_id}"
    ]


def test_under_policy_warn_quarantined_rows_do_not_fail_the_gate(landing, monkeypatch):
    land(landing, "a.jsonl", [snapshot("s1"), snapshot("s2", value="x")])  # 50% bad
    land(landing, "garbage.jsonl", ["nope"])
    monkeypatch.setenv("CHARGEBACK_QUARANTINE_POLICY", "warn")

    staged = load.stage(FileSource(str(landing)), H, H1)
    steps.gate(staged.load_id, H, H1)
    load.publish(staged.load_id)

    assert loaded_ids() == ["s1"]
    severities = [s for s, line in events("quarantine") + events("rejected_file")
                  if f"load {staged.load_id} " in line]
    assert severities == ["warning", "warning"]


def test_under_policy_fail_an_hour_under_the_share_passes(landing, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_MAX_BAD_SHARE", "0.5")
    land(landing, "a.jsonl", [snapshot("s1"), snapshot("s2", value="x")])  # 50%: not above 0.5

    staged = load.stage(FileSource(str(landing)), H, H1)
    steps.gate(staged.load_id, H, H1)

    monkeypatch.setenv("CHARGEBACK_MAX_BAD_SHARE", "0.49")
    steps.gate(staged.load_id, H, H1)  # the tenant is held back; the gate itself passes
    with warehouse.connect() as conn:
        holds = conn.execute("select holder, holder_kind, reason from pipeline.load_holds where load_id = %s",
                             (staged.load_id,)).fetchall()
    assert holds == [("t001", "tenant",
                      "1 of 2 rows of landed hour 2026-09-07T10:00Z quarantined (50.0% > max_bad_share 49%)")]


@pytest.fixture
def config_dir(tmp_path, monkeypatch, settings):
    """A copy of config/ the test may change. After: the shipped configuration again, and the
    marts of the test's hour rebuilt without the tenant it added (later tests bill that month)."""
    from chargeback.engine import transform

    copy = tmp_path / "config"
    shutil.copytree(settings.config_dir, copy)
    monkeypatch.setenv("CHARGEBACK_CONFIG_DIR", str(copy))
    yield copy
    configuration.load(settings.config_dir, settings)
    with warehouse.connect() as conn:
        conn.execute("delete from raw.usage_snapshots where tenant_id = 't999'")
    transform.build(H, H1)


def test_quarantine_replay_loads_rows_after_the_tenant_is_added(landing, config_dir, monkeypatch, capsys):
    path = land(landing, "a.jsonl", [snapshot("s1"), snapshot("s2", tenant_id="t002", value="1"),
                                     snapshot("s3", tenant_id="t999", value="4.75")])
    monkeypatch.setenv("CHARGEBACK_QUARANTINE_POLICY", "warn")
    first = steps.load_window(H, H1, FileSource(str(landing)))
    unknown = "tenant_id: unknown tenant 't999' (not in config.tenants)"
    assert quarantined(first) == [(str(path), 3, "tenant_id", unknown)]

    assert cli.main(["quarantine", "list", "--status", "open", "--load", str(first)]) == 0
    assert capsys.readouterr().out == (
        f"{path}:3 tenant_id {unknown} [open]\n")

    tenants = config_dir / "tenants.yml"
    tenants.write_text(tenants.read_text().replace("tenants:\n", (
        "tenants:\n"
        "  - tenant_id: t999\n"
        "    name: Initech Labs new-prod\n"
        "    organisation: Initech\n"
        "    business_unit: Labs\n"
        "    team: new\n"
        "    price_book: enterprise\n"
    ), 1))
    assert cli.main(["quarantine", "replay", "--load", str(first)]) == 0

    out = capsys.readouterr().out  # dbt's own output, then the summary line
    assert "\nreplayed 1 landed hour(s) as load(s) " in out
    assert ": 3 row(s) loaded, 0 still quarantined; marts rebuilt for 2026-09-07T10:00Z–11:00Z" in out
    assert loaded_ids() == ["s1", "s2", "s3"]
    with warehouse.connect() as conn:
        status = conn.execute("select status, resolved_at is not null from raw.usage_quarantine"
                              " where load_id = %s", (first,)).fetchall()
        mart = conn.execute("select quantity from marts.fct_usage_hourly where tenant_id = 't999'"
                            " and meter = 'ingested_gb' and hour_start = %s", (H,)).fetchall()
    assert status == [("replayed", True)]
    assert mart == [(Decimal("4.75"),)]
    assert cli.main(["quarantine", "list", "--status", "open"]) == 0
    assert capsys.readouterr().out == ""


def test_replay_of_a_row_still_bad_supersedes_the_old_row(landing):
    land(landing, "a.jsonl", [snapshot("s1"), snapshot("s2", value="x")])
    first = stage_and_publish(landing)

    again = stage_and_publish(landing)

    with warehouse.connect() as conn:
        rows = conn.execute("select load_id, source_line, status from raw.usage_quarantine order by quarantine_id"
                            ).fetchall()
    assert rows == [(first.load_id, 2, "superseded"), (again.load_id, 2, "open")]


def test_a_rejected_file_fixed_in_place_is_loaded_by_replaying_it(landing):
    from chargeback.ingest import quarantine

    land(landing, "good.jsonl", [snapshot("s1")])
    bad = land(landing, "b.csv", [])
    bad.write_text("id,tenant\n")  # a producer's wrong header
    first = stage_and_publish(landing)
    assert [r[2] for r in quarantined(first.load_id)] == ["file"]

    land(landing, "b.csv", [snapshot("s2", value="1")])  # the producer re-sent the file
    result = steps.replay_quarantine(file=str(bad), rebuild_marts=False)

    assert (result.windows, result.rows_loaded, result.still_open) == (((H, H1),), 2, 0)
    assert loaded_ids() == ["s1", "s2"]
    assert [(r.field, r.status) for r in quarantine.list_rows(load_id=first.load_id)] == [("file", "replayed")]
    assert steps.replay_quarantine(file=str(bad), rebuild_marts=False).windows == ()  # nothing open: nothing to do
