"""Showback below the tenant, on a real warehouse with dbt: the same simulated usage loaded
once as tenant totals and once split over 20 sources per tenant. Sources and label values
add up exactly to their tenant per meter, day and ledger; the split follows the
largest-remainder rule; files without sources load as before and the invoices are the same
to the cent either way."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from decimal import ROUND_FLOOR, Decimal

import pytest

from chargeback.engine import configuration
from chargeback.ingest.simulate import simulate
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import steps
from chargeback.platform import warehouse
from conftest import database_of_its_own

pytestmark = pytest.mark.warehouse

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = START + dt.timedelta(days=2)
TENANTS = 8


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def _load(suffix: str, sources: int, tmp_path_factory) -> str:
    with database_of_its_own(suffix) as name:
        landing = tmp_path_factory.mktemp(f"landing_{suffix}")
        settings = dataclasses.replace(steps.get_settings(), landing=str(landing))
        ids = configuration.read().tenant_ids[:TENANTS]
        simulate(str(landing), ids, START, END, seed=11, sources=sources)
        steps.run_usage_window(START, END, FileSource(str(landing)), settings, restate=False)
    return name


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """``plain``: tenant totals only (files as before sources); ``split``: 20 sources per tenant."""
    return {"plain": _load("plain", 0, tmp_path_factory), "split": _load("split", 20, tmp_path_factory)}


@pytest.fixture
def split(databases, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_DATABASE", databases["split"])


@pytest.fixture
def plain(databases, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_DATABASE", databases["plain"])


LEDGER = "select ledger_day, tenant_id, meter, currency, cost_to_serve, billed_amount from marts.int_ledger_daily"


def test_sources_add_up_to_their_tenant_per_meter_day_and_ledger(split):
    ledger = {row[:4]: row[4:] for row in query(LEDGER)}
    parts = {row[:4]: row[4:] for row in query(
        "select ledger_day, tenant_id, meter, currency, sum(cost_to_serve), sum(billed_amount)"
        " from marts.fct_showback_sources_daily group by 1, 2, 3, 4")}
    assert parts == ledger
    assert sum(b for _, b in ledger.values()) > 0
    assert sum(c for c, _ in ledger.values()) > 0
    (sources,) = query("select count(distinct (tenant_id, source)) from marts.fct_showback_sources_daily"
                       " where meter = 'ingested_gb'")
    assert sources[0] == TENANTS * 20
    shared = query("select distinct source from marts.fct_showback_sources_daily"
                   " where meter in ('(shared)', '(contract)')")
    assert shared == [("(shared)",)]


def test_a_meter_day_is_split_by_usage_with_the_largest_remainder(split):
    """Recompute one tenant-meter-day's split in Python from the source usage and the ledger."""
    (tenant, day, cost, billed), = query(
        "select tenant_id, ledger_day, cost_to_serve, billed_amount from marts.int_ledger_daily"
        " where meter = 'scanned_gb' and billed_amount > 1 order by billed_amount desc limit 1")
    weights = dict(query("select source, quantity from intermediate.int_usage_sources_daily"
                         " where tenant_id = %s and usage_day = %s and meter = 'scanned_gb'", tenant, day))
    rows = {source: (c, b, share) for source, c, b, share in query(
        "select source, cost_to_serve, billed_amount, usage_share from marts.fct_showback_sources_daily"
        " where tenant_id = %s and ledger_day = %s and meter = 'scanned_gb'", tenant, day)}
    assert set(rows) == set(weights)
    assert {s: _largest_remainder(cost, weights)[s] for s in weights} == {s: r[0] for s, r in rows.items()}
    assert {s: _largest_remainder(billed, weights)[s] for s in weights} == {s: r[1] for s, r in rows.items()}
    top = max(weights, key=weights.get)
    assert rows[top][2] == round(weights[top] / sum(weights.values()), 12)


def _largest_remainder(amount: Decimal, weights: dict[str, Decimal]) -> dict[str, Decimal]:
    total = sum(weights.values())
    exact = {s: amount * 100 * w / total for s, w in weights.items()}
    floors = {s: int(v.to_integral_value(ROUND_FLOOR)) for s, v in exact.items()}
    left = int(amount * 100) - sum(floors.values())
    for s in sorted(weights, key=lambda s: (-(exact[s] - floors[s]), s))[:left]:
        floors[s] += 1
    return {s: Decimal(c) / 100 for s, c in floors.items()}


def test_label_values_add_up_per_key_and_usage_without_the_key_is_none(split):
    ledger = {row[:4]: row[4:] for row in query(LEDGER)}
    keys = [k for (k,) in query("select label_key from config.label_keys order by 1")]
    assert set(keys) >= {"team", "env", "app", "user"}
    by_key = defaultdict(dict)
    for key, *rest in query(
            "select label_key, ledger_day, tenant_id, meter, currency, sum(cost_to_serve), sum(billed_amount)"
            " from marts.fct_showback_labels_daily group by 1, 2, 3, 4, 5"):
        by_key[key][tuple(rest[:4])] = tuple(rest[4:])
    assert set(by_key) == set(keys)
    for key in keys:
        assert by_key[key] == ledger, key
    # log groups carry no user label: ingest is '(none)' for the key user
    users = {v for (v,) in query("select distinct label_value from marts.fct_showback_labels_daily"
                                 " where label_key = 'user' and meter = 'ingested_gb'")}
    assert users == {"(none)"}
    scanners = {v for (v,) in query("select distinct label_value from marts.fct_showback_labels_daily"
                                    " where label_key = 'user' and meter = 'scanned_gb'")}
    assert len(scanners) > 3
    assert "(none)" in scanners


INVOICES = "select tenant_id, invoice_month, currency, total from marts.fct_invoices order by 1, 2"
LINES = ("select tenant_id, invoice_month, line_no, meter, quantity, amount from marts.fct_invoice_lines"
         " order by 1, 2, 3")


def test_files_without_sources_load_as_before_and_invoices_are_the_same_to_the_cent(databases, monkeypatch):
    results = {}
    for name, database in databases.items():
        monkeypatch.setenv("CHARGEBACK_DATABASE", database)
        results[name] = (query(INVOICES), query(LINES), query(LEDGER + " order by 1, 2, 3, 4"),
                         query("select tenant_id, meter, hour_start, quantity from marts.fct_usage_hourly"
                               " order by 1, 2, 3"))
        if name == "plain":
            assert query("select distinct source, labels::text from raw.usage_snapshots") == [("(none)", "{}")]
            assert query("select distinct source from marts.fct_showback_sources_daily"
                         " where meter not in ('(shared)', '(contract)')") == [("(none)",)]
    assert results["plain"][0]
    assert results["plain"][1]
    assert results["split"] == results["plain"]


def _pdf_text(path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_the_invoice_appendix_names_the_top_sources_with_the_marts_shares(databases, monkeypatch, tmp_path):
    """Drafts rendered to real PDFs and read back: each split tenant's appendix lists, per meter,
    the top five sources by the month's usage and "other"; each meter's invoiced amount (the sum
    of its lines) is split over the sources by their usage in the month with the largest
    remainder, recomputed here from the marts, so the printed amounts add up to it exactly and
    each source's share of the amount is its share of the usage to the cent. The tenant-total
    warehouse prints none."""
    import re

    from chargeback.billing import invoices
    from chargeback.billing.appendix import other_label, percent
    from chargeback.billing.formatting import format_quantity

    texts, records = {}, {}
    for name, database in databases.items():
        monkeypatch.setenv("CHARGEBACK_DATABASE", database)
        monkeypatch.setenv("CHARGEBACK_REPORTS_OUT", str(tmp_path / name))
        records[name] = invoices.render_month("2026-10", workers=1, issue_date=dt.date(2026, 11, 4))
        texts[name] = {r.tenant_id: _pdf_text(r.pdf_uri) for r in records[name]}
    assert records["plain"]
    assert not any("where your usage came from" in text.lower() for text in texts["plain"].values())

    monkeypatch.setenv("CHARGEBACK_DATABASE", databases["split"])
    hours = Decimal(31 * 24)
    billed = defaultdict(lambda: Decimal(0))
    for tenant, meter, amount in query("select tenant_id, meter, amount from marts.fct_invoice_lines"
                                       " where invoice_month = '2026-10-01' and meter is not null"):
        billed[tenant, meter] += amount
    usage = defaultdict(dict)
    kinds = {}
    for tenant, meter, source, quantity, kind in query(
            "select tenant_id, meter, source, sum(quantity), min(kind) from intermediate.int_usage_sources_daily"
            " where usage_day >= '2026-10-01' and usage_day < '2026-11-01' group by 1, 2, 3"):
        usage[tenant, meter][source] = quantity
        kinds[tenant, meter] = kind
    meters = sorted(set(billed) | set(usage))
    assert {t for t, _ in meters} == set(texts["split"])
    checked = 0
    for tenant, text in texts["split"].items():
        assert "where your usage came from" in text.lower()
        lines = ["".join(line.split()) for line in text.splitlines()]  # a long source name may wrap
        for meter in sorted(m for t, m in meters if t == tenant):
            amount, weights = billed[tenant, meter], usage[tenant, meter] or {"(none)": Decimal(0)}
            total = sum(weights.values())
            split = _largest_remainder(amount, weights if total else {s: Decimal(1) for s in weights})
            assert sum(split.values()) == amount
            for source, weight in weights.items() if total else ():  # shares of amount follow usage, to the cent
                assert abs(split[source] - amount * weight / total) < Decimal("0.01")
            ranked = sorted(weights, key=lambda s: (-weights[s], -split[s], s.encode()))
            named = [s for s in ranked if weights[s] or split[s]][:5]
            rest = [s for s in ranked if s not in named]
            rows = [line for line in lines if line.startswith(meter) and "%" in line]
            printed = []
            for source in named:
                quantity = weights[source]
                if kinds.get((tenant, meter)) == "gauge":  # printed in unit-months
                    quantity = round(quantity / hours, 12)
                (line,) = [line for line in rows if line.startswith(f"{meter}{source}{format_quantity(quantity)}")]
                assert "".join(percent(weights[source] / total if total else Decimal(0)).split()) in line
                assert "".join(percent(split[source] / amount if amount else None).split()) in line
                printed.append(line)
            others = [line for line in rows if line.startswith(f"{meter}other(")]
            if any(weights[s] or split[s] for s in rest):
                (other,) = others
                assert other.startswith(f"{meter}{''.join(other_label(len(rest)).split())}")
                assert "".join(percent(sum(weights[s] for s in rest) / total).split()) in other
                printed.append(other)
            else:
                assert not others
            amounts = [Decimal(re.search(r"%(-?[\d,]*\d\.\d{2})(?:\d+\.\d%|—)$", line)[1].replace(",", ""))
                       for line in printed]
            expected = [split[s] for s in named] + ([sum(split[s] for s in rest)] if len(printed) > len(named) else [])
            assert amounts == expected
            assert sum(amounts) == amount  # the printed amounts add up to the meter's lines exactly
            checked += 1
    assert checked >= len(texts["split"]) * 3
    assert other_label(1) == "other (1 source)"
    assert other_label(2) == "other (2 sources)"


def test_trends_below_the_tenant_add_up_to_the_tenant_series(split):
    """fct_trends_sources_daily: per day and meter, a tenant's sources add up to its row of
    fct_trends_daily, and each label key's values to the sum of the tenants."""
    tenant_rows = {row[:3]: row[3:] for row in query(
        "select trend_day, tenant_id, meter, cost_to_serve, billed_amount from marts.fct_trends_daily"
        " where scope_level = 'tenant' and tenant_id <> '(platform)'")}
    sources = {row[:3]: row[3:] for row in query(
        "select trend_day, tenant_id, meter, sum(cost_to_serve), sum(billed_amount)"
        " from marts.fct_trends_sources_daily where scope_level = 'source' group by 1, 2, 3")}
    assert sources == tenant_rows
    totals = {row[:2]: row[2:] for row in query(
        "select trend_day, meter, sum(cost_to_serve), sum(billed_amount) from marts.fct_trends_daily"
        " where scope_level = 'tenant' and tenant_id <> '(platform)' group by 1, 2")}
    for key in ("team", "user"):
        labels = {row[:2]: row[2:] for row in query(
            "select trend_day, meter, sum(cost_to_serve), sum(billed_amount) from marts.fct_trends_sources_daily"
            " where scope_level = 'label' and scope_key like %s group by 1, 2", f"{key}=%")}
        assert labels == totals, key
    (wow,) = query("select count(*) from marts.fct_trends_sources_daily where usage_wow_delta is not null")[0]
    assert wow == 0  # two days of history: no same weekday last week yet
