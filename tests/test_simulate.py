"""The simulator: seeded, reproducible, realistic enough to exercise the pipeline."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from decimal import Decimal

from chargeback.ingest.simulate import simulate
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
