"""Recommendations priced at the tenant's own rates, and the what-if that prices them: on a
simulated month with sources, each saving is the month's invoice (as the warehouse issues it)
less the same month re-priced with the change — and where the change is one of configuration
(a price book, a commitment), less the invoice the warehouse issues after the change is made."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from decimal import Decimal

import fsspec
import pypdf
import pytest
import yaml

from chargeback.billing import invoices
from chargeback.engine import configuration, repricing, transform
from chargeback.insights import recommend, whatif
from chargeback.platform import warehouse
from conftest import database_of_its_own
from snapshots import publish_simulated

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PERIOD = "2026-10"
SEED = 11
SOURCES = 6
TENANTS = ["t001", "t002", "t011", "t025", "t038"]
MODELS = ("+fct_invoices +fct_usage_hourly +int_usage_sources_daily +int_usage_retention_hourly"
          " +int_usage_attribution_daily +dim_tenants +dim_meters fct_recommendations")


@pytest.fixture(scope="module")
def month(test_warehouse):
    with database_of_its_own("recommend"), pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")
        publish_simulated(TENANTS, START, END, seed=SEED, sources=SOURCES)
        transform.build(START, END, select=MODELS)
        with warehouse.connect() as conn:
            recs = recommend.recommend(conn, PERIOD)
        yield recs


def invoice_totals() -> dict[str, Decimal]:
    with warehouse.connect() as conn:
        return dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                 (dt.date(2026, 10, 1),)).fetchall())


@pytest.mark.warehouse
def test_the_month_as_it_was_prices_to_its_invoice_exactly(month):
    totals = invoice_totals()
    with warehouse.connect() as conn:
        catalog = repricing.load_catalog(conn)
        for tenant_id in TENANTS:
            c = whatif.compare(catalog, whatif.read_month(conn, tenant_id, dt.date(2026, 10, 1)), [])
            assert c.before.total == c.after.total == totals[tenant_id], tenant_id
            assert c.saving == Decimal("0.00")


@pytest.mark.warehouse
def test_every_kind_is_found_and_each_saving_is_the_invoice_less_the_month_repriced(month):
    totals = invoice_totals()
    assert {r.kind for r in month} == set(recommend.KINDS)
    with warehouse.connect() as conn:
        for r in month:
            c = whatif.whatif(conn, PERIOD, r.tenant_id, [r.change])
            assert c.before.total == r.invoice_total == totals[r.tenant_id]
            assert c.after.total == r.total_after
            assert r.saving == c.saving >= recommend.MIN_SAVING
    commitment = next(r for r in month if r.kind == "commitment")
    assert (commitment.tenant_id, commitment.change) == ("t002", "commitment=100.00")  # usage: 137.12 USD
    assert "true-up of 2,862.88 USD" in commitment.evidence
    retention = next(r for r in month if r.kind == "retention" and r.tenant_id == "t001")
    assert retention.change.endswith("=7d")
    assert "instead of 90" in retention.title  # t001's terms keep 90 days
    assert "0.0 GB read data older than 7 days" in retention.evidence


@pytest.mark.warehouse
def test_a_change_of_configuration_saves_what_its_recommendation_said(month, tmp_path, settings):
    """The price book and the commitment made for real: the warehouse's new invoices differ from
    the old ones by the recommendations' savings, to the cent."""
    price_fit = next(r for r in month if r.kind == "price_fit" and r.tenant_id == "t011")
    commitment = next(r for r in month if r.kind == "commitment")
    before = invoice_totals()
    config = tmp_path / "config"
    shutil.copytree(settings.root / "config", config)
    doc = yaml.safe_load((config / "tenants.yml").read_text())
    for t in doc["tenants"]:
        if t["tenant_id"] == "t011":
            t["price_book"] = price_fit.change.split("=", 1)[1]
        if t["tenant_id"] == "t002":
            t["terms"][-1]["monthly_commitment"] = commitment.change.split("=", 1)[1]
    (config / "tenants.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CHARGEBACK_CONFIG_DIR", str(config))
            configuration.load()
            transform.build(START, END, select="+fct_invoices")
        after = invoice_totals()
    finally:
        configuration.load()
        transform.build(START, END, select="+fct_invoices")
    assert before["t011"] - after["t011"] == price_fit.saving
    assert before["t002"] - after["t002"] == commitment.saving
    assert invoice_totals() == before


@pytest.mark.warehouse
def test_recommendations_are_kept_once_with_their_status_and_read_by_bi(month, capsys):
    from chargeback.cli import main

    assert main(["recommend", "--period", PERIOD]) == 0
    out = capsys.readouterr().out
    assert f"recommendations for {PERIOD}: {len(month)}" in out
    with warehouse.connect() as conn:
        (rec_id,) = conn.execute("select recommendation_id from insights.recommendations"
                                 " where tenant_id = 't002' and kind = 'commitment'").fetchone()
    assert main(["recommend", "dismiss", str(rec_id), "--by", "omar", "--reason", "contract renews in March"]) == 0
    assert main(["recommend", "--period", PERIOD, "--tenant", "t002"]) == 0  # a rerun keeps the status
    out = capsys.readouterr().out
    assert "dismissed by omar: contract renews in March" in out
    assert main(["recommend", "accept", str(rec_id), "--by", "x", "--reason", "y"]) == 1  # no longer open
    with warehouse.connect() as conn:
        rows = conn.execute("select count(*), count(*) filter (where status = 'dismissed'), sum(saving)"
                            " from marts.fct_recommendations where invoice_month = '2026-10-01'").fetchone()
    assert rows == (len(month), 1, sum((r.saving for r in month), Decimal("0.00")))


@pytest.mark.warehouse
def test_whatif_prints_both_invoices_line_by_line(month, capsys):
    from chargeback.cli import main

    retention = next(r for r in month if r.kind == "retention" and r.tenant_id == "t001")
    assert main(["whatif", "--period", PERIOD, "--tenant", "t001", "--set", retention.change,
                 "--set", "commitment=500.00"]) == 0
    out = capsys.readouterr().out
    totals = invoice_totals()
    assert f"re-priced with {retention.change}, commitment=500.00" in out
    assert "total  " in out
    assert f"{totals['t001']:,.2f}" in out
    assert "commitment true up" in out
    assert main(["whatif", "--period", PERIOD, "--tenant", "t001", "--set", "drop:/no/such/group"]) == 1
    assert "t001 has no source '/no/such/group' in 2026-10" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["retention:x=0d", "retention:x=7", "sample:x=1.5", "sample:x=0", "scans:x=abc",
                                  "commitment=-1", "commitment=10.001", "drop", "price_book:x=standard", "bogus",
                                  "retention:x"])
def test_a_change_that_makes_no_sense_is_refused_with_the_reason(text):
    with pytest.raises(whatif.WhatIfError, match="--set"):
        whatif.parse_change(text)


@pytest.mark.warehouse
def test_the_invoice_lists_the_tenants_top_three_ways_to_pay_less(month, settings):
    with warehouse.connect() as conn:
        recommend.store(conn, month, PERIOD)
    records = invoices.render_month(PERIOD, workers=1)
    t011 = next(r for r in records if r.tenant_id == "t011")
    with fsspec.open(t011.pdf_uri, "rb") as fh:
        text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(fh.read())).pages).split())
    top = sorted((r for r in month if r.tenant_id == "t011"), key=lambda r: -r.saving)
    assert "ways to pay less" in text.lower()  # the heading prints in capitals
    for r in top[:3]:
        assert f"{r.saving:,.2f}" in text, r
    assert f"{top[3].saving:,.2f}" not in text  # three at most


def test_a_source_may_hold_colons_and_equals_signs():
    assert whatif.parse_change("scans:user:alice=0.5") == whatif.Change("scans", "user:alice", "0.5")
    assert whatif.parse_change("retention:/app/a=b=7d") == whatif.Change("retention", "/app/a=b", "7d")
    assert whatif.parse_change("drop:/app/a=b") == whatif.Change("drop", "/app/a=b", None)
    assert whatif.parse_change("commitment=2000") == whatif.Change("commitment", None, "2000")
