"""The simulator: seeded, reproducible, realistic enough to exercise the pipeline."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from decimal import Decimal

from chargeback.ingest.simulate import simulate, split_exact, tenant_sources
from chargeback.ingest.sources import FileSource

START = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)  # a Monday


def _rows(landing, start, end):
    out = []
    for f in FileSource(str(landing)).files(start, end):
        with f.open() as fh:
            text = fh.read().decode()
        if f.format == "jsonl":
            out += [json.loads(line) for line in text.splitlines()]
        else:
            header, *lines = text.splitlines()
            out += [dict(zip(header.split(","), line.split(","), strict=True)) for line in lines]
    return out


def test_same_seed_same_files_and_a_sub_window_reproduces_its_hours(tmp_path):
    tenants = [f"t{i:03d}" for i in range(1, 6)]
    simulate(str(tmp_path / "a"), tenants, START, START + dt.timedelta(hours=6), seed=7)
    simulate(str(tmp_path / "b"), tenants, START + dt.timedelta(hours=2), START + dt.timedelta(hours=4), seed=7)
    a = _rows(tmp_path / "a", START + dt.timedelta(hours=2), START + dt.timedelta(hours=4))
    b = _rows(tmp_path / "b", START + dt.timedelta(hours=2), START + dt.timedelta(hours=4))
    assert a == b
    assert len(a) == 2 * 5 * 5
    assert len({r["snapshot_id"] for r in a}) == len(a)


def test_different_seeds_differ(tmp_path):
    simulate(str(tmp_path / "a"), ["t001"], START, START + dt.timedelta(hours=1), seed=1)
    simulate(str(tmp_path / "b"), ["t001"], START, START + dt.timedelta(hours=1), seed=2)
    assert _rows(tmp_path / "a", START, START + dt.timedelta(hours=1)) != _rows(
        tmp_path / "b", START, START + dt.timedelta(hours=1))


def test_usage_is_heavy_tailed_diurnal_and_quieter_at_weekends(tmp_path):
    tenants = [f"t{i:03d}" for i in range(1, 51)]
    end = START + dt.timedelta(days=7)
    simulate(str(tmp_path), tenants, START, end, seed=42)
    ingest = defaultdict(Decimal)
    by_day = defaultdict(Decimal)
    for r in _rows(tmp_path, START, end):
        if r["meter"] == "ingested_gb":
            ingest[r["tenant_id"]] += Decimal(r["value"])
            by_day[dt.datetime.fromisoformat(r["hour"]).weekday()] += Decimal(r["value"])
    top5 = sum(sorted(ingest.values(), reverse=True)[:5])
    assert top5 > Decimal("0.4") * sum(ingest.values())  # a few tenants dominate
    weekday = sum(by_day[d] for d in range(5)) / 5
    weekend = (by_day[5] + by_day[6]) / 2
    assert weekend < Decimal("0.8") * weekday
    assert all(Decimal(v) >= 0 for v in ingest.values())


def test_sources_split_each_tenant_hour_exactly_and_sources_zero_writes_todays_files(tmp_path):
    """Per tenant, meter and hour the sources add up to the no-source value to the last digit;
    ``sources=0`` is the default, byte for byte."""
    tenants = [f"t{i:03d}" for i in range(1, 9)]
    end = START + dt.timedelta(hours=3)
    simulate(str(tmp_path / "plain"), tenants, START, end, seed=5)
    simulate(str(tmp_path / "zero"), tenants, START, end, seed=5, sources=0)
    simulate(str(tmp_path / "split"), tenants, START, end, seed=5, sources=20)
    for plain in (tmp_path / "plain").rglob("*.*"):
        assert (tmp_path / "zero" / plain.relative_to(tmp_path / "plain")).read_bytes() == plain.read_bytes()
    expected = {(r["tenant_id"], r["meter"], r["hour"]): Decimal(r["value"])
                for r in _rows(tmp_path / "plain", START, end)}
    split = _rows(tmp_path / "split", START, end)
    sums = defaultdict(Decimal)
    for r in split:
        sums[r["tenant_id"], r["meter"], r["hour"]] += Decimal(r["value"])
        decimals = {"alerts_fired": 0, "query_cpu_seconds": 3}.get(r["meter"], 6)
        assert Decimal(r["value"]).as_tuple().exponent == -decimals, r
    assert sums == expected
    assert len({(r["tenant_id"], r["snapshot_id"]) for r in split}) == len(split)
    assert {r["source"] for r in split if r["meter"] == "ingested_gb"} <= {
        s.name for t in tenants for s in tenant_sources(5, t, 20).log_groups}


def test_sources_have_a_long_tail_stable_labels_and_some_never_query():
    for tenant in ("t001", "t007", "t042"):
        sources = tenant_sources(42, tenant, 20)
        assert sources == tenant_sources(42, tenant, 20)
        assert len(sources.log_groups) == len(sources.principals) == 20
        assert len({s.name for s in sources.log_groups}) == 20
        weights = sorted((s.weight for s in sources.log_groups), reverse=True)
        assert sum(weights[:5]) > sum(weights) / 2  # a quarter of the log groups hold most
        assert sum(weights[10:]) < sum(weights) / 5  # and a long tail of small ones
        scans = sorted((s.weight for s in sources.principals), reverse=True)
        assert sum(scans[:3]) > 0.6 * sum(scans)  # a few principals scan most
        assert all(dict(s.labels).keys() >= {"team", "env", "app"} for s in sources.log_groups + sources.principals)
        assert all(dict(s.labels)["user"] == s.name.removeprefix("user:")
                   for s in sources.principals if s.name.startswith("user:"))
    silent = [s for t in (f"t{i:03d}" for i in range(1, 21)) for s in tenant_sources(42, t, 20).principals
              if s.weight == 0]
    assert silent  # some principals never query: no snapshot of theirs at all


def test_split_exact_gives_the_remainder_to_the_largest_remainders():
    assert split_exact("1.000000", [1, 1, 1]) == ["0.333334", "0.333333", "0.333333"]
    assert split_exact("7", [5, 3, 0]) == ["4", "3", "0"]  # 4.375, 2.625: the .625 gets the unit
    assert split_exact("0.000", [2, 1]) == ["0.000", "0.000"]
