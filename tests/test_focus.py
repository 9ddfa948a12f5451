"""The FOCUS export: exact numeric text, ASCII strings, and files that the FinOps
Foundation's focus-validator (FOCUS 1.2, bundled rules, downloads blocked) passes.

The validator lives in its own Python 3.12 venv: ``make focus-validator``. Without it the
validator tests fail (they do not skip). The ``warehouse`` tests build a month through the
real dbt project (fct_invoice_lines and fct_cost_allocations_monthly as in
docs/COST_ENGINE.md) and export it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from decimal import Decimal as D
from pathlib import Path

import fsspec
import pytest

from chargeback.billing import focus

PERIOD = "2031-05"  # a month no other test module builds
MONTH = dt.date(2031, 5, 1)
TENANTS = ("t001", "t002", "t003")


@pytest.fixture(scope="session")
def validator() -> Path:
    executable = focus.validator_executable()
    if not executable.exists():
        pytest.fail(f"the FOCUS validator is missing ({executable}): run `make focus-validator`")
    return executable


# --------------------------------------------------------------------------- pure


def test_numbers_are_written_exactly_without_exponent_or_float_noise():
    assert focus.decimal_text(D("0.405000000000000000")) == "0.405"
    assert focus.decimal_text(D("82.098761932098450000")) == "82.09876193209845"
    assert focus.decimal_text(D("12.50")) == "12.50"
    assert focus.decimal_text(D("0E-18")) == "0.00"
    assert focus.decimal_text(D("5")) == "5"
    assert focus.decimal_text(D("1E+3")) == "1000"
    assert focus.decimal_text(D("-3.10")) == "-3.10"


def test_strings_are_folded_to_ascii_and_json_keeps_every_character():
    assert focus.ascii_text("Log data ingested — tier 1") == "Log data ingested - tier 1"
    assert focus.ascii_text("Société Générale “prod”") == 'Societe Generale "prod"'
    assert focus.ascii_text("plain") == "plain"
    columns = [focus.Column("Tags", "json"), focus.Column("SubAccountName", "text"),
               focus.Column("BilledCost", "numeric", 2)]
    tags, name, cost = focus._for_focus(columns, ('{"chargeback:team": "Équipe"}', "Équipe", D("1.00")))
    assert tags == '{"chargeback:team": "\\u00c9quipe"}'
    assert json.loads(tags) == {"chargeback:team": "Équipe"}
    assert (name, cost) == ("Equipe", D("1.00"))


def test_parquet_goes_next_to_the_csv():
    assert focus.parquet_path(Path("out/focus-2031-05.csv")) == Path("out/focus-2031-05.parquet")
    assert focus.parquet_path(Path("out/focus")) == Path("out/focus.parquet")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="--format"):
        focus.export(PERIOD, "x.csv", fmt="xlsx")


# --------------------------------------------------------------------------- the validator on a hand-written file

BASE = {
    "BillingAccountId": "Globex", "BillingAccountName": "Globex", "BillingCurrency": "USD",
    "BillingPeriodStart": "2031-05-01T00:00:00Z", "BillingPeriodEnd": "2031-06-01T00:00:00Z",
    "ChargePeriodStart": "2031-05-01T00:00:00Z", "ChargePeriodEnd": "2031-06-01T00:00:00Z",
    "InvoiceId": "2031-05/t001", "InvoiceIssuerName": "Chargeback Log Platform",
    "ProviderName": "Chargeback Log Platform", "PublisherName": "Chargeback Log Platform",
    "ServiceCategory": "Management and Governance", "ServiceSubcategory": "Observability",
    "ServiceName": "Log Platform", "SubAccountId": "t001", "SubAccountName": "Globex Cloud risk-staging",
    "PricingCurrency": "USD",
    "Tags": '{"chargeback:organisation": "Globex", "chargeback:business_unit": "Cloud", "chargeback:team": "risk"}',
}
USAGE = {  # 1234.567 GB at 0.50 list, 10% off: the products are exact, BilledCost is the rounded invoice amount
    "BilledCost": "555.55", "EffectiveCost": "555.55", "PricingCurrencyEffectiveCost": "555.55",
    "ListCost": "617.2835", "ContractedCost": "555.55515", "ListUnitPrice": "0.50", "ContractedUnitPrice": "0.45",
    "PricingCurrencyListUnitPrice": "0.50", "PricingCurrencyContractedUnitPrice": "0.45",
    "PricingQuantity": "1234.567", "PricingUnit": "GB", "ConsumedQuantity": "1234.567", "ConsumedUnit": "GB",
    "ChargeCategory": "Usage", "ChargeFrequency": "Usage-Based", "PricingCategory": "Standard",
    "ChargeDescription": "Log data ingested - tier 1", "SkuId": "ingested_gb", "SkuMeter": "ingested_gb",
    "SkuPriceId": "standard/ingested_gb/2020-01-01/tier-1", "SkuPriceDetails": '{"x_PricingModel": "graduated"}',
    "x_ChargeSource": "invoice",
}
TRUE_UP = {
    "BilledCost": "100.00", "EffectiveCost": "100.00", "PricingCurrencyEffectiveCost": "100.00",
    "ListCost": "100.00", "ContractedCost": "100.00", "ChargeCategory": "Adjustment", "ChargeFrequency": "Recurring",
    "ChargeDescription": "Minimum monthly commitment true-up", "x_ChargeSource": "invoice",
}
ALLOCATED = {
    "BilledCost": "0.00", "EffectiveCost": "123.45", "PricingCurrencyEffectiveCost": "123.45",
    "ListCost": "123.45", "ContractedCost": "123.45", "ListUnitPrice": "123.45", "ContractedUnitPrice": "123.45",
    "PricingCurrencyListUnitPrice": "123.45", "PricingCurrencyContractedUnitPrice": "123.45",
    "PricingQuantity": "1", "PricingUnit": "Month", "ConsumedQuantity": "1", "ConsumedUnit": "Month",
    "ChargeCategory": "Usage", "ChargeFrequency": "Recurring", "PricingCategory": "Standard",
    "ChargeDescription": "Cost to serve: compute pool, query_cpu_seconds (proportional)", "ResourceId": "compute",
    "SkuId": "cost-pool/compute", "SkuMeter": "query_cpu_seconds",
    "SkuPriceId": "cost-pool/compute/1/query_cpu_seconds", "SkuPriceDetails": '{"x_Pool": "compute"}',
    "AllocatedMethodId": "proportional", "AllocatedResourceId": "t001", "AllocatedResourceName": "Globex Cloud",
    "AllocatedMethodDetails": '{"Elements": [{"AllocatedRatio": 0.1, "UsageUnit": "s", "UsageQuantity": 12.5}]}',
    "x_ChargeSource": "allocation",
}
COLUMNS = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "CommitmentDiscountStatus", "ConsumedQuantity", "ConsumedUnit", "ContractedCost",
    "ContractedUnitPrice", "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost", "ListUnitPrice",
    "PricingCategory", "PricingCurrency", "PricingCurrencyContractedUnitPrice", "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ResourceId",
    "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId", "SkuMeter", "SkuPriceDetails", "SkuPriceId",
    "SubAccountId", "SubAccountName", "Tags", "AllocatedMethodDetails", "AllocatedMethodId", "AllocatedResourceId",
    "AllocatedResourceName", "x_ChargeSource",
]


def _write(path: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.focus_validator
def test_usage_adjustment_and_allocated_rows_pass_the_validator(validator, tmp_path):
    report = focus.validate(_write(tmp_path / "ok.csv", [BASE | USAGE, BASE | TRUE_UP, BASE | ALLOCATED]))
    assert report.ok, report.summary() + "\n" + report.output
    assert report.statuses["InvoiceId-C-003-C"] == "PASS"
    assert "--block-download" in report.command
    assert "1.2" in report.command

CORRECTION = {  # a debit note issued in May 2031 for usage of April 2031 that arrived after its invoice
    "BilledCost": "31.50", "EffectiveCost": "31.50", "PricingCurrencyEffectiveCost": "31.50",
    "ListCost": "31.50", "ContractedCost": "31.50", "ChargeCategory": "Adjustment", "ChargeClass": "Correction",
    "ChargeFrequency": "One-Time", "ChargePeriodStart": "2031-04-01T00:00:00Z",
    "ChargePeriodEnd": "2031-05-01T00:00:00Z", "InvoiceId": "CB-2031-000042",
    "ChargeDescription": "Correction of invoice CB-2031-000007 (2031-04): Usage - difference",
    "x_ChargeSource": "correction",
}


@pytest.mark.focus_validator
def test_correction_rows_of_an_earlier_month_pass_the_validator(validator, tmp_path):
    """A debit and a credit: corrections of either sign are valid FOCUS rows."""
    rows = [BASE | USAGE]
    for amount in ("31.50", "-12.25"):
        rows.append(BASE | CORRECTION | dict.fromkeys(
            ("BilledCost", "EffectiveCost", "PricingCurrencyEffectiveCost", "ListCost", "ContractedCost"), amount))
    report = focus.validate(_write(tmp_path / "correction.csv", rows))
    assert report.ok, report.summary() + "\n" + report.output


# Each change breaks one rule in one row; one file holds them all (a validator run costs seconds),
# and every rule must be reported. The clean rows alone pass (the tests above).
BROKEN = [
    ({"BilledCost": ""}, "BilledCost-C-003-M"),  # null
    ({"ListUnitPrice": "-0.50"}, "ListUnitPrice-C-008-M"),  # negative
    ({"ProviderName": "Chargeback \u2014 Log Platform"}, "ProviderName-C-002-M"),  # not ASCII
    ({"Tags": "team=risk"}, "Tags-C-001-M"),  # not a JSON object
    ({"ChargeCategory": "usage"}, "ConsumedQuantity-C-004-C"),  # not Usage, so no quantity allowed
]


@pytest.mark.focus_validator
def test_a_broken_file_fails_the_validator_naming_each_broken_rule(validator, tmp_path):
    rows = [BASE | USAGE | change for change, _ in BROKEN] + [BASE | TRUE_UP]
    report = focus.validate(_write(tmp_path / "broken.csv", rows))
    assert not report.ok
    assert [rule for _, rule in BROKEN if rule not in report.errors] == [], report.summary()


@pytest.mark.focus_validator
def test_a_file_without_billed_cost_fails_the_validator(validator, tmp_path):
    columns = [c for c in COLUMNS if c != "BilledCost"]
    report = focus.validate(_write(tmp_path / "no-billed-cost.csv", [BASE | USAGE], columns))
    assert "CostAndUsage-D-006-M" in report.errors


# --------------------------------------------------------------------------- a month from the warehouse


def _snapshots(hours: int = 6) -> list[tuple]:
    """A few hours of every meter for three tenants, odd decimals included."""
    start = dt.datetime(MONTH.year, MONTH.month, 1, tzinfo=dt.UTC)
    meters = {"ingested_gb": ("GB", "counter", D("1234.5678")), "stored_gb": ("GB", "gauge", D("150012.5")),
              "scanned_gb": ("GB", "counter", D("25050.5")), "query_cpu_seconds": ("s", "counter", D("360075.25")),
              "alerts_fired": ("alerts", "counter", D("3"))}
    rows = []
    for t, tenant_id in enumerate(TENANTS, 1):
        for h in range(hours):
            hour = start + dt.timedelta(hours=h)
            for meter, (unit, kind, base) in meters.items():
                odd = D(h) if meter == "alerts_fired" else (D(h) / D(7)).quantize(D("0.000001"))
                rows.append((f"focus-{tenant_id}-{meter}-{h}", tenant_id, meter, base * t + odd, unit, hour,
                             hour + dt.timedelta(minutes=5), kind, "test_focus.py", len(rows) + 1, 0))
    return rows


@pytest.fixture(scope="module")
def may(test_warehouse, tmp_path_factory) -> Path:
    """May 2031 built through the real dbt project and exported (CSV; Parquet when pyarrow is there)."""
    from chargeback.engine import transform
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        conn.cursor().executemany(
            "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,"
            " kind, source_file, source_line, load_id) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict (tenant_id, snapshot_id) do nothing",
            _snapshots(),
        )
    start = dt.datetime(MONTH.year, MONTH.month, 1, tzinfo=dt.UTC)
    transform.build(start, dt.datetime(2031, 6, 1, tzinfo=dt.UTC))
    out = tmp_path_factory.mktemp("focus") / f"focus-{PERIOD}.csv"
    result = focus.export(PERIOD, out)
    assert result.files[0] == out
    return out


def _sum(rows: list[dict[str, str]], column: str, **where: str) -> D:
    return sum((D(r[column]) for r in rows if all(r[k] == v for k, v in where.items())), D("0"))


@pytest.mark.warehouse
@pytest.mark.focus_validator
def test_exported_month_passes_the_validator(validator, may):
    report = focus.validate(may)
    assert report.ok, report.summary() + "\n" + report.output
    assert report.failed - len(report.errors) <= 1  # at most the InvoiceId validator defect, excused


@pytest.mark.warehouse
def test_billed_cost_is_each_invoice_total_to_the_cent(may):
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        totals = dict(conn.execute("select tenant_id, total from marts.fct_invoices where invoice_month = %s",
                                   (MONTH,)).fetchall())
    rows = _rows(may)
    # the tenants with usage, and those with a minimum commitment (config/tenants.yml: t007, t008)
    assert sorted(totals) == sorted({*TENANTS, "t007", "t008"})
    for tenant_id, total in totals.items():
        assert _sum(rows, "BilledCost", SubAccountId=tenant_id) == total
        assert _sum(rows, "EffectiveCost", SubAccountId=tenant_id, x_ChargeSource="invoice") == total
    assert _sum(rows, "BilledCost", x_ChargeSource="allocation") == D("0.00")


@pytest.mark.warehouse
def test_cost_to_serve_rows_carry_every_allocated_cent(may):
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        allocated = dict(conn.execute(
            "select pool, sum(allocated_cost) from marts.fct_cost_allocations_monthly"
            " where cost_month = %s group by pool", (MONTH,)).fetchall())
    rows = _rows(may)
    assert allocated
    for pool, cost in allocated.items():
        assert _sum(rows, "EffectiveCost", x_ChargeSource="allocation", ResourceId=pool) == cost
    for row in (r for r in rows if r["x_ChargeSource"] == "allocation"):
        details = json.loads(row["AllocatedMethodDetails"])
        assert row["AllocatedMethodId"]
        assert details["Elements"][0]["AllocatedRatio"] >= 0
        assert row["AllocatedResourceId"] == row["SubAccountId"]


@pytest.mark.warehouse
def test_usage_list_cost_is_the_exact_product_and_rounds_to_the_invoice_list_amount(may):
    usage = [r for r in _rows(may) if r["x_ChargeSource"] == "invoice" and r["ChargeCategory"] == "Usage"]
    assert usage
    for row in usage:
        assert D(row["ListCost"]) == D(row["PricingQuantity"]) * D(row["ListUnitPrice"])
        assert D(row["ContractedCost"]) == D(row["PricingQuantity"]) * D(row["ContractedUnitPrice"])
        assert D(row["ListCost"]).quantize(D("0.01"), rounding="ROUND_HALF_UP") == D(row["x_InvoiceListAmount"])


def _blank_pdf() -> bytes:
    import io

    from pypdf import PdfWriter

    writer, out = PdfWriter(), io.BytesIO()
    writer.add_blank_page(width=595, height=842)
    writer.write(out)
    return out.getvalue()


@pytest.mark.warehouse
def test_export_names_the_platform_and_uses_issued_invoice_numbers(may, tmp_path):
    from chargeback.platform import warehouse

    rows = _rows(may)
    assert {r["ProviderName"] for r in rows} == {r["InvoiceIssuerName"] for r in rows} == {"Chargeback Log Platform"}
    assert {r["InvoiceId"] for r in rows if r["SubAccountId"] == "t002"} == {f"{PERIOD}/t002"}  # provisional
    # an issued (final) invoice of t002: final documents are immutable, so it stays; an issuer of
    # its own keeps it out of the real issuer's gapless sequence, a real file keeps `verify` true
    pdf = _blank_pdf()  # a real PDF without embedded lines: verify reports it as issued before them
    with fsspec.open("memory://focus-test/CB-2031-999999.pdf", "wb") as fh:
        fh.write(pdf)
    with warehouse.connect(admin=True) as conn:  # a final row: only the owner writes one directly
        conn.execute(
            "insert into pipeline.invoices (invoice_number, issuer, tenant_id, period_start, period_end, close_period,"
            " currency, total, pdf_uri, pdf_sha256, status, issue_date, finalized_at, usage_as_of)"
            " values ('CB-2031-999999', 'focus-test', 't002', %s, %s, %s, 'USD', 0,"
            " 'memory://focus-test/CB-2031-999999.pdf', %s, 'final', '2031-06-04', now(), now())",
            (MONTH, dt.date(2031, 5, 31), MONTH, hashlib.sha256(pdf).hexdigest()),
        )
    again = focus.export(PERIOD, tmp_path / "again.csv", fmt="csv")
    rows = _rows(again.files[0])
    assert {r["InvoiceId"] for r in rows if r["SubAccountId"] == "t002"} == {"CB-2031-999999"}
    assert {r["InvoiceId"] for r in rows if r["SubAccountId"] == "t001"} == {f"{PERIOD}/t001"}


@pytest.mark.warehouse
@pytest.mark.focus_validator
def test_exported_parquet_is_exact_and_passes_the_validator(validator, may):
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet export needs pyarrow (not a dependency yet)")
    parquet = focus.parquet_path(may)
    table = pq.read_table(parquet)
    assert str(table.schema.field("BilledCost").type).startswith("decimal128")
    csv_billed = [D(r["BilledCost"]) for r in _rows(may)]
    assert table.column("BilledCost").to_pylist() == csv_billed
    report = focus.validate(parquet)
    assert report.ok, report.summary()


@pytest.mark.warehouse
@pytest.mark.focus_validator
def test_cli_exports_and_validates_a_month(validator, may, tmp_path, capsys):
    from chargeback.cli import main

    assert main(["export", "focus", "--period", PERIOD, "--out", str(tmp_path / "cli.csv"), "--format", "csv",
                 "--validate"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cli.csv'}" in out
    assert "FOCUS 1.2 validator" in out
    assert "errors" not in out


@pytest.mark.warehouse
def test_exporting_a_month_without_charges_says_to_build_it(may, tmp_path, capsys):
    from chargeback.cli import main

    # a month no test module builds (modules share a database and run in any order)
    assert main(["export", "focus", "--period", "2045-01", "--out", str(tmp_path / "empty.csv")]) == 1
    assert "no FOCUS charges for 2045-01" in capsys.readouterr().err
