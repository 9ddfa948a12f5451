"""The gate: Great Expectations on staged snapshots, against a real PostgreSQL.

Rows are staged straight into ``raw.usage_staging`` (the loader's contract), each test
under a load run of its own. Run with ``CHARGEBACK_TEST_DATABASE=cb_test_gx`` to keep out
of colleagues' databases.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.ingest import gate
from chargeback.platform import warehouse

pytestmark = pytest.mark.warehouse

ROOT = Path(__file__).resolve().parents[1]
START = dt.datetime(2026, 10, 1, 13, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=1)
FILE = "landing/usage/2026-10-01/13/part-0.jsonl"
METERS = {  # as config/meters.yml defines them
    "ingested_gb": ("GB", "counter"),
    "stored_gb": ("GB", "gauge"),
    "scanned_gb": ("GB", "counter"),
    "query_cpu_seconds": ("s", "counter"),
    "alerts_fired": ("alerts", "counter"),
}
COLUMNS = (
    "snapshot_id",
    "tenant_id",
    "meter",
    "value",
    "unit",
    "hour_start",
    "emitted_at",
    "kind",
    "source_file",
    "source_line",
)


def snapshot(line: int, **overrides) -> dict:
    """A valid staged snapshot at ``FILE:line``; ``overrides`` break it."""
    meter = overrides.get("meter", "ingested_gb")
    unit, kind = METERS.get(meter, ("GB", "counter"))
    row = {
        "snapshot_id": f"snap-{line}",
        "tenant_id": "t001",
        "meter": meter,
        "value": Decimal("1.5"),
        "unit": unit,
        "hour_start": START,
        "emitted_at": START + dt.timedelta(minutes=59),
        "kind": kind,
        "source_file": FILE,
        "source_line": line,
    }
    row.update(overrides)
    return row


def new_load(start: dt.datetime = START, end: dt.datetime = END) -> int:
    with warehouse.connect() as conn:
        (load_id,) = conn.execute(
            "insert into pipeline.load_runs (source, window_start, window_end) values ('test', %s, %s)"
            " returning load_id",
            (start, end),
        ).fetchone()
    return load_id


def stage(rows: list[dict], load_id: int | None = None) -> int:
    """Stage ``rows`` under a new load run (or ``load_id``); returns the load id."""
    load_id = load_id or new_load()
    with warehouse.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            f"insert into raw.usage_staging (load_id, {', '.join(COLUMNS)})"
            f" values (%s, {', '.join(['%s'] * len(COLUMNS))})",
            [(load_id, *(r[c] for c in COLUMNS)) for r in rows],
        )
    return load_id


def clean_rows(n: int) -> list[dict]:
    """``n`` valid snapshots spread over tenants and meters, as a real hour looks."""
    meters = list(METERS)
    return [
        snapshot(
            i + 1,
            snapshot_id=f"ok-{i}",
            tenant_id=f"t{i % 50 + 1:03d}",
            meter=meters[i % len(meters)],
            value=Decimal(i % 997) / 10,
        )
        for i in range(n)
    ]


def validation_row(validation_id: int) -> dict:
    with warehouse.connect() as conn:
        cur = conn.execute("select * from pipeline.validations where validation_id = %s", (validation_id,))
        names = [d.name for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def rejected(rows: list[dict]) -> gate.GateFailed:
    load_id = stage(rows)
    with pytest.raises(gate.GateFailed) as info:
        gate.validate_staged(load_id, START, END)
    return info.value


# --------------------------------------------------------------------------- passing loads


def test_passing_gate_is_recorded_in_pipeline_validations():
    load_id = stage(clean_rows(250))
    result = gate.validate_staged(load_id, START, END)

    assert result.success
    assert result.row_count == 250
    assert result.failures == ()
    row = validation_row(result.validation_id)
    assert row["suite"] == "raw_usage_staging"
    assert row["table_name"] == "raw.usage_staging"
    assert row["load_id"] == load_id
    assert (row["window_start"], row["window_end"]) == (START, END)
    assert row["success"] is True
    assert row["evaluated_expectations"] == result.evaluated_expectations >= 15
    assert row["failed_expectations"] == 0
    assert row["summary"] == f"passed: {result.evaluated_expectations} expectation(s) on 250 row(s)"
    assert row["result"]["success"] is True
    assert row["result"]["suite_name"] == "raw_usage_staging"
    assert len(row["result"]["results"]) == result.evaluated_expectations


def test_empty_load_passes_and_is_recorded():
    """A quiet hour is not an error — but the run is still on record."""
    load_id = new_load()
    result = gate.validate_staged(load_id, START, END)

    assert result.success
    assert not result.row_count
    row = validation_row(result.validation_id)
    assert row["success"] is True
    assert row["load_id"] == load_id
    assert row["summary"].endswith("on no rows")


def test_gate_validates_only_its_own_load():
    stage([snapshot(1, value=Decimal("-1"))])  # someone else's bad load
    load_id = stage([snapshot(1)])
    assert gate.validate_staged(load_id, START, END).success


def test_known_tenants_are_read_from_config_at_run_time():
    row = snapshot(3, tenant_id="t999")
    with pytest.raises(gate.GateFailed):
        gate.validate_staged(stage([row]), START, END)
    with warehouse.connect() as conn:
        conn.execute(
            "insert into config.tenants select 't999', tenant_name, organisation, business_unit, team,"
            " price_book, billing_email from config.tenants where tenant_id = 't001'"
        )
    try:
        assert gate.validate_staged(stage([row]), START, END).success
    finally:
        with warehouse.connect() as conn:
            conn.execute("delete from config.tenants where tenant_id = 't999'")


def test_window_accepts_iso_strings():
    load_id = stage([snapshot(1)])
    result = gate.validate_staged(load_id, "2026-10-01T13:00:00Z", "2026-10-01T14:00:00+00:00")
    assert (result.window_start, result.window_end) == (START, END)


def test_an_expectation_that_cannot_be_evaluated_leaves_the_load_staged(monkeypatch):
    """A query error (the warehouse went away, a broken suite) is no verdict on the data:
    the gate raises without rejecting, so the task's retry validates the same load."""
    from chargeback.orchestration import steps

    load_id = stage(clean_rows(3))
    suite = gate.load_suite

    def broken(*args, **kwargs):
        spec = suite(*args, **kwargs)
        spec["expectations"].append({"type": "unexpected_rows_expectation", "description": "cannot run",
                                     "kwargs": {"unexpected_rows_query": "select no_such_column from {batch}"}})
        return spec

    monkeypatch.setattr(gate, "load_suite", broken)
    with pytest.raises(gate.GateNotEvaluated) as info:
        steps.gate(load_id, START, END)
    assert not isinstance(info.value, gate.GateFailed)
    assert str(info.value).startswith(f"gate could not validate raw.usage_staging (load {load_id}")
    assert "could not be evaluated" in str(info.value)
    assert "no_such_column" in str(info.value)
    with warehouse.connect() as conn:
        (status,) = conn.execute("select status from pipeline.load_runs where load_id = %s", (load_id,)).fetchone()
    assert status != "rejected"

    monkeypatch.setattr(gate, "load_suite", suite)
    steps.gate(load_id, START, END)  # the retry


# --------------------------------------------------------------------------- rejected loads


def test_gate_rejects_negative_value_naming_file_and_line():
    rows = [snapshot(n) for n in range(1, 7)] + [snapshot(7, value=Decimal("-3.5"))]
    load_id = stage(rows)
    with pytest.raises(gate.GateFailed) as info:
        gate.validate_staged(load_id, START, END)

    message = str(info.value)
    first_line = message.splitlines()[0]
    assert first_line == (
        f"gate failed for raw.usage_staging (load {load_id}, 2026-10-01T13:00Z–14:00Z): "
        f"expect_column_values_to_be_between(value >= 0): 1 row(s), e.g. {FILE}:7 value=-3.5"
    )
    result = info.value.result
    assert not result.success
    assert result.failed_expectations == 1
    row = validation_row(result.validation_id)
    assert row["success"] is False
    assert row["failed_expectations"] == 1
    assert row["summary"] == f"expect_column_values_to_be_between(value >= 0): 1 row(s), e.g. {FILE}:7 value=-3.5"
    assert row["result"]["success"] is False
    assert f"validation_id {result.validation_id}" in message


def test_gate_rejects_unknown_tenant_and_meter():
    error = rejected([snapshot(1), snapshot(2, tenant_id="t404"), snapshot(3, meter="egress_gb")])
    message = str(error)
    assert (
        f"unexpected_rows_expectation(tenant_id in config.tenants): 1 row(s), e.g. {FILE}:2 tenant_id=t404"
        in message
    )
    assert (
        f"unexpected_rows_expectation(meter in config.meters): 1 row(s), e.g. {FILE}:3 meter=egress_gb" in message
    )
    assert error.result.failed_expectations == 2  # an unknown meter is not also reported as a unit mismatch


def test_gate_rejects_duplicate_snapshot_ids():
    error = rejected([snapshot(1), snapshot(2, snapshot_id="dup"), snapshot(3, snapshot_id="dup")])
    assert (
        f"unexpected_rows_expectation(snapshot_id is unique per tenant within the load): 2 row(s), "
        f"e.g. {FILE}:2 tenant_id=t001 snapshot_id=dup; {FILE}:3 tenant_id=t001 snapshot_id=dup"
    ) in str(error)


def test_gate_rejects_sources_and_labels_beyond_the_attribution_limits():
    """Rows that reached staging past the loader: each distinct labels object is checked once,
    and every row holding a bad one is named, not only the first."""
    load_id = stage([snapshot(n, snapshot_id=f"s-{n}") for n in range(1, 9)])
    too_many = {f"k{i:02d}": "v" for i in range(17)}
    labels = {1: {"team": "a"}, 2: {"team": "a"}, 3: {"team": 1}, 4: too_many, 5: ["team"], 6: {"team": 1},
              7: {"team": "b", "env": "prod"}}
    with warehouse.connect() as conn:
        for line, value in labels.items():
            conn.execute("update raw.usage_staging set source = 'api', labels = %s::jsonb"
                         " where load_id = %s and source_line = %s", (json.dumps(value), load_id, line))
        conn.execute("update raw.usage_staging set source = '' where load_id = %s and source_line = 8", (load_id,))
    with pytest.raises(gate.GateFailed) as info:
        gate.validate_staged(load_id, START, END)
    (failure,) = [f for f in info.value.result.failures if "labels" in f]
    assert ": 5 row(s), e.g. " in failure  # lines 3, 4, 5, 6 and 8
    assert f"{FILE}:3 source=api labels='{{\"team\": 1}}'" in failure
    for line in (1, 2, 7):
        assert f"{FILE}:{line} " not in failure


def test_gate_rejects_unit_not_matching_meter():
    error = rejected([snapshot(1), snapshot(4, meter="stored_gb", unit="TB")])
    assert (
        f"unexpected_rows_expectation(unit = the meter's unit in config.meters): 1 row(s), "
        f"e.g. {FILE}:4 meter=stored_gb unit=TB meter_unit=GB"
    ) in str(error)
    assert error.result.failed_expectations == 1


def test_gate_rejects_kind_not_matching_meter_or_unknown_kind():
    error = rejected([snapshot(1), snapshot(2, meter="stored_gb", kind="counter"), snapshot(3, kind="level")])
    message = str(error)
    assert (
        f"unexpected_rows_expectation(kind = the meter's kind in config.meters): 1 row(s), "
        f"e.g. {FILE}:2 meter=stored_gb kind=counter meter_kind=gauge"
    ) in message
    assert f"expect_column_values_to_be_in_set(kind is counter or gauge): 1 row(s), e.g. {FILE}:3 kind=level" in message


def test_gate_rejects_missing_fields_naming_each_column():
    required = ["snapshot_id", "tenant_id", "meter", "value", "unit", "hour_start", "emitted_at", "kind"]
    rows = [snapshot(line, **{column: None}) for line, column in enumerate(required, start=10)]
    message = str(rejected(rows))
    for line, column in enumerate(required, start=10):
        assert (
            f"expect_column_values_to_not_be_null({column} is set): 1 row(s), e.g. {FILE}:{line} {column}=null"
            in message
        )


def test_gate_rejects_hours_after_the_window_or_off_the_hour_but_accepts_late_usage():
    error = rejected(
        [
            snapshot(1),
            snapshot(2, hour_start=END),  # the window is [start, end)
            snapshot(3, hour_start=START - dt.timedelta(hours=1)),  # late usage of an earlier hour: fine
            snapshot(4, hour_start=START + dt.timedelta(minutes=30)),
        ]
    )
    message = str(error)
    assert (
        f"expect_column_values_to_be_between(hour_start < window_end (late usage of earlier hours is allowed)):"
        f" 1 row(s), e.g. {FILE}:2 hour_start=2026-10-01T14:00Z\n"
    ) in message
    assert (
        f"unexpected_rows_expectation(hour_start is the start of an hour (UTC)): 1 row(s), "
        f"e.g. {FILE}:4 hour_start=2026-10-01T13:30Z"
    ) in message


def test_gate_rejects_values_that_are_not_finite_numbers():
    message = str(rejected([snapshot(1), snapshot(2, value=Decimal("NaN"))]))
    assert f"unexpected_rows_expectation(value is a finite number): 1 row(s), e.g. {FILE}:2 value=NaN" in message


def test_failure_message_lists_every_failed_expectation_in_suite_order():
    error = rejected([snapshot(1, value=Decimal("-1"), tenant_id="t404"),
                      snapshot(2, snapshot_id="snap-1", tenant_id="t404")])
    lines = str(error).splitlines()
    assert lines[0].endswith("2026-10-01T13:00Z–14:00Z):")
    assert [line.split(":")[0].strip() for line in lines[1:4]] == [
        "unexpected_rows_expectation(snapshot_id is unique per tenant within the load)",
        "expect_column_values_to_be_between(value >= 0)",
        "unexpected_rows_expectation(tenant_id in config.tenants)",
    ]
    assert lines[4].startswith("Data Docs: file://")
    row = validation_row(error.result.validation_id)
    assert row["summary"].splitlines() == [line.strip() for line in lines[1:4]]


# --------------------------------------------------------------------------- records and docs


def test_data_docs_are_written(settings):
    load_id = stage([snapshot(1, value=Decimal("-2"))])
    with pytest.raises(gate.GateFailed) as info:
        gate.validate_staged(load_id, START, END)

    docs = settings.gx_dir / "data_docs"
    assert (docs / "index.html").is_file()
    page = Path(info.value.result.data_docs_url.removeprefix("file://"))
    assert page.is_file()
    assert page.is_relative_to(docs)
    assert f"load-{load_id}" in page.parts
    html = page.read_text()
    assert "raw_usage_staging" in html
    assert "value &gt;= 0" in html or "value >= 0" in html
    assert "raw_usage_staging" in (docs / "index.html").read_text()
    stored = list((settings.gx_dir / "validations" / "raw_usage_staging" / f"load-{load_id}").rglob("*.json"))
    assert len(stored) == 1
    assert json.loads(stored[0].read_text())["success"] is False


def test_gate_keeps_gx_output_off_stdout(capfd):
    gate.validate_staged(stage([snapshot(1)]), START, END)
    with pytest.raises(gate.GateFailed):
        gate.validate_staged(stage([snapshot(1, value=Decimal("-1"))]), START, END)
    out, _ = capfd.readouterr()
    assert out == ""


def test_importing_gate_and_checks_does_not_import_great_expectations():
    """DAG files import the package constantly; GX is imported only when a gate runs."""
    code = "import sys, chargeback.ingest.gate, chargeback.engine.checks; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_suite_files_are_declarative_gx_suites(settings):
    import great_expectations as gx

    gx.get_context(mode="ephemeral")
    for path in sorted(settings.expectations_dir.glob("*.json")):
        spec = json.loads(path.read_text())
        suite = gx.ExpectationSuite(**spec)
        assert suite.name == path.stem
        assert spec["meta"]["table"], path
        assert spec["meta"]["row_key"], path
        assert all(e.get("description") for e in spec["expectations"]), f"{path}: describe every expectation"


def test_quarantine_policy_fills_in_the_load_under_fail_and_leaves_the_expectations_out_under_warn(settings):
    import dataclasses

    spec = gate.load_suite(gate.SUITE, settings)
    policy = [e["description"] for e in spec["expectations"] if (e.get("meta") or {}).get("quarantine_policy")]
    assert policy == ["no staged row belongs to a producer the quarantine policy held back"]

    failing = gate.policy_suite(spec, 42, dataclasses.replace(settings, quarantine_policy="fail"))
    warning = gate.policy_suite(spec, 42, dataclasses.replace(settings, quarantine_policy="warn"))

    queries = [e["kwargs"]["unexpected_rows_query"] for e in failing["expectations"]
               if e["description"] in policy]
    assert "h.load_id = 42 and" in queries[0]
    assert len(failing["expectations"]) == len(spec["expectations"])
    assert [e["description"] for e in warning["expectations"]] == [
        e["description"] for e in spec["expectations"] if e["description"] not in policy]
    assert "{load_id}" in json.dumps(spec)  # the suite file itself is left as it was


def test_gate_validates_a_load_of_180k_rows_in_one_pass():
    """Every expectation evaluates over the whole load (its time is make bench's P3_gate_seconds)."""
    load_id = new_load()
    with warehouse.connect() as conn:
        conn.execute(
            """
            insert into raw.usage_staging (load_id, snapshot_id, tenant_id, meter, value, unit, hour_start,
                                           emitted_at, kind, source_file, source_line)
            select %(load_id)s, 'big-' || g, 't' || lpad((g %% 50 + 1)::text, 3, '0'), m.meter,
                   (g %% 1000) / 10.0, m.unit, %(start)s, %(start)s + interval '59 minutes', m.kind,
                   'landing/usage/2026-10-01/13/part-' || g / 10000 || '.jsonl', g %% 10000 + 1
            from generate_series(1, 180000) as g
            join (select meter, unit, kind, row_number() over (order by meter) - 1 as i from config.meters) as m
              on m.i = g %% 5
            """,
            {"load_id": load_id, "start": START},
        )
        conn.execute("analyze raw.usage_staging")
    result = gate.validate_staged(load_id, START, END)
    assert result.success
    assert result.row_count == 180_000
    assert result.failures == ()
    assert validation_row(result.validation_id)["evaluated_expectations"] == result.evaluated_expectations >= 15
