"""Faults while loading: concurrent loads of one window, a loader killed mid-publish.

Publish is one transaction under an advisory lock, with the delete and the insert as
separate steps (``load._delete_landed_hours``, ``load._insert_staged``) so a test can
stop the loader between them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chargeback.ingest import load
from chargeback.ingest.sources import FileSource
from chargeback.platform import warehouse
from waiting import wait_until

pytestmark = pytest.mark.warehouse

ROOT = Path(__file__).resolve().parents[1]
H = dt.datetime(2026, 9, 9, 10, tzinfo=dt.UTC)
H1 = H + dt.timedelta(hours=1)
STATE = """
select count(*), md5(coalesce(string_agg(concat_ws('|', snapshot_id, tenant_id, meter, value::text, unit, hour_start,
       kind, source_file, source_line, landed_hour, learned_at), ',' order by snapshot_id), ''))
from raw.usage_snapshots
"""


@pytest.fixture(autouse=True)
def empty_raw():
    with warehouse.connect() as conn:
        conn.execute("truncate raw.usage_snapshots, raw.usage_staging, raw.usage_quarantine, pipeline.load_files")


def land(landing: Path, value: str) -> Path:
    path = landing / "usage" / f"{H:%Y-%m-%d}" / f"{H:%H}" / "a.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({
        "snapshot_id": f"s{i}", "tenant_id": f"t00{i % 3 + 1}", "meter": "ingested_gb", "value": value,
        "unit": "GB", "hour": "2026-09-09T10:00:00Z", "emitted_at": "2026-09-09T10:59:00Z", "kind": "counter",
    }) + "\n" for i in range(20)))
    return path


def state() -> tuple:
    with warehouse.connect() as conn:
        return conn.execute(STATE).fetchone()


def waiting_for_the_publish_lock() -> int:
    with warehouse.connect() as conn:
        return conn.execute(
            "select count(*) from pg_locks l join pg_database d on d.oid = l.database"
            " where l.locktype = 'advisory' and not l.granted and d.datname = current_database()"
        ).fetchone()[0]


def test_concurrent_loads_of_one_window_wait_and_end_as_one(landing):
    land(landing, "1.5")
    load.publish(load.stage(FileSource(str(landing)), H, H1).load_id)
    once = state()
    with warehouse.connect() as conn:
        conn.execute("truncate raw.usage_snapshots")
    first = load.stage(FileSource(str(landing)), H, H1)
    second = load.stage(FileSource(str(landing)), H, H1)
    results: dict[int, load.PublishResult] = {}
    errors: list[BaseException] = []

    def publish(load_id: int) -> None:
        try:
            results[load_id] = load.publish(load_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(s.load_id,)) for s in (first, second)]
    with warehouse.connect() as holder:
        load.lock_window(holder)  # another publish of the window is running
        for t in threads:
            t.start()
        # both loaders wait on the lock (PostgreSQL says so) ...
        wait_until(lambda: waiting_for_the_publish_lock() == 2, what="both loaders to wait on the publish lock")
        assert all(t.is_alive() for t in threads)
        assert state()[0] == 0  # ... and have changed nothing
    for t in threads:
        t.join(60)

    assert errors == []
    assert sorted(r.rows_loaded for r in results.values()) == [20, 20]
    assert sorted(r.rows_deleted for r in results.values()) == [0, 20]  # one after the other
    assert state() == once


def test_loader_killed_between_delete_and_insert_leaves_previous_state(landing, tmp_path):
    land(landing, "1.5")
    load.publish(load.stage(FileSource(str(landing)), H, H1).load_id)
    before = state()
    land(landing, "2.5")  # the producer restated the hour
    staged = load.stage(FileSource(str(landing)), H, H1)
    marker = tmp_path / "deleted"
    script = f"""
import os, signal
from chargeback.ingest import load

def stuck_after_delete(conn, load_id):
    deleted = conn.execute("select count(*) from replaced_snapshots").fetchone()[0]
    with open({str(marker)!r} + ".tmp", "w") as f:
        f.write(str(deleted))
    os.replace({str(marker)!r} + ".tmp", {str(marker)!r})  # whole or not at all
    signal.pause()  # stuck until killed

load._insert_staged = stuck_after_delete
load.publish({staged.load_id})
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    loader = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        wait_until(marker.exists, what="the loader to delete and get stuck")
        assert marker.read_text() == "20"  # the delete ran in the loader's transaction
    finally:
        loader.send_signal(signal.SIGKILL)
        loader.wait(30)
    assert loader.returncode == -signal.SIGKILL

    assert state() == before
    with warehouse.connect() as conn:
        status = conn.execute("select status from pipeline.load_runs where load_id = %s",
                              (staged.load_id,)).fetchone()[0]
    assert status == "staged"

    again = load.publish(staged.load_id)  # the retry waits for the dead session's lock, then publishes

    assert (again.rows_deleted, again.rows_loaded) == (20, 20)
    with warehouse.connect() as conn:
        values = conn.execute("select distinct value::text from raw.usage_snapshots").fetchall()
    assert values == [("2.5",)]
