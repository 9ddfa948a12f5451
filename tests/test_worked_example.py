"""The README's worked example, reproduced by the whole pipeline to the cent.

`examples/worked_example/` holds its configuration (three tenants, every allocation
method and pricing model, a price change on 16 September) and its usage (the same
every hour of September 2026). The files go through the real load path (landing
files -> COPY -> gate -> publish), dbt builds the marts, and the PDFs are rendered
and read back. Every figure asserted here is a figure printed in the README's
"Worked example" section; if one changes, both change together.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pypdf import PdfReader

from chargeback.billing import close, summary
from chargeback.engine import configuration, transform
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import steps
from chargeback.platform import warehouse

pytestmark = pytest.mark.warehouse

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "worked_example"
START = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 10, 1, tzinfo=UTC)
D = Decimal
UNITS = {"ingested_gb": "GB", "stored_gb": "GB", "scanned_gb": "GB", "query_cpu_seconds": "s",
         "alerts_fired": "alerts"}


def query(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def write_landing(landing: Path) -> int:
    """One JSON Lines file per hour with the example's hourly usage; returns the row count."""
    spec = yaml.safe_load((EXAMPLE / "usage.yml").read_text())["hourly_usage"]
    rows = 0
    hour = START
    while hour < END:
        folder = landing / "usage" / f"{hour:%Y-%m-%d}" / f"{hour:%H}"
        folder.mkdir(parents=True)
        lines = []
        for tenant, meters in spec.items():
            for meter, value in meters.items():
                lines.append(json.dumps({
                    "snapshot_id": f"example/{tenant}/{meter}/{hour:%Y%m%d%H}",
                    "tenant_id": tenant,
                    "meter": meter,
                    "value": str(value),
                    "unit": UNITS[meter],
                    "hour": f"{hour:%Y-%m-%dT%H:%M:%SZ}",
                    "emitted_at": f"{hour + timedelta(minutes=5):%Y-%m-%dT%H:%M:%SZ}",
                    "kind": "gauge" if meter == "stored_gb" else "counter",
                }))
        (folder / "usage.jsonl").write_text("\n".join(lines) + "\n")
        rows += len(lines)
        hour += timedelta(hours=1)
    return rows


def write_hostile(landing: Path) -> None:
    """A hostile producer in the same month: its own landing prefix (``mallory``, not a tenant)
    with rows forging other tenants' usage and snapshot ids, an overflowing value, an hour in
    1970, a byte-order mark and a NUL line; and junk in the shared folders."""
    hour = datetime(2026, 9, 10, 5, tzinfo=UTC)
    folder = landing / "usage" / "mallory" / f"{hour:%Y-%m-%d}" / f"{hour:%H}"
    folder.mkdir(parents=True)

    def row(tenant: str, snapshot_id: str, value: str, at: datetime = hour) -> bytes:
        return json.dumps({"snapshot_id": snapshot_id, "tenant_id": tenant, "meter": "ingested_gb", "value": value,
                           "unit": "GB", "hour": f"{at:%Y-%m-%dT%H:%M:%SZ}", "emitted_at": f"{hour:%Y-%m-%dT%H:%M:%SZ}",
                           "kind": "counter"}).encode() + b"\n"

    (folder / "agent.jsonl").write_bytes(
        b"\xef\xbb\xbf" + row("acme", f"example/acme/ingested_gb/{hour:%Y%m%d%H}", "1e30")
        + row("globex", "forged-1", "12") + row("initech", "forged-2", "3", datetime(1970, 1, 1, tzinfo=UTC))
        + row("mallory", "own-1", "5") + b"\x00\x00\n")
    shared = landing / "usage" / "2026-09-12" / "07"
    (shared / "junk.bin").write_bytes(b"\x00\x01binary\n")
    (shared / "broken.jsonl.gz").write_bytes(b"not gzip\n")


@pytest.fixture(scope="module")
def september(test_warehouse, tmp_path_factory):
    """The example month loaded, transformed and invoiced in a database of its own."""
    name = f"{os.environ['CHARGEBACK_DATABASE']}_worked"
    scratch = tmp_path_factory.mktemp("worked")
    warehouse.drop_database(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_DATABASE", name)
        patch.setenv("CHARGEBACK_CONFIG_DIR", str(EXAMPLE / "config"))
        patch.setenv("CHARGEBACK_LANDING", str(scratch / "landing"))
        patch.setenv("CHARGEBACK_REPORTS_OUT", str(scratch / "out"))
        rows = write_landing(scratch / "landing")
        write_hostile(scratch / "landing")  # every figure below holds with it landed
        steps.load_window(START, END, FileSource(str(scratch / "landing")))
        transform.build(START, END)
        records = close.render_drafts("2026-09", workers=1)
        yield {"rows": rows, "records": {r.tenant_id: r for r in records}}


def test_the_example_configuration_is_valid():
    cfg = configuration.read(EXAMPLE / "config")
    assert cfg.tenant_ids == ["acme", "globex", "initech"]


def test_every_snapshot_of_the_month_is_loaded(september):
    assert september["rows"] == 720 * 14
    assert query("select count(*) from raw.usage_snapshots") == [(720 * 14,)]


def test_a_hostile_producer_is_quarantined_and_changes_no_tenants_cent(september):
    """Every money figure of this module is asserted with the hostile files of write_hostile landed."""
    assert query("select count(*) from raw.usage_snapshots where source_file like '%%mallory%%'") == [(0,)]
    reasons = query("select source_line, field, left(reason, 48) from raw.usage_quarantine"
                    " where source_file like '%%/mallory/%%' order by source_line")
    assert reasons == [
        (1, "tenant_id", "tenant_id: 'acme' in a file under tenant 'mallor"),
        (2, "tenant_id", "tenant_id: 'globex' in a file under tenant 'mall"),
        (3, "tenant_id", "tenant_id: 'initech' in a file under tenant 'mal"),
        (4, "tenant_id", "tenant_id: unknown tenant 'mallory' (not in conf"),
        (5, "record", "record: a NUL byte at column 1"),
    ]
    rejected = query("select split_part(file_url, '/', -1), rows_in, rows_quarantined from pipeline.load_files"
                     " where status = 'rejected' order by 1")
    assert rejected == [("broken.jsonl.gz", 0, 0), ("junk.bin", 1, 1)]
    # rows in = loaded + duplicates + quarantined, for every file the loader saw
    assert query("select count(*) from pipeline.load_files"
                 " where rows_in <> rows_loaded + rows_duplicate + rows_quarantined") == [(0,)]


# (tenant or None, pool) -> cost of September, README table "Cost to serve"
ALLOCATED = {
    ("acme", "compute"): D("864.00"), ("globex", "compute"): D("432.00"), ("initech", "compute"): D("432.00"),
    (None, "compute"): D("432.00"),
    ("acme", "storage"): D("720.00"), ("globex", "storage"): D("360.00"), ("initech", "storage"): D("360.00"),
    ("acme", "network"): D("360.00"), ("globex", "network"): D("180.00"), ("initech", "network"): D("180.00"),
    ("acme", "platform_team"): D("1800.00"), ("globex", "platform_team"): D("1080.00"),
    ("initech", "platform_team"): D("720.00"),
    ("acme", "security"): D("244.80"), ("globex", "security"): D("237.60"), ("initech", "security"): D("237.60"),
    ("acme", "support"): D("720.00"), ("globex", "support"): D("432.00"), ("initech", "support"): D("288.00"),
    ("initech", "dedicated"): D("360.00"),
    ("acme", "observability"): D("144.00"), ("globex", "observability"): D("432.00"),
    ("initech", "observability"): D("144.00"),
}


def test_cost_to_serve_per_tenant_and_pool_is_the_readme_table(september):
    rows = query(
        "select tenant_id, pool, sum(allocated_cost) from marts.fct_cost_allocations_monthly"
        " where cost_month = date '2026-09-01' group by 1, 2"
    )
    assert {(t, p): amount for t, p, amount in rows} == ALLOCATED
    assert sum(ALLOCATED.values()) == D("11160.00")


def test_idle_capacity_is_visible_kept_or_redistributed(september):
    rows = query(
        "select pool, tenant_id, sum(allocated_cost) from marts.fct_cost_allocations_monthly"
        " where cost_month = date '2026-09-01' and cost_type = 'idle' group by 1, 2"
    )
    assert {(p, t): amount for p, t, amount in rows} == {
        ("compute", None): D("432.00"),
        ("storage", "acme"): D("144.00"), ("storage", "globex"): D("72.00"), ("storage", "initech"): D("72.00"),
    }


def test_activity_based_costing_shows_each_activity_and_its_unit_cost(september):
    rows = query(
        "select component, tenant_id, sum(allocated_cost), min(unit_cost), max(unit_cost)"
        " from marts.fct_cost_allocations_hourly where pool = 'platform_team' group by 1, 2"
    )
    assert {(c, t): (amount, lo, hi) for c, t, amount, lo, hi in rows} == {
        ("ingest", "acme"): (D("720.00"), D("0.05"), D("0.05")),
        ("ingest", "globex"): (D("360.00"), D("0.05"), D("0.05")),
        ("ingest", "initech"): (D("360.00"), D("0.05"), D("0.05")),
        ("query", "acme"): (D("720.00"), D("0.01"), D("0.01")),
        ("query", "globex"): (D("360.00"), D("0.01"), D("0.01")),
        ("query", "initech"): (D("360.00"), D("0.01"), D("0.01")),
        ("alerting", "acme"): (D("360.00"), D("0.05"), D("0.05")),
        ("alerting", "globex"): (D("360.00"), D("0.05"), D("0.05")),
    }


# tenant -> [(meter, line_type, price_valid_from, quantity, unit_price, list_amount, discount, amount)]
V1, V2 = "2026-01-01", "2026-09-16"
LINES = {
    "acme": [
        ("ingested_gb", "free_allowance", V1, "10", "0", "0.00", "0.00", "0.00"),
        ("ingested_gb", "usage", V1, "500", "0.50", "250.00", "18.75", "231.25"),
        ("ingested_gb", "usage", V1, "500", "0.40", "200.00", "15.00", "185.00"),
        ("ingested_gb", "usage", V1, "6190", "0.30", "1857.00", "139.28", "1717.72"),
        ("ingested_gb", "usage", V2, "7200", "0.27", "1944.00", "145.80", "1798.20"),
        ("stored_gb", "usage", V1, "5000", "0.05", "250.00", "18.75", "231.25"),
        ("stored_gb", "usage", V2, "5000", "0.05", "250.00", "18.75", "231.25"),
        ("scanned_gb", "usage", V1, "36000", "0.003", "108.00", "8.10", "99.90"),
        ("scanned_gb", "usage", V2, "36000", "0.003", "108.00", "8.10", "99.90"),
        ("query_cpu_seconds", "usage", V1, "86400", "0.001", "86.40", "6.48", "79.92"),
        ("query_cpu_seconds", "usage", V2, "86400", "0.001", "86.40", "6.48", "79.92"),
        ("alerts_fired", "usage", V1, "3600", None, "72.00", "5.40", "66.60"),
        ("alerts_fired", "usage", V2, "3600", None, "72.00", "5.40", "66.60"),
    ],
    "globex": [
        ("ingested_gb", "free_allowance", V1, "10", "0", "0.00", "0.00", "0.00"),
        ("ingested_gb", "usage", V1, "500", "0.50", "250.00", "0.00", "250.00"),
        ("ingested_gb", "usage", V1, "500", "0.40", "200.00", "0.00", "200.00"),
        ("ingested_gb", "usage", V1, "2590", "0.30", "777.00", "0.00", "777.00"),
        ("ingested_gb", "usage", V2, "3600", "0.27", "972.00", "0.00", "972.00"),
        ("stored_gb", "usage", V1, "2500", "0.03", "75.00", "0.00", "75.00"),
        ("stored_gb", "usage", V2, "2500", "0.03", "75.00", "0.00", "75.00"),
        ("scanned_gb", "usage", V1, "18000", "0.004", "72.00", "0.00", "72.00"),
        ("scanned_gb", "usage", V2, "18000", "0.004", "72.00", "0.00", "72.00"),
        ("query_cpu_seconds", "usage", V1, "43200", "0.001", "43.20", "0.00", "43.20"),
        ("query_cpu_seconds", "usage", V2, "43200", "0.001", "43.20", "0.00", "43.20"),
        ("alerts_fired", "usage", V1, "3600", None, "72.00", "0.00", "72.00"),
        ("alerts_fired", "usage", V2, "3600", None, "72.00", "0.00", "72.00"),
        (None, "commitment_true_up", None, "1", None, "276.60", "0.00", "276.60"),
    ],
    "initech": [
        ("ingested_gb", "free_allowance", V1, "10", "0", "0.00", "0.00", "0.00"),
        ("ingested_gb", "usage", V1, "500", "0.50", "250.00", "0.00", "250.00"),
        ("ingested_gb", "usage", V1, "500", "0.40", "200.00", "0.00", "200.00"),
        ("ingested_gb", "usage", V1, "2590", "0.30", "777.00", "0.00", "777.00"),
        ("ingested_gb", "usage", V2, "3600", "0.27", "972.00", "0.00", "972.00"),
        ("stored_gb", "usage", V1, "2500", "0.02", "50.00", "0.00", "50.00"),
        ("stored_gb", "usage", V2, "2500", "0.02", "50.00", "0.00", "50.00"),
        ("scanned_gb", "usage", V1, "18000", "0.004", "72.00", "0.00", "72.00"),
        ("scanned_gb", "usage", V2, "18000", "0.004", "72.00", "0.00", "72.00"),
        ("query_cpu_seconds", "usage", V1, "43200", "0.001", "43.20", "0.00", "43.20"),
        ("query_cpu_seconds", "usage", V2, "43200", "0.001", "43.20", "0.00", "43.20"),
        (None, "overage_uplift", None, "529.40", "0.10", "52.94", "0.00", "52.94"),
    ],
}
TOTALS = {"acme": D("4887.51"), "globex": D("3000.00"), "initech": D("2582.34")}


def _key(line: tuple) -> tuple:
    meter, line_type, valid_from, quantity, unit_price, list_amount, discount, amount = line
    return (meter or "", line_type, str(valid_from or ""), D(quantity).normalize(),
            None if unit_price is None else D(unit_price).normalize(), D(list_amount), D(discount), D(amount))


@pytest.mark.parametrize("tenant", sorted(LINES))
def test_invoice_lines_are_the_readme_lines(september, tenant):
    rows = query(
        "select meter, line_type, price_valid_from, quantity, unit_price, list_amount, discount_amount, amount"
        " from marts.fct_invoice_lines where invoice_month = date '2026-09-01' and tenant_id = %s", tenant,
    )
    # the package model prices blocks, not units: its unit price is not compared
    got = sorted(_key(r[:4] + ((None,) if r[0] == "alerts_fired" else (r[4],)) + r[5:]) for r in rows)
    assert got == sorted(_key(line) for line in LINES[tenant])


def test_invoice_totals_are_the_sum_of_their_lines(september):
    rows = query("select tenant_id, total from marts.fct_invoices where invoice_month = date '2026-09-01'")
    assert dict(rows) == TOTALS
    assert sum(TOTALS.values()) == D("10469.85")


def test_the_two_ledgers_show_cost_billed_and_margin_per_tenant(september):
    rows = query(
        "select tenant_id, sum(cost_to_serve), sum(billed), sum(margin) from marts.fct_ledger_monthly"
        " where invoice_month = date '2026-09-01' and tenant_id is not null group by 1"
    )
    assert {t: (c, b, m) for t, c, b, m in rows} == {
        "acme": (D("4852.80"), D("4887.51"), D("34.71")),
        "globex": (D("3153.60"), D("3000.00"), D("-153.60")),
        "initech": (D("2721.60"), D("2582.34"), D("-139.26")),
    }


@pytest.mark.parametrize("tenant", sorted(TOTALS))
def test_each_pdf_prints_the_readme_total_and_lines(september, tenant):
    record = september["records"][tenant]
    text = "".join(page.extract_text() for page in PdfReader(record.pdf_uri).pages)  # a draft
    assert record.total == TOTALS[tenant]
    assert f"{TOTALS[tenant]:,.2f} USD" in text
    for line in LINES[tenant]:
        assert f"{D(line[-1]):,.2f}" in text


def test_finance_summary_shows_both_ledgers_and_what_makes_them_up(september):
    s = summary.month_summary("2026-09")
    assert (s.infrastructure_cost, s.allocated, s.idle_redistributed, s.idle_kept, s.unallocated) == (
        D("11160.00"), D("10440.00"), D("288.00"), D("432.00"), D("0.00"))
    assert (s.list_price, s.discounts, s.commitment_true_ups, s.overage_uplifts, s.billed) == (
        D("10536.60"), D("396.29"), D("276.60"), D("52.94"), D("10469.85"))
    assert s.margin == D("-690.15")
    assert [(o.organisation, o.cost_to_serve, o.billed, o.margin) for o in s.organisations] == [
        ("(platform)", D("432.00"), D("0.00"), D("-432.00")),
        ("Acme", D("4852.80"), D("4887.51"), D("34.71")),
        ("Globex", D("3153.60"), D("3000.00"), D("-153.60")),
        ("Initech", D("2721.60"), D("2582.34"), D("-139.26")),
    ]
    lines = summary.render(s).splitlines()
    assert f"{'  billed to tenants':<40}{'10,469.85 USD':>26}" in lines
    assert f"{'    idle capacity, kept by the platform':<40}{'432.00 USD':>26}" in lines
    assert f"{'Margin (billed - cost)':<40}{'-690.15 USD':>26}" in lines
