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
