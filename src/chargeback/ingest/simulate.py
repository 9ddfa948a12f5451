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

Below the tenant (``sources=N``, off by default): each tenant gets N log groups, which
produce its ingest, storage and alerts, and N query principals (users, dashboards, alert
rules), which run its scans and query CPU, with long-tailed shares — a few big log groups
and many small ones; a few principals scan most, and some never query. Each source has
labels (``team``, ``env``, ``app``; ``user`` for a user) drawn once per tenant. A
tenant-hour's value of each meter is exactly today's, split over the sources in whole units
of the value's last decimal with the largest-remainder rule, so the sources add up to the
tenant-hour to the last digit; ``sources=0`` writes today's files byte for byte.

Simulated files would be billed like real ones, so :func:`simulate` — the only way
synthetic usage is produced (the ``simulator`` source, ``chargeback simulate``/``demo``,
the bench, the tests) — runs only where ``CHARGEBACK_ENV`` is ``dev`` or ``demo``; it is
refused, in one line, under the default ``production`` (:func:`require_simulation_allowed`).
"""

from __future__ import annotations

import csv
import dataclasses
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


def _hour_rng(seed: int, tenant_id: str, hour: dt.datetime) -> random.Random:
    return random.Random(zlib.crc32(f"{seed}:{tenant_id}:{int((hour - _EPOCH).total_seconds() // 3600)}".encode()))


def _burst(rng: random.Random) -> float:
    """An hour's ingest burst: 3 to 10 times the usual in one hour of 250, else 1 (the hour's first draws)."""
    return rng.uniform(3.0, 10.0) if rng.random() < 0.004 else 1.0


def bursts(seed: int, tenant_id: str, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
    """The hours of ``[start, end)`` in which the tenant's ingest (and so its scans) bursts, with the
    factor: the simulator's own unplanned spikes, labelled for measuring anomaly detection."""
    return [(hour, factor) for hour in hours(start, end)
            if (factor := _burst(_hour_rng(seed, tenant_id, hour))) != 1.0]


def _hour_rows(seed: int, tenant_id: str, prof: TenantProfile, hour: dt.datetime) -> list[dict]:
    t = (hour - _EPOCH).total_seconds() / 3600.0
    rng = _hour_rng(seed, tenant_id, hour)
    local = (hour.hour + prof.utc_offset) % 24
    diurnal = 1.0 + 0.6 * math.sin(2 * math.pi * (local - 9) / 24)
    weekly = 0.55 if (hour + dt.timedelta(hours=prof.utc_offset)).weekday() >= 5 else 1.0
    growth = (1.0 + prof.monthly_growth) ** (t / 730.0)
    spike = _burst(rng)
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


SOURCE_FIELDS = ("source", "labels")
"""The optional fields a row below the tenant adds (CSV: ``labels`` as ``key=value`` pairs joined by ``;``)."""
LOG_GROUP_METERS = ("ingested_gb", "stored_gb", "alerts_fired")
"""Meters produced by log groups; the others (scans, query CPU) by query principals."""

_APPS = ("checkout", "payments", "search", "auth", "catalog", "orders", "billing", "gateway",
         "inventory", "notifications", "profile", "reports", "shipping", "pricing", "media")
_COMPONENTS = ("api", "worker", "web", "db", "cache", "cron", "ingest", "edge")
_ENVS = ("prod", "prod", "prod", "staging", "dev")
_USERS = ("alice", "bob", "chen", "dana", "emeka", "fatima", "goran", "hana", "ivan", "jun",
          "kofi", "lena", "mateo", "nora", "omar", "priya", "quinn", "rosa", "sven", "tariq")
_DASHBOARDS = ("latency-overview", "error-budget", "traffic", "slo-report", "capacity", "audit-trail")
_RULES = ("error-rate", "p99-latency", "disk-pressure", "login-failures", "5xx-spike", "queue-lag")


@dataclass(frozen=True)
class Source:
    """One source of a tenant: a log group or a query principal, its weight and labels."""

    name: str
    weight: int
    """Relative share (an integer, so the split is exact and the same on every platform); 0: silent."""
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TenantSources:
    log_groups: tuple[Source, ...]
    principals: tuple[Source, ...]


def tenant_sources(seed: int, tenant_id: str, count: int) -> TenantSources:
    """The tenant's ``count`` log groups and ``count`` query principals, stable per (seed, tenant).

    Weights follow Zipf's law with a random exponent: log groups ~1/k^1.1 (a few big, a long
    tail), principals ~1/k^1.6 (a few scan most); about one principal in five never queries.
    """
    rng = random.Random(f"{seed}:{tenant_id}:sources")
    teams = [f"team-{rng.choice('abcdefgh')}{rng.randint(1, 9)}" for _ in range(3)]
    apps = rng.sample(_APPS, 4)
    users = rng.sample(_USERS, len(_USERS))
    seen: set[str] = set()

    def unique(name: str) -> str:
        n, candidate = 2, name
        while candidate in seen:
            candidate, n = f"{name}-{n}", n + 1
        seen.add(candidate)
        return candidate

    def zipf(k: int, exponent: float) -> int:
        return max(1, int(1_000_000 * rng.uniform(0.7, 1.3) / k ** exponent))

    log_groups, principals = [], []
    lg_exponent, q_exponent = rng.uniform(0.9, 1.3), rng.uniform(1.3, 1.9)
    for k in range(1, count + 1):
        app = apps[min(int(rng.paretovariate(1.5)) - 1, len(apps) - 1)]
        labels = (("team", teams[apps.index(app) % len(teams)]), ("env", rng.choice(_ENVS)), ("app", app))
        name = unique(f"/{dict(labels)['env']}/{app}/{rng.choice(_COMPONENTS)}")
        log_groups.append(Source(name, zipf(k, lg_exponent), labels))
    for k in range(1, count + 1):
        app = rng.choice(apps)
        team = teams[apps.index(app) % len(teams)]
        kind = rng.choices(("user", "dashboard", "alert"), weights=(5, 3, 2))[0]
        if kind == "user" and users:
            user = users.pop()
            name, labels = unique(f"user:{user}"), (("team", team), ("env", "prod"), ("app", app), ("user", user))
        else:
            stem = rng.choice(_DASHBOARDS if kind == "dashboard" else _RULES)
            name, labels = unique(f"{kind}:{app}-{stem}"), (("team", team), ("env", "prod"), ("app", app))
        silent = k > 1 and rng.random() < 0.2
        principals.append(Source(name, 0 if silent else zipf(k, q_exponent), labels))
    return TenantSources(tuple(log_groups), _with_reads(seed, tenant_id, tuple(log_groups), principals))


DATA_AGES = ("1d", "7d", "30d", "90d")
"""The ``data_age`` label of a scan: the age of the oldest data it read, in buckets (docs/SNAPSHOTS.md)."""


def _with_reads(seed: int, tenant_id: str, log_groups: tuple[Source, ...], principals: list[Source],
                ) -> tuple[Source, ...]:
    """Each query principal reads one log group (the big ones most often; about a third of the log
    groups are never read) at one data age (alert rules the last day, dashboards up to a week,
    people mostly a week, now and then a month or a quarter): the labels ``log_group`` and
    ``data_age`` of its scans. A stream of its own, so the sources are the same as without it."""
    rng = random.Random(f"{seed}:{tenant_id}:reads")
    readable = [g for g in log_groups if rng.random() < 0.7] or list(log_groups[:1])
    weights = [g.weight for g in readable]
    out = []
    for p in principals:
        group = rng.choices(readable, weights=weights)[0] if readable else None
        kind = p.name.split(":", 1)[0]
        age = ("1d" if kind == "alert" else rng.choice(("1d", "7d")) if kind == "dashboard"
               else rng.choices(DATA_AGES, weights=(2, 6, 2, 1))[0])
        reads = (("log_group", group.name), ("data_age", age)) if group else (("data_age", age),)
        out.append(dataclasses.replace(p, labels=p.labels + reads))
    return tuple(out)


def split_exact(value: str, weights: list[int]) -> list[str]:
    """Split a decimal string over ``weights`` in units of its last decimal, largest remainder first
    (ties to the earlier weight): the parts, printed with the same decimals, add up to ``value``."""
    whole, _, fraction = value.partition(".")
    decimals = len(fraction)
    units = int(whole + fraction)
    total = sum(weights)
    if total == 0:
        raise ValueError("split_exact: every weight is zero")
    floors = [units * w // total for w in weights]
    left = units - sum(floors)
    for i in sorted(range(len(weights)), key=lambda i: (-(units * weights[i] % total), i))[:left]:
        floors[i] += 1
    if not decimals:
        return [str(q) for q in floors]
    scale = 10 ** decimals
    return [f"{q // scale}.{q % scale:0{decimals}d}" for q in floors]


def _source_rows(seed: int, tenant_id: str, rows: list[dict], sources: TenantSources, hour: dt.datetime,
                 boost: dict[int, float] | None = None, query_boost: dict[int, float] | None = None) -> list[dict]:
    """The tenant-hour's rows split per source: per meter, parts that add up to the row's value.

    The hour's shares wobble around each source's weight (its own random stream, so the
    tenant's values are untouched); a gauge (stored) keeps the weights as they are. ``boost``:
    log group index -> factor on its ingest and alerts weight, ``query_boost`` principal index ->
    factor on its scans and CPU (an :class:`Injection`).
    """
    rng = random.Random(zlib.crc32(f"{seed}:{tenant_id}:{hour:%Y-%m-%dT%H}:sources".encode()))
    wobble = {
        "log": [int(s.weight * rng.uniform(0.75, 1.25)) or 1 for s in sources.log_groups],
        "query": [int(s.weight * rng.uniform(0.6, 1.4)) if s.weight else 0 for s in sources.principals],
    }
    out = []
    for row in rows:
        meter = row["meter"]
        if meter in LOG_GROUP_METERS:
            group = sources.log_groups
            weights = [s.weight for s in group] if meter == "stored_gb" else [
                int(w * (boost or {}).get(i, 1.0)) for i, w in enumerate(wobble["log"])]
        else:
            group = sources.principals
            weights = [int(w * (query_boost or {}).get(i, 1.0)) for i, w in enumerate(wobble["query"])]
        if not any(weights):
            continue  # every producer of the meter is silent
        for source, weight, part in zip(group, weights, split_exact(row["value"], weights), strict=True):
            if not weight:
                continue  # never queries: no snapshot at all
            key = f"{tenant_id}/{meter}/{hour:%Y-%m-%dT%H}/{source.name}"
            out.append({**row, "snapshot_id": str(uuid.uuid5(_NAMESPACE, f"{seed}/{key}")), "value": part,
                        "source": source.name, "labels": dict(source.labels)})
    return out


INJECTION_KINDS = ("source_spike", "silent_producer", "query_storm")


@dataclass(frozen=True)
class Injection:
    """An anomaly written into the usage on purpose and labelled, so detection can be measured.

    ``source_spike``: the tenant's log group ``rank`` (1: its biggest) ingests ``factor`` times
    its usual during ``[start, end)``; ``silent_producer``: log group ``rank`` (0: every one of
    them — the tenant's shipper is down) sends nothing: no ingest and no alerts (what it stored
    stays); ``query_storm``: the tenant's query principal ``rank`` scans, and spends query CPU,
    ``factor`` times its usual. Without sources, the tenant's ingest is its one log group and its
    queries its one principal. The other meters, and the hours outside ``[start, end)``, are
    untouched.
    """

    kind: str
    tenant_id: str
    start: dt.datetime
    end: dt.datetime
    rank: int = 1
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INJECTION_KINDS:
            raise ValueError(f"an injection is one of {', '.join(INJECTION_KINDS)}, not {self.kind!r}")


def demo_injections(tenant_ids: list[str], month_start: dt.datetime, seed: int = 42) -> tuple[Injection, ...]:
    """The demo's two labelled anomalies in its billed month: the biggest tenant's biggest log
    group ingests five times its usual on the 12th, and the next biggest tenant's log shipper
    is silent on the 20th (``chargeback anomalies list`` shows and explains both)."""
    ranked = sorted(tenant_ids, key=lambda t: -profile(seed, t).ingest_gb_per_hour)
    spike, silent = month_start + dt.timedelta(days=11), month_start + dt.timedelta(days=19)
    day = dt.timedelta(days=1)
    return (Injection("source_spike", ranked[0], spike, spike + day, rank=1, factor=5.0),
            Injection("silent_producer", ranked[1], silent, silent + day, rank=0))


def tenant_hour_rows(seed: int, tenant_id: str, prof: TenantProfile, hour: dt.datetime,
                     sources: TenantSources | None = None, injections: tuple[Injection, ...] = ()) -> list[dict]:
    """One tenant's snapshots of one hour: per meter, or per source when it has ``sources``, with
    the ``injections`` active in that hour applied."""
    rows = _hour_rows(seed, tenant_id, prof, hour)
    groups = sources.log_groups if sources else ()
    total = sum(g.weight for g in groups)
    scale: dict[str, float] = {}
    boost: dict[int, float] = {}
    query_boost: dict[int, float] = {}
    for injection in injections:
        if injection.tenant_id != tenant_id or not injection.start <= hour < injection.end:
            continue
        if injection.kind == "query_storm":
            principals = sources.principals if sources else ()
            share = (principals[injection.rank - 1].weight / (sum(p.weight for p in principals) or 1)
                     if principals else 1.0)
            for meter in ("scanned_gb", "query_cpu_seconds"):
                scale[meter] = scale.get(meter, 1.0) * (1 + (injection.factor - 1) * share)
            query_boost[injection.rank - 1] = injection.factor
        elif injection.kind == "source_spike":
            share = groups[injection.rank - 1].weight / total if groups else 1.0
            scale["ingested_gb"] = scale.get("ingested_gb", 1.0) * (1 + (injection.factor - 1) * share)
            boost[injection.rank - 1] = injection.factor
        else:
            silent = range(len(groups)) if injection.rank == 0 else [injection.rank - 1]
            share = sum(groups[i].weight for i in silent) / total if groups else 1.0
            for meter in ("ingested_gb", "alerts_fired"):
                scale[meter] = scale.get(meter, 1.0) * (1 - share)
            boost.update(dict.fromkeys(silent, 0.0))
    out = []
    for row in rows:
        if row["meter"] in scale:
            decimals = METERS[row["meter"]][2]
            value = float(row["value"]) * scale[row["meter"]]
            if value <= 0 and not groups:
                continue  # silent: no snapshot at all
            row = {**row, "value": f"{value:.{decimals}f}"}
        out.append(row)
    return _source_rows(seed, tenant_id, out, sources, hour, boost, query_boost) if sources else out


def render(rows: list[dict], fmt: str) -> str:
    """Rows in the landing file format (``jsonl`` or ``csv``); rows with a ``source`` add the
    ``source`` and ``labels`` columns (labels ``key=value;key=value`` in CSV)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    buf = io.StringIO()
    with_sources = bool(rows) and "source" in rows[0]
    fields = SNAPSHOT_FIELDS + SOURCE_FIELDS if with_sources else SNAPSHOT_FIELDS
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    if with_sources:
        rows = [{**r, "labels": ";".join(f"{k}={v}" for k, v in r["labels"].items())} for r in rows]
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
    sources: int = 0,
    injections: tuple[Injection, ...] = (),
    progress=None,
) -> int:
    """Write one snapshot file per hour of ``[start, end)`` under ``landing``; return the row count.

    ``sources``: log groups and query principals per tenant (0: one snapshot per tenant, meter
    and hour, without ``source`` or ``labels``; the per-tenant values are the same either way).
    ``injections``: labelled anomalies written into the usage (:class:`Injection`).
    Rewrites the hour's file if it exists (same seed, same content), so it is safe to re-run.
    Refused unless ``CHARGEBACK_ENV`` is ``dev`` or ``demo`` (:func:`require_simulation_allowed`).
    """
    require_simulation_allowed(landing)
    if sources < 0:
        raise ValueError(f"sources must be 0 or more, got {sources}")
    profiles = {t: profile(seed, t) for t in tenant_ids}
    below = {t: tenant_sources(seed, t, sources) for t in tenant_ids} if sources else {}
    fs, root = fsspec.core.url_to_fs(landing)
    total = 0
    for hour in hours(start, end):
        rows = [row for t in tenant_ids
                for row in tenant_hour_rows(seed, t, profiles[t], hour, below.get(t), injections)]
        file_fmt = fmt if fmt != "mixed" else ("jsonl" if hour.hour % 2 == 0 else "csv")
        folder = hour_folder(root, hour)
        fs.makedirs(folder, exist_ok=True)
        with fs.open(f"{folder}/simulated-{seed}.{file_fmt}", "w") as fh:
            fh.write(render(rows, file_fmt))
        total += len(rows)
        if progress:
            progress(1)
    return total
