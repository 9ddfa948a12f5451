"""Snapshot rows for tests that land files by hand: one valid row of tenant t001, changed
field by field (``snapshot_row("s1", hour, value="x")``)."""

from __future__ import annotations

import datetime as dt

from chargeback.ingest.layout import SNAPSHOT_FIELDS

FIELDS = SNAPSHOT_FIELDS


def snapshot_row(snapshot_id: str, at: dt.datetime, /, **overrides) -> dict:
    """A valid snapshot of hour ``at``; ``overrides`` replace fields (``hour=`` too)."""
    row = {"snapshot_id": snapshot_id, "tenant_id": "t001", "meter": "ingested_gb", "value": "2.5", "unit": "GB",
           "hour": f"{at:%Y-%m-%dT%H}:00:00Z", "emitted_at": f"{at:%Y-%m-%dT%H}:59:00Z", "kind": "counter"}
    row.update(overrides)
    return row


def publish_simulated(tenant_ids: list[str], start: dt.datetime, end: dt.datetime, *, seed: int, sources: int = 0,
                      injections: tuple = ()) -> int:
    """The simulator's usage of ``[start, end)`` published straight into ``raw.usage_snapshots``
    (COPY, no files, no gate): the same rows the simulator's files would publish (with ``sources``
    per tenant and ``injections``, :func:`chargeback.ingest.simulate.simulate`'s arguments), fast
    enough for months of history. Returns the row count."""
    from psycopg.types.json import Jsonb

    from chargeback.ingest import simulate
    from chargeback.platform import warehouse

    profiles = {t: simulate.profile(seed, t) for t in tenant_ids}
    below = {t: simulate.tenant_sources(seed, t, sources) for t in tenant_ids} if sources else {}
    count = 0
    with warehouse.connect() as conn, conn.cursor() as cur, cur.copy(
            "copy raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at, kind,"
            " source_file, source_line, load_id, source, labels) from stdin") as copy:
        hour = start
        while hour < end:
            for tenant_id in tenant_ids:
                for row in simulate.tenant_hour_rows(seed, tenant_id, profiles[tenant_id], hour, below.get(tenant_id),
                                                     injections):
                    copy.write_row((row["snapshot_id"], tenant_id, row["meter"], row["value"], row["unit"],
                                    hour, row["emitted_at"], row["kind"], "simulated", 1, 0,
                                    row.get("source", "(none)"), Jsonb(row.get("labels", {}))))
                    count += 1
            hour += dt.timedelta(hours=1)
    return count
