"""The command line: expected failures are one clear line, never a traceback."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from chargeback.cli import main
from chargeback.ingest.simulate import simulate

START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.mark.warehouse
def test_a_malformed_line_holds_back_its_file_in_one_line_naming_file_and_line(landing, capsys):
    simulate(str(landing), ["t001"], START, START + dt.timedelta(hours=1), fmt="jsonl")
    (bad,) = (landing / "usage" / "2026-06-01" / "00").iterdir()
    bad.write_text(bad.read_text() + "{oops\n")

    code = main(["load", "--start", "2026-06-01T00:00:00Z", "--end", "2026-06-01T01:00:00Z"])

    captured = capsys.readouterr()
    assert code == 1  # published for everyone else; the held producer needs a person
    load_id = _last_load()
    (error,) = [line for line in captured.err.splitlines() if "held back" in line]
    assert error == (
        f"chargeback quarantine: file {bad} held back in load {load_id} at {bad}:"
        " 1 of 6 rows of landed hour 2026-06-01T00:00Z quarantined (16.7% > max_bad_share 1%);"
        " nothing of it was published from this load, every other producer's rows were"
        f" — fix the producer or config, then chargeback quarantine replay --load {load_id}")
    assert f"held back: file {bad} (chargeback quarantine replay --load {load_id} once fixed)" in captured.out
    assert "Traceback" not in captured.err


def _last_load() -> int:
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        return conn.execute("select max(load_id) from pipeline.load_runs").fetchone()[0]


def test_a_bad_period_is_explained(capsys):
    assert main(["summary", "--period", "2026-13"]) == 1
    assert capsys.readouterr().err.strip() == (
        "chargeback summary: error: not a billing period: '2026-13' (expected YYYY-MM, e.g. 2026-10)")


@pytest.mark.warehouse
def test_simulate_then_load_reports_what_it_did(landing, capsys):
    assert main(["simulate", "--start", "2026-06-02T00:00:00Z", "--end", "2026-06-02T02:00:00Z",
                 "--tenants", "3"]) == 0
    assert "wrote 30 snapshots for 3 tenants, 2 hours" in capsys.readouterr().out
    assert main(["load", "--start", "2026-06-02T00:00:00Z", "--end", "2026-06-02T02:00:00Z"]) == 0
    assert "staged, gated and published" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["load"], ["simulate"]])
def test_a_missing_window_is_explained(args, capsys):
    assert main(args) == 1
    assert "give a window: --month YYYY-MM, or --start and --end" in capsys.readouterr().err


def test_a_full_refresh_of_a_window_is_explained(capsys):
    assert main(["transform", "--month", "2026-10", "--full-refresh"]) == 1
    assert "--full-refresh rebuilds every mart from raw: give no --month, --start or --end" in capsys.readouterr().err


def chargeback(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    """The real command in a process of its own (its logging set up as a user's would be)."""
    environ = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    for key in (k for k, v in env.items() if v is None):
        environ.pop(key, None)
    return subprocess.run([sys.executable, "-m", "chargeback.cli", *args], env=environ, capture_output=True,
                          text=True, check=False)


def test_a_warehouse_that_cannot_be_reached_is_one_line():
    run = chargeback("summary", "--period", "2026-06", WAREHOUSE_DSN="postgresql://chargeback@127.0.0.1:1/none",
                     CHARGEBACK_DATABASE=None)
    assert run.returncode == 1
    (line,) = run.stderr.splitlines()
    assert line.startswith('chargeback summary: error: cannot connect to the warehouse: connection failed:')
    assert line.endswith(" — start it (chargeback warehouse start) or fix WAREHOUSE_DSN")


@pytest.mark.warehouse
def test_refusals_of_invoices_and_close_are_one_line_without_a_traceback(landing):
    """A month loaded but not built, a month never loaded, and marts never built: each
    refusal is the one line pipeline.events records, printed once; exit 1."""
    simulate(str(landing), ["t001"], START, START + dt.timedelta(hours=1), fmt="jsonl")
    assert chargeback("load", "--start", "2026-06-01T00:00:00Z", "--end", "2026-06-01T01:00:00Z").returncode == 0

    stale = chargeback("invoices", "--period", "2026-06")
    assert stale.returncode == 1
    (line,) = stale.stderr.splitlines()
    assert line.startswith(f"chargeback refusal: invoices of 2026-06 at load {_last_load()}: usage of "
                           "[2026-06-01T00:00:00Z, 2026-06-01T01:00:00Z) was published at ")
    assert line.endswith(" and invoice the month again")

    never_loaded = chargeback("close", "--period", "2026-03", "--as-of", "2026-05-01T00:00:00Z")
    assert never_loaded.returncode == 1
    assert never_loaded.stderr.splitlines() == [
        "chargeback refusal: invoices of 2026-03 at 2026-03: no usage of 2026-03 has been loaded — load it"
        " (chargeback load --month 2026-03), build it (chargeback transform --month 2026-03) and invoice the"
        " month again"]
    for run in (stale, never_loaded):
        assert "Traceback" not in run.stderr + run.stdout


@pytest.mark.warehouse
def test_the_simulator_refused_in_production_is_one_line_without_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHARGEBACK_ENV", "production")

    code = main(["simulate", "--start", "2026-06-01T00:00:00Z", "--end", "2026-06-01T01:00:00Z",
                 "--landing", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"chargeback refusal: simulated usage at {tmp_path}: CHARGEBACK_ENV is production, and"
        " synthetic usage written to the landing location would be billed as real usage — load real snapshots"
        " (source 'files'); only a development or demo installation may simulate: set CHARGEBACK_ENV=dev or"
        " CHARGEBACK_ENV=demo there"]
    assert not any(tmp_path.iterdir())
