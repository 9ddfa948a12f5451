"""A seeded generator of realistic multi-tenant log-platform usage.

Each tenant gets a stable profile drawn from the seed: a heavy-tailed size (Pareto —
a few tenants dominate, as on real platforms), a retention period, a query appetite,
growth, and a home time zone. Hourly values then follow a diurnal cycle, a weekly
cycle (quiet weekends), growth, noise and rare spikes. The values of a tenant-hour
depend only on (seed, tenant, hour), so simulating a sub-window reproduces exactly
the rows of a longer run.

Output is the landing layout and file format that real producers use (see
:mod:`chargeback.ingest.sources`): one file per hour, JSON Lines on even hours and CSV on
odd hours unless a format is forced, so both parsers are always exercised.

Simulated files would be billed like real ones, so :func:`simulate` — the only way
synthetic usage is produced (the ``simulator`` source, ``chargeback simulate``/``demo``,
the bench, the tests) — runs only where ``CHARGEBACK_ENV`` is ``dev`` or ``demo``; it is
refused, in one line, under the default ``production`` (:func:`require_simulation_allowed`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import random
import uuid
import zlib
from dataclasses import dataclass

import fsspec

from chargeback.ingest.layout import SNAPSHOT_FIELDS, hour_folder, hours
from chargeback.platform import events

ENVIRONMENTS = ("production", "dev", "demo")
"""Values of ``CHARGEBACK_ENV`` (default ``production``); the simulator runs in ``dev`` and ``demo``."""
SIMULATION_ENVIRONMENTS = ("dev", "demo")


class SimulationRefused(RuntimeError):
    """Synthetic usage was asked for outside a development or demo installation."""


def environment() -> str:
    """``CHARGEBACK_ENV``: what kind of installation this is (``production`` unless said otherwise)."""
    value = (os.environ.get("CHARGEBACK_ENV") or "production").strip().lower()
    if value not in ENVIRONMENTS:
        raise ValueError(f"CHARGEBACK_ENV must be one of {', '.join(ENVIRONMENTS)}, got {value!r}")
    return value


def require_simulation_allowed(landing: str) -> None:
    """Raise :class:`SimulationRefused` (its message the refusal line, also recorded) unless
    ``CHARGEBACK_ENV`` is ``dev`` or ``demo``."""
    env = environment()
    if env in SIMULATION_ENVIRONMENTS:
        return
    default = " (the default)" if not os.environ.get("CHARGEBACK_ENV") else ""
    raise SimulationRefused(events.refuse(
        "simulated usage",
        f"CHARGEBACK_ENV is {env}{default}, and synthetic usage written to the landing location would be"
        " billed as real usage",
        "load real snapshots (source 'files'); only a development or demo installation may simulate:"
        " set CHARGEBACK_ENV=dev or CHARGEBACK_ENV=demo there",
        where=str(landing)))

_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_NAMESPACE = uuid.UUID("6f1c1c2e-8a4e-4d0b-9a53-2f0f3c1b7c11")

# meter -> (unit, kind, decimals)
METERS = {
    "ingested_gb": ("GB", "counter", 6),
    "stored_gb": ("GB", "gauge", 6),
    "scanned_gb": ("GB", "counter", 6),
    "query_cpu_seconds": ("s", "counter", 3),
    "alerts_fired": ("alerts", "counter", 0),
}


@dataclass(frozen=True)
class TenantProfile:
    ingest_gb_per_hour: float
    retention_days: int
    scan_ratio: float
    cpu_seconds_per_gb: float
    alerts_per_hour: float
    monthly_growth: float
    utc_offset: int


def profile(seed: int, tenant_id: str) -> TenantProfile:
    rng = random.Random(f"{seed}:{tenant_id}")
    return TenantProfile(
        ingest_gb_per_hour=min(0.2 * rng.paretovariate(1.16), 400.0),
        retention_days=rng.choice([7, 15, 30, 30, 90]),
        scan_ratio=rng.lognormvariate(0.5, 0.9),
        cpu_seconds_per_gb=rng.uniform(0.8, 2.5),
        alerts_per_hour=rng.uniform(0.0, 3.0),
        monthly_growth=rng.uniform(-0.02, 0.15),
        utc_offset=rng.choice([-8, -5, 0, 1, 5, 8, 9]),
    )


def _hour_rows(seed: int, tenant_id: str, prof: TenantProfile, hour: dt.datetime) -> list[dict]:
    t = (hour - _EPOCH).total_seconds() / 3600.0
    rng = random.Random(zlib.crc32(f"{seed}:{tenant_id}:{int(t)}".encode()))
    local = (hour.hour + prof.utc_offset) % 24
    diurnal = 1.0 + 0.6 * math.sin(2 * math.pi * (local - 9) / 24)
    weekly = 0.55 if (hour + dt.timedelta(hours=prof.utc_offset)).weekday() >= 5 else 1.0
    growth = (1.0 + prof.monthly_growth) ** (t / 730.0)
    spike = rng.uniform(3.0, 10.0) if rng.random() < 0.004 else 1.0
    ingest = prof.ingest_gb_per_hour * diurnal * weekly * growth * spike * rng.lognormvariate(0.0, 0.15)
    stored = prof.ingest_gb_per_hour * 24 * prof.retention_days * 0.35 * growth
    scanned = ingest * prof.scan_ratio * 3.0 * rng.lognormvariate(0.0, 0.3)
    cpu = scanned * prof.cpu_seconds_per_gb
    alerts = sum(1 for _ in range(12) if rng.random() < prof.alerts_per_hour * diurnal / 12)
    values = {
        "ingested_gb": ingest,
        "stored_gb": stored,
        "scanned_gb": scanned,
        "query_cpu_seconds": cpu,
        "alerts_fired": alerts,
    }
    emitted = hour + dt.timedelta(hours=1, seconds=rng.randint(5, 900))
    rows = []
    for meter, (unit, kind, decimals) in METERS.items():
        key = f"{tenant_id}/{meter}/{hour:%Y-%m-%dT%H}"
        rows.append({
            "snapshot_id": str(uuid.uuid5(_NAMESPACE, f"{seed}/{key}")),
            "tenant_id": tenant_id,
            "meter": meter,
            "value": f"{values[meter]:.{decimals}f}",
            "unit": unit,
            "hour": f"{hour:%Y-%m-%dT%H:00:00Z}",
            "emitted_at": emitted.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "kind": kind,
        })
    return rows


def render(rows: list[dict], fmt: str) -> str:
    """Rows in the landing file format (``jsonl`` or ``csv``)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SNAPSHOT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def simulate(
    landing: str,
    tenant_ids: list[str],
    start: dt.datetime,
    end: dt.datetime,
    *,
    seed: int = 42,
    fmt: str = "mixed",
    progress=None,
) -> int:
    """Write one snapshot file per hour of ``[start, end)`` under ``landing``; return the row count.

    Rewrites the hour's file if it exists (same seed, same content), so it is safe to re-run.
    Refused unless ``CHARGEBACK_ENV`` is ``dev`` or ``demo`` (:func:`require_simulation_allowed`).
    """
    require_simulation_allowed(landing)
    profiles = {t: profile(seed, t) for t in tenant_ids}
    fs, root = fsspec.core.url_to_fs(landing)
    total = 0
    for hour in hours(start, end):
        rows = [row for t in tenant_ids for row in _hour_rows(seed, t, profiles[t], hour)]
        file_fmt = fmt if fmt != "mixed" else ("jsonl" if hour.hour % 2 == 0 else "csv")
        folder = hour_folder(root, hour)
        fs.makedirs(folder, exist_ok=True)
        with fs.open(f"{folder}/simulated-{seed}.{file_fmt}", "w") as fh:
            fh.write(render(rows, file_fmt))
        total += len(rows)
        if progress:
            progress(1)
    return total
