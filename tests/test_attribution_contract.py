"""Attribution below the tenant (issue 11): a snapshot's optional ``source`` and ``labels``.

Real files through the real loader and gate into PostgreSQL: files without them load as
before (source ``(none)``, no labels); JSON Lines and CSV carry them (CSV labels as
``key=value;key=value`` with backslash escapes); a bad source or label is quarantined alone
with a reason naming the field; the label keys that count are configuration.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from chargeback.engine import configuration
from chargeback.engine.config_schema import ConfigError
from chargeback.ingest import load
from chargeback.ingest.sources import FileSource
from chargeback.orchestration import steps
from chargeback.platform import warehouse
from snapshots import FIELDS, snapshot_row

ROOT = Path(__file__).resolve().parents[1]
H = dt.datetime(2026, 9, 8, 10, tzinfo=dt.UTC)
H1 = H + dt.timedelta(hours=1)


def snap(snapshot_id: str, **overrides) -> dict:
    return snapshot_row(snapshot_id, H, **overrides)


def jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value


def csv_text(*rows: dict, header: tuple[str, ...]) -> bytes:
    lines = [",".join(header)] + [",".join(csv_cell(str(r.get(f, ""))) for f in header) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def land(landing: Path, name: str, data: bytes) -> None:
    folder = landing / "usage" / f"{H:%Y-%m-%d}" / f"{H:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def publish(landing: Path) -> int:
    """Stage, gate (the GX suite and the quarantine policy under warn) and publish the hour."""
    staged = load.stage(FileSource(str(landing)), H, H1)
    steps.gate(staged.load_id, H, H1)
    load.publish(staged.load_id)
    return staged.load_id


def published() -> dict[str, tuple[str, dict]]:
    with warehouse.connect() as conn:
        return {s: (source, labels) for s, source, labels in conn.execute(
            "select snapshot_id, source, labels from raw.usage_snapshots order by 1")}


def quarantined(load_id: int) -> dict[int, tuple[str, str]]:
    with warehouse.connect() as conn:
        return {line: (field, reason) for line, field, reason in conn.execute(
            "select source_line, field, reason from raw.usage_quarantine where load_id = %s order by 1",
            (load_id,))}


@pytest.fixture
def warn_policy(monkeypatch):
    """Bad rows are quarantined and reported; the rest of the file publishes (not held back)."""
    monkeypatch.setenv("CHARGEBACK_QUARANTINE_POLICY", "warn")


# ---- files without source and labels load as before ----------------------------------------


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw")
def test_files_without_source_or_labels_load_as_source_none_without_labels(landing):
    land(landing, "old.jsonl", jsonl(snap("s1"), snap("s2", source=None, labels=None)))
    land(landing, "old.csv", csv_text(snap("s3"), header=FIELDS))
    land(landing, "empty.csv", csv_text(snap("s4", source="", labels=""), header=(*FIELDS, "source", "labels")))

    load_id = publish(landing)

    assert quarantined(load_id) == {}
    assert published() == {s: ("(none)", {}) for s in ("s1", "s2", "s3", "s4")}


# ---- JSON Lines and CSV carry them ----------------------------------------------------------


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw")
def test_json_lines_and_csv_carry_source_and_labels_csv_with_its_escapes(landing):
    land(landing, "new.jsonl", jsonl(
        snap("j1", source="payments-api", labels={"team": "pay", "env": "prod"}),
        snap("j2", source="/aws/lambda/checkout", labels={"team": "pay", "x.io/build": "a;b=c"}),
        snap("j3", source=42, labels={}),
    ))
    land(landing, "new.csv", csv_text(
        snap("c1", source="payments-api", labels="team=pay;env=prod"),
        snap("c2", source="log group, eu", labels=r"x.io/build=a\;b=c;path=C:\\logs;;"[:-1]),
        snap("c3", source="dash", labels=r"we\=ird\\key=v;"),
        header=("labels", *FIELDS, "source"),
    ))

    load_id = publish(landing)

    assert quarantined(load_id) == {}
    assert published() == {
        "j1": ("payments-api", {"team": "pay", "env": "prod"}),
        "j2": ("/aws/lambda/checkout", {"team": "pay", "x.io/build": "a;b=c"}),
        "j3": ("42", {}),
        "c1": ("payments-api", {"team": "pay", "env": "prod"}),
        "c2": ("log group, eu", {"x.io/build": "a;b=c", "path": "C:\\logs"}),
        "c3": ("dash", {"we=ird\\key": "v"}),
    }


# ---- bad sources and labels are quarantined with the field named -----------------------------


BAD_JSON = [
    ({"source": ""}, "source", "source: empty (leave the field out for usage without a source)"),
    ({"source": "   "}, "source", None),
    ({"source": "x" * 257}, "source", "source: 257 characters long, more than 256: '" + "x" * 40 + "…'"),
    ({"source": "api\u0007x"}, "source", "source: 'api?x' holds a control character 0x07 at column 4"),
    # a right-to-left override makes 'payments-gol' read as 'payments-log' on an invoice
    ({"source": "payments-\u202egol"}, "source",
     "source: 'payments-?gol' holds an invisible character U+202E at column 10"),
    ({"labels": {"team": "pay\u200bments"}}, "labels",
     "labels: the value of 'team' holds an invisible character U+200B at column 4"),
    ({"source": "(shared)"}, "source",
     "source: '(shared)' is reserved: names in parentheses are Chargeback's own ((none) is usage without a source)"),
    ({"source": {"name": "api"}}, "source", "source: expected text, got a JSON object"),
    ({"labels": ["team", "pay"]}, "labels", "labels: expected a flat JSON object of text values, got a JSON array"),
    ({"labels": "team=pay"}, "labels", "labels: expected a flat JSON object of text values, got a JSON string"),
    ({"labels": {"team": {"name": "pay"}}}, "labels",
     "labels: the value of 'team' is a JSON object; labels are a flat object of text values"),
    ({"labels": {"team": 7}}, "labels", "labels: the value of 'team' is a JSON number; labels are a flat object"
                                        " of text values"),
    ({"labels": {f"k{i:02}": "v" for i in range(17)}}, "labels", "labels: 17 keys, more than 16"),
    ({"labels": {"k" * 65: "v"}}, "labels",
     "labels: key '" + "k" * 40 + "…' is 65 characters long, more than 64"),
    ({"labels": {"team": "p" * 257}}, "labels", "labels: the value of 'team' is 257 characters long, more than 256"),
    ({"labels": {"team": "pay\nments"}}, "labels",
     "labels: the value of 'team' holds a control character 0x0a at column 4"),
    ({"labels": {"te\u0085am": "pay"}}, "labels", "labels: key 'te?am' holds a control character 0x85 at column 3"),
    ({"labels": {"": "pay"}}, "labels", "labels: an empty key"),
    ({"labels": {" team": "pay"}}, "labels", "labels: key ' team' has leading or trailing spaces"),
    ({"labels": {"env": ""}}, "labels", "labels: the value of 'env' is empty (leave the key out)"),
    ({"labels": {"env": "(none)"}}, "labels",
     "labels: the value of 'env', '(none)', is reserved: values in parentheses are Chargeback's own"),
    ({"source": "api", "labels": {"a": "1", "b": {"c": 1}}}, "labels",
     "labels: the value of 'b' is a JSON object; labels are a flat object of text values"),
]


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw", "warn_policy")
def test_a_bad_source_or_label_is_quarantined_alone_with_the_field_and_reason(landing):
    rows = [snap("good-1", source="api", labels={"team": "pay"})]
    rows += [snap(f"bad-{i}", **fields) for i, (fields, _, _) in enumerate(BAD_JSON)]
    rows += [snap("good-2")]
    land(landing, "bad.jsonl", jsonl(*rows))

    load_id = publish(landing)

    assert set(published()) == {"good-1", "good-2"}
    got = quarantined(load_id)
    for i, (_, field, reason) in enumerate(BAD_JSON):
        line = i + 2
        assert got[line][0] == field, (line, got[line])
        if reason is not None:
            assert got[line][1] == reason
    assert got[3][1] == "source: empty (leave the field out for usage without a source)"  # blank is empty
    assert len(got) == len(BAD_JSON)


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw", "warn_policy")
def test_a_csv_labels_cell_that_is_not_key_value_pairs_is_quarantined(landing):
    header = (*FIELDS, "source", "labels")
    land(landing, "bad.csv", csv_text(
        snap("c1", labels="team"),
        snap("c2", labels="team=pay;team=ops"),
        snap("c3", labels="team=pay\\"),
        snap("c4", labels="team=pay;;env=prod"),
        snap("c5", labels="team=pay", source="api"),
        header=header,
    ))

    load_id = publish(landing)

    assert published() == {"c5": ("api", {"team": "pay"})}
    assert quarantined(load_id) == {
        2: ("labels", "labels: not key=value pairs separated by ';': 'team'"),
        3: ("labels", "labels: key 'team' appears more than once"),
        4: ("labels", "labels: not key=value pairs separated by ';': 'team=pay\\'"),
        5: ("labels", "labels: not key=value pairs separated by ';': 'team=pay;;env=prod'"),
    }


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw", "warn_policy")
def test_an_escaped_nul_is_quarantined_not_a_failed_load(landing):
    land(landing, "nul.jsonl", jsonl(snap("s1")) + b'{"snapshot_id": "s2", "source": "a\\u0000b"}\n'
         + b'{"snapshot_id": "s3", "source": "a\\\\u0000b", "tenant_id": "t001", "meter": "ingested_gb",'
           b' "value": "1", "unit": "GB", "hour": "2026-09-08T10:00:00Z", "emitted_at": "2026-09-08T10:59:00Z",'
           b' "kind": "counter"}\n')

    load_id = publish(landing)

    assert published() == {"s1": ("(none)", {}), "s3": ("a\\u0000b", {})}
    assert quarantined(load_id) == {
        2: ("record", "record: an escaped NUL character (\\u0000), which no text can hold")}


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw", "warn_policy")
def test_labels_written_with_an_escaped_key_are_checked_too(landing):
    """A file is classified without the label checks only when no line can hold labels."""
    row = json.dumps(snap("s2")).removesuffix("}") + ', "\\u006cabels": {"": "x"}}'
    land(landing, "escaped.jsonl", jsonl(snap("s1")) + row.encode() + b"\n")

    load_id = publish(landing)

    assert published() == {"s1": ("(none)", {})}
    assert quarantined(load_id) == {2: ("labels", "labels: an empty key")}


@pytest.mark.warehouse
@pytest.mark.usefixtures("empty_raw", "warn_policy")
def test_the_same_snapshot_with_another_source_or_labels_is_not_a_duplicate(landing):
    land(landing, "a.jsonl", jsonl(
        snap("s1", source="api", labels={"team": "pay"}),
        snap("s1", source="api", labels={"team": "pay"}),   # identical: a duplicate
        snap("s1", source="web", labels={"team": "pay"}),   # another source: quarantined
        snap("s1", source="api", labels={"team": "ops"}),   # other labels: quarantined
    ))

    load_id = publish(landing)

    assert published() == {"s1": ("api", {"team": "pay"})}
    reasons = {line: reason for line, (_, reason) in quarantined(load_id).items()}
    assert reasons[3].endswith(":1 with different content (source 'api' there, 'web' here)")
    assert reasons[4].endswith(':1 with different content (labels {"team": "pay"} there, {"team": "ops"} here)')
    with warehouse.connect() as conn:
        assert conn.execute("select rows_in, rows_loaded, rows_duplicate, rows_quarantined from pipeline.load_files"
                            " where load_id = %s", (load_id,)).fetchone() == (4, 1, 1, 2)


# ---- configured label keys --------------------------------------------------------------------


def _config_copy(tmp_path: Path) -> Path:
    for name in ("meters.yml", "tenants.yml", "cost_pools.yml", "price_books.yml", "attribution.yml"):
        (tmp_path / name).write_text((ROOT / "config" / name).read_text())
    return tmp_path


def test_the_label_keys_that_count_are_configuration(tmp_path):
    config_dir = _config_copy(tmp_path)
    assert configuration.read(config_dir).attribution.label_keys == ["team", "env", "app", "user", "log_group",
                                                                     "data_age"]

    (config_dir / "attribution.yml").unlink()
    assert configuration.read(config_dir).attribution.label_keys == []  # optional: nothing aggregated


@pytest.mark.parametrize(("text", "problem"), [
    ("label_keys: [team, team]", "field label_keys: label key(s) listed twice: team"),
    ("label_keys: [' team']", "field label_keys: label key ' team': no control characters, no leading or"
                              " trailing spaces"),
    ("label_keys: ['" + "k" * 65 + "']", "field label_keys: label key '" + "k" * 65 + "': 1 to 64 characters"),
    ("label_keys: [" + ", ".join(f"k{i}" for i in range(17)) + "]",
     "field label_keys: List should have at most 16 items after validation, not 17"),
    ("label_key: [team]", "field label_key: Extra inputs are not permitted"),
])
def test_a_bad_attribution_file_is_refused_naming_file_and_field(tmp_path, text, problem):
    config_dir = _config_copy(tmp_path)
    (config_dir / "attribution.yml").write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        configuration.read(config_dir)
    assert f"{config_dir / 'attribution.yml'}: {problem}" in str(info.value)


@pytest.mark.warehouse
def test_label_keys_are_applied_to_config_label_keys(tmp_path):
    config_dir = _config_copy(tmp_path)
    (config_dir / "attribution.yml").write_text("label_keys: [team, user]\n")
    try:
        configuration.load(config_dir)
        with warehouse.connect() as conn:
            assert [r[0] for r in conn.execute("select label_key from config.label_keys order by 1")] == [
                "team", "user"]
    finally:
        configuration.load()


# ---- retention per source: stored GB-months priced by class ---------------------------------

RETENTION_BOOKS = """
price_books:
  - price_book: logs
    currency: USD
    valid_from: 2020-01-01
    prices:
      ingested_gb: "0.50"
      scanned_gb: "0.01"
      query_cpu_seconds: "0.0004"
      alerts_fired: "0.01"
      stored_gb:
        model: retention
        tiers:
          - {retention_days: 7, unit_price: "0.02"}
          - {retention_days: 30, unit_price: "0.03"}
          - {retention_days: 90, unit_price: "0.05"}
          - {retention_days: 365, unit_price: "0.08"}
"""
RETENTION_TENANTS = """
tenants:
  - {tenant_id: r01, name: Rho payments, organisation: Rho, business_unit: Pay, team: core, price_book: logs,
     terms: [{valid_from: 2026-01-01, discount_percent: "10", retention_days: 30,
              source_retention_days: {audit: 365, debug: 3, trace: 5}}]}
  - {tenant_id: r02, name: Rho search, organisation: Rho, business_unit: Search, team: core, price_book: logs,
     terms: [{valid_from: 2026-01-01, retention_days: 90}]}
  - {tenant_id: r03, name: Rho archive, organisation: Rho, business_unit: Archive, team: core, price_book: logs,
     terms: [{valid_from: 2026-01-01, retention_days: 30, source_retention_days: {logs: 90}}]}
"""
RETENTION_POOLS = """
cost_pools:
  - pool: platform
    description: The whole platform
    monthly_cost: "720.00"
    currency: USD
    valid_from: 2020-01-01
    allocation: {method: proportional, driver: stored_gb}
"""
NOV, DEC = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
# (tenant, meter, source, GB or GB-hours in one snapshot, day of November)
RETENTION_USAGE = [
    ("r01", "ingested_gb", "audit", "100", 2),
    ("r01", "stored_gb", "app", "7200", 2),
    ("r01", "stored_gb", "(none)", "3600", 3),
    ("r01", "stored_gb", "audit", "1800", 4),
    ("r01", "stored_gb", "debug", "900", 5),
    ("r01", "stored_gb", "trace", "540", 6),
    ("r02", "stored_gb", "audit", "720", 2),
    ("r02", "stored_gb", "debug", "720", 3),
    ("r03", "stored_gb", "logs", "1440", 2),
]


@pytest.fixture(scope="module")
def retention_database(test_warehouse, tmp_path_factory):
    """A database of its own with the price book and tenants above, November 2026 built by dbt
    (invoices and the FOCUS charges, with their dbt tests: FOCUS sums to the invoice lines)."""
    import os

    from chargeback.engine import transform

    name = f"{os.environ['CHARGEBACK_DATABASE']}_retention"
    config_dir = tmp_path_factory.mktemp("retention-config")
    (config_dir / "meters.yml").write_text((ROOT / "config" / "meters.yml").read_text())
    (config_dir / "price_books.yml").write_text(RETENTION_BOOKS)
    (config_dir / "tenants.yml").write_text(RETENTION_TENANTS)
    (config_dir / "cost_pools.yml").write_text(RETENTION_POOLS)
    warehouse.drop_database(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_DATABASE", name)
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")
        warehouse.ensure_schema()
        configuration.load(config_dir)
        with warehouse.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start,"
                " emitted_at, kind, source_file, source_line, load_id, source)"
                " values (%s, %s, %s, %s, 'GB', %s, %s, %s, 'test_attribution_contract.py', %s, 1, %s)",
                [(f"r/{i}", tenant, meter, value, NOV.replace(day=day), NOV.replace(day=day),
                  "gauge" if meter == "stored_gb" else "counter", i, source)
                 for i, (tenant, meter, source, value, day) in enumerate(RETENTION_USAGE, 1)],
            )
        transform.build(NOV, DEC, select="+fct_invoices +fct_focus_charges")
        yield name


@pytest.mark.warehouse
def test_sources_with_retention_classes_of_their_own_get_one_storage_line_per_class(retention_database):
    """Hand-computed (November 2026: 720 hours, so GB-hours / 720 = GB-months).

    r01: default class 30 days, 10 % discount; audit keeps 365 days, debug 3 and trace 5
    (both priced at the 7-day tier, the smallest of at least their days: one class).
      ingested_gb: 100 GB x 0.50 = 50.00, discount 5.00 -> 45.00 (one line: classes are storage's)
      stored_gb 7-day:   debug 900 + trace 540 = 1440 GB-h = 2 GB-month x 0.02 = 0.04,
                         discount 0.004 -> 0.00 -> 0.04
      stored_gb 30-day:  app 7200 + (none) 3600 = 10800 GB-h = 15 GB-month x 0.03 = 0.45,
                         discount 0.045 -> 0.05 (half-up) -> 0.40
      stored_gb 365-day: audit 1800 GB-h = 2.5 GB-month x 0.08 = 0.20, discount 0.02 -> 0.18
      total 45.00 + 0.04 + 0.40 + 0.18 = 45.62
      (all at 30 days it would be 19.5 GB-month x 0.03 = 0.585 -> 0.59 less 0.06 = 0.53)
    r02: no per-source classes (its sources audit and debug are r01's names, not its own):
      1440 GB-h = 2 GB-month at 90 days x 0.05 = 0.10 -> one line, as before.
    r03: all of its storage is kept by logs at 90 days: 1440 GB-h = 2 GB-month x 0.05 = 0.10,
      one line, and no 0 line for its unused 30-day default.
    """
    with warehouse.connect() as conn:
        lines = conn.execute(
            "select tenant_id, line_no, meter, description, quantity, unit_price, list_amount, discount_amount,"
            " amount from marts.fct_invoice_lines where invoice_month = '2026-11-01' order by tenant_id, line_no"
        ).fetchall()
        totals = dict(conn.execute(
            "select tenant_id, total from marts.fct_invoices where invoice_month = '2026-11-01'").fetchall())
        focus = dict(conn.execute(
            'select "SubAccountId", sum("BilledCost") from marts.fct_focus_charges'
            """ where "x_ChargeSource" = 'invoice' group by 1""").fetchall())
    D, kept = Decimal, "Log data retained in storage — {}-day retention"
    assert lines == [
        ("r01", 1, "ingested_gb", "Log data ingested", D(100), D("0.50"), D("50.00"), D("5.00"), D("45.00")),
        ("r01", 2, "stored_gb", kept.format(7), D(2), D("0.02"), D("0.04"), D("0.00"), D("0.04")),
        ("r01", 3, "stored_gb", kept.format(30), D(15), D("0.03"), D("0.45"), D("0.05"), D("0.40")),
        ("r01", 4, "stored_gb", kept.format(365), D("2.5"), D("0.08"), D("0.20"), D("0.02"), D("0.18")),
        ("r02", 1, "stored_gb", kept.format(90), D(2), D("0.05"), D("0.10"), D("0.00"), D("0.10")),
        ("r03", 1, "stored_gb", kept.format(90), D(2), D("0.05"), D("0.10"), D("0.00"), D("0.10")),
    ]
    assert totals == {"r01": D("45.62"), "r02": D("0.10"), "r03": D("0.10")}
    assert focus == totals  # FOCUS charges sum to the invoices (and the dbt tests assert_focus_* passed)


def test_the_reference_pricer_prices_each_retention_class_of_a_month():
    """The same r01 stored_gb month in Python: one segment per class, in class order."""
    D = Decimal
    from chargeback.engine.pricing import Price, Segment, Tier, price_meter_month

    price = Price(dt.date(2020, 1, 1), "retention", tuple(
        Tier(n, D(0), None, D(p), days) for n, (days, p) in enumerate(
            [(7, "0.02"), (30, "0.03"), (90, "0.05"), (365, "0.08")], 1)))
    lines = price_meter_month(
        [Segment(price, D(1440), retention_days=3), Segment(price, D(10800)), Segment(price, D(1800), 365)],
        divisor=720, discount_percent=D(10), retention_days=30)
    assert [(x.tier, x.quantity, x.list_amount, x.discount_amount, x.amount) for x in lines] == [
        (1, D(2), D("0.04"), D("0.00"), D("0.04")),
        (2, D(15), D("0.45"), D("0.05"), D("0.40")),
        (4, D("2.5"), D("0.20"), D("0.02"), D("0.18")),
    ]
    # a tenant without per-source classes: one segment at its default, as before
    assert [x.amount for x in price_meter_month([Segment(price, D(1440))], divisor=720, retention_days=90)] == [
        D("0.10")]


T001_TERMS = "        retention_days: 90\n  - tenant_id: t002"


def _t001_sources(config_dir: Path, sources: str) -> None:
    """Give t001's terms (from 2024-01-01, 90 days) the ``source_retention_days`` ``sources``."""
    tenants = config_dir / "tenants.yml"
    text = tenants.read_text()
    assert text.count(T001_TERMS) == 1
    tenants.write_text(text.replace(T001_TERMS, T001_TERMS.replace(
        "\n", f"\n        source_retention_days: {sources}\n", 1)))


@pytest.mark.parametrize(("sources", "problem"), [
    ("{audit: 400}",
     "tenants.yml: tenant t001, terms from 2024-01-01, source_retention_days.audit: 400 days, but price book"
     " enterprise (from 2020-01-01) has no stored_gb retention tier of 400 days or more"),
    ("{(none): 7}",
     "field terms[1].source_retention_days: source '(none)': no control characters, and not a name in"
     " parentheses ((none) is usage without a source; its class is retention_days)"),
    ("{audit: 0}",
     "field terms[1].source_retention_days: source 'audit': retention days must be a positive whole number,"
     " not 0"),
])
def test_a_source_retention_class_is_checked_like_the_tenants_own(tmp_path, sources, problem):
    config_dir = _config_copy(tmp_path)
    _t001_sources(config_dir, sources)
    with pytest.raises(ConfigError) as info:
        configuration.read(config_dir)
    assert problem in str(info.value)


def test_source_retention_days_are_read_with_the_terms(tmp_path):
    config_dir = _config_copy(tmp_path)
    _t001_sources(config_dir, "{audit-logs: 365, debug: 7}")
    (t001,) = [t for t in configuration.read(config_dir).tenants if t.tenant_id == "t001"]
    assert t001.terms[0].source_retention_days == {"audit-logs": 365, "debug": 7}
