"""The finance report: rendered from a real warehouse, read back, and every figure checked against the marts.

Two months of 2035 (far from the months other modules bill), usage of a dozen tenants across
the three organisations with a different growth per tenant, loaded set-based into raw and
built by the real dbt transform. The expected figures are read from the marts here, with
this module's own SQL and Python sums, independently of the report's queries.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pypdf
import pytest

from chargeback.cli import main
from chargeback.engine import transform
from chargeback.insights import finance_report
from chargeback.platform import warehouse
from chargeback.platform.money import format_money
from chargeback.platform.periods import month_window

pytestmark = pytest.mark.warehouse

TENANTS = [f"t{n:03d}" for n in range(1, 13)]
PERIOD, BEFORE = "2035-05", "2035-04"
MARTS = "+fct_ledger_rollup_monthly +fct_usage_hourly +fct_trends_monthly"
"""What the report reads and what it is built from (models of other features are not needed here)."""
MONEY = re.compile(r"(?<![\w.,+-])[+-]?\d{1,3}(?:,\d{3})*\.\d{2}(?![\w.])")


def load(period: str, growth: dict[str, Decimal]) -> None:
    """Every hour of every configured meter for TENANTS, each tenant's usage × its growth."""
    start, end = month_window(period)
    with warehouse.connect() as conn:
        conn.execute(
            """
            insert into raw.usage_snapshots (snapshot_id, tenant_id, meter, value, unit, hour_start, emitted_at,
                                             kind, source_file, source_line, load_id)
            select format('fr-%%s-%%s-%%s', t.tenant_id, m.meter, to_char(h, 'YYYYMMDDHH24')),
                   t.tenant_id, m.meter,
                   round((case when m.kind = 'gauge' then 400 else 9.5 end) * t.growth, 3),
                   m.unit, h, h + interval '5 minutes', m.kind, 'test_finance_report.py', 1, 0
            from unnest(%(tenants)s::text[], %(growth)s::numeric[]) as t (tenant_id, growth)
            cross join config.meters as m
            cross join generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 hour',
                                       interval '1 hour') as h
            on conflict (tenant_id, snapshot_id) do nothing
            """,
            {"tenants": list(growth), "growth": list(growth.values()), "start": start, "end": end},
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DBT_INDIRECT_SELECTION", "cautious")  # only the tests of the models built
        transform.build(start, end, select=MARTS)


@pytest.fixture(scope="module")
def written(test_warehouse, tmp_path_factory):
    load(BEFORE, {t: Decimal(1) + Decimal((i * 7) % 5) / 4 for i, t in enumerate(TENANTS)})
    load(PERIOD, {t: Decimal(1) + Decimal(i) * Decimal("0.37") for i, t in enumerate(TENANTS)})
    out = tmp_path_factory.mktemp("finance") / "finance-report.pdf"
    return finance_report.write_report(PERIOD, out=str(out))


@pytest.fixture(scope="module")
def pdf(written) -> pypdf.PdfReader:
    return pypdf.PdfReader(Path(written.path))


@pytest.fixture(scope="module")
def text(pdf) -> str:
    return " ".join(" ".join(page.extract_text() for page in pdf.pages).split())


def rows(sql: str, *params) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(sql, params).fetchall()


def cents(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def percent(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:,.2f} %"


# --------------------------------------------------------------------------- the marts, read here


def expected_hierarchy(month: dt.date) -> list[tuple[str, str, ...]]:
    """(level, name, cost, shared, idle, billed, margin, margin %) as the marts give them."""
    shared: dict[tuple, Decimal] = defaultdict(Decimal)
    idle: dict[tuple, Decimal] = defaultdict(Decimal)
    for org, bu, team, item, cost in rows(
            "select coalesce(organisation, '(platform)'), coalesce(business_unit, '(platform)'),"
            " coalesce(team, '(platform)'), ledger_item, cost_to_serve from marts.fct_ledger_monthly"
            " where invoice_month = %s", month):
        for key in ((), (org,), (org, bu), (org, bu, team)):
            if item == "shared":
                shared[key] += cost
            if item == "idle":
                idle[key] += cost
    out = []
    for level, org, bu, team, cost, billed, margin, pct in rows(
            "select level, organisation, business_unit, team, cost_to_serve, billed, margin, margin_percent"
            " from marts.fct_ledger_rollup_monthly where invoice_month = %s and level <> 'tenant'", month):
        key = tuple(v for v in (org, bu, team) if v is not None)
        name = {"platform": "All organisations", "organisation": org, "business_unit": bu, "team": team}[level]
        out.append((level, name, cents(cost), cents(shared[key]), cents(idle[key]), cents(billed), cents(margin),
                    percent(pct)))
    return out


def expected_items(month: dt.date) -> list[tuple[str, str, str, str]]:
    sums: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 3)
    for tenant, item, cost, billed, margin in rows(
            "select tenant_id, ledger_item, cost_to_serve, billed, margin from marts.fct_ledger_monthly"
            " where invoice_month = %s", month):
        key = item if tenant else f"platform:{item}"
        for i, v in enumerate((cost, billed, margin)):
            sums[key][i] += v
    return [(finance_report.ITEM_LABELS.get(k, f"Usage of {k}"), *map(cents, v)) for k, v in sums.items()]


def expected_movers(month: dt.date, before: dt.date) -> list[tuple[str, ...]]:
    now: dict[tuple, tuple] = {}
    then: dict[tuple, tuple] = {}
    for m, level, org, bu, team, tenant, cost, billed in rows(
            "select invoice_month, level, organisation, business_unit, team, tenant_id, cost_to_serve, billed"
            " from marts.fct_ledger_rollup_monthly where invoice_month in (%s, %s)"
            " and level in ('tenant', 'team') and organisation <> '(platform)'", month, before):
        key = (level, tenant if level == "tenant" else f"{org} / {bu} / {team}")
        (now if m == month else then)[key] = (cost, billed)
    out = []
    for level in ("tenant", "team"):
        keys = {k for k in (*now, *then) if k[0] == level}
        changes = []
        for k in keys:
            cost, billed = now.get(k, (Decimal(0), Decimal(0)))
            cost0, billed0 = then.get(k, (Decimal(0), Decimal(0)))
            if billed != billed0:
                changes.append((-abs(billed - billed0), k[1], billed0, billed, billed - billed0, cost - cost0))
        for _, key, billed0, billed, change, cost_change in sorted(changes)[: finance_report.MOVERS]:
            out.append((key, cents(billed0), cents(billed), ("+" if change > 0 else "") + cents(change),
                        ("+" if cost_change > 0 else "") + cents(cost_change)))
    return out


# --------------------------------------------------------------------------- the report


def test_every_row_of_both_ledgers_is_printed_as_the_marts_have_it(text):
    month = dt.date(2035, 5, 1)
    hierarchy = expected_hierarchy(month)
    assert {level for level, *_ in hierarchy} == {"platform", "organisation", "business_unit", "team"}
    shown = 0
    for level, name, *figures in hierarchy:
        if name == "(platform)" and level in ("business_unit", "team"):
            continue  # the platform's own cost: shown once, at its organisation row
        line = " ".join([name, *figures])
        assert line in text, f"{level} row not printed as the marts have it: {line!r}"
        shown += 1
    assert shown >= 1 + 3 + 6  # the platform, three organisations (and the platform's own), several units
    for label, *figures in expected_items(month):
        assert " ".join([label, *figures]) in text


def test_headline_trend_and_movers_equal_the_marts(text):
    month, before = dt.date(2035, 5, 1), dt.date(2035, 4, 1)
    trend = rows("select invoice_month, cost_to_serve, billed, margin, currency from marts.fct_ledger_rollup_monthly"
                 " where level = 'platform' and invoice_month in (%s, %s) order by 1", before, month)
    assert len(trend) == 2
    for m, cost, billed, margin, _ in trend:
        assert f"{m:%b %Y} {cents(cost)} {cents(billed)} {cents(margin)}" in text
    _, cost, billed, margin, currency = trend[-1]
    for label, amount in (("Cost to serve", cost), ("Billed", billed), ("Margin", margin)):
        assert f"{label} {format_money(amount, currency)}" in text
    movers = expected_movers(month, before)
    assert len(movers) == 2 * finance_report.MOVERS
    for key, *figures in movers:
        assert re.search(re.escape(key) + r"( [^\d+-][^ ]*)* " + re.escape(" ".join(figures)), text), (key, figures)


def test_every_figure_printed_is_a_figure_of_the_marts(text):
    """The converse: no amount in the text that the marts do not give (to the cent)."""
    month, before = dt.date(2035, 5, 1), dt.date(2035, 4, 1)
    allowed = set()
    for row in expected_hierarchy(month):
        allowed.update(row[2:])
    for row in expected_items(month):
        allowed.update(row[1:])
    for row in expected_movers(month, before):
        allowed.update(row[1:])
    for cost, billed, margin in rows("select cost_to_serve, billed, margin from marts.fct_ledger_rollup_monthly"
                                     " where level = 'platform' and invoice_month in (%s, %s)", month, before):
        allowed.update(map(cents, (cost, billed, margin)))
    allowed = {a.removesuffix(" %") for a in allowed}
    printed = MONEY.findall(text)
    assert len(printed) > 100
    assert set(printed) <= allowed, sorted(set(printed) - allowed)


def usage_through_line() -> str:
    """``usage through …``: the end of the last hour with usage in the marts, capped at the month's end."""
    (hour,) = rows("select least(max(hour_start) + interval '1 hour', %s) from marts.fct_usage_hourly",
                   month_window(PERIOD)[1])[0]
    return f"usage through {hour.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def test_the_freshness_line_is_on_every_page(pdf, written):
    line = usage_through_line()
    assert line == f"usage through {written.usage_through:%Y-%m-%d %H:%M} UTC"
    for number, page in enumerate(pdf.pages, 1):
        page_text = " ".join(page.extract_text().split())
        assert line in page_text, f"page {number}"
        assert f"Page {number} of {len(pdf.pages)}" in page_text


def _streams(pdf: pypdf.PdfReader):
    """Every content stream of the document with its resources' XObjects, recursively."""
    seen = set()

    def walk(resources):
        for xobject in (resources or {}).get("/XObject", {}).values():
            obj = xobject.get_object()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            yield obj
            yield from walk(obj.get("/Resources"))

    for page in pdf.pages:
        yield from walk(page.get("/Resources"))


def test_charts_are_vectors_in_the_shipped_font(pdf, text):
    xobjects = list(_streams(pdf))
    assert not [x for x in xobjects if x.get("/Subtype") == "/Image"], "a chart was embedded as a raster"
    page_streams = [page.get_contents().get_data() for page in pdf.pages]
    forms = [x.get_data() for x in xobjects if x.get("/Subtype") == "/Form"]
    # the trend's line is a path of many segments; its points are circles (Bézier curves)
    path_ops = sum(len(re.findall(rb"[\d.]+ [\d.]+ l\n", s)) for s in page_streams + forms)
    curve_ops = sum(len(re.findall(rb" c\n", s)) for s in page_streams + forms)
    assert path_ops > 20, path_ops
    assert curve_ops > 8, curve_ops
    fonts = {str(font.get_object()["/BaseFont"]).split("+", 1)[-1]
             for page in pdf.pages for font in page["/Resources"].get("/Font", {}).values()}
    fonts |= {str(font.get_object()["/BaseFont"]).split("+", 1)[-1]
              for x in xobjects for font in (x.get("/Resources") or {}).get("/Font", {}).values()}
    # the shipped DejaVu Sans only: under the CSS's family name, and under its own for the charts' text
    assert "DejaVu-Sans" in fonts
    assert fonts <= {"Chargeback-Sans", "Chargeback-Sans-Bold", "DejaVu-Sans", "DejaVu-Sans-Bold"}, fonts
    # the charts' text is text in the PDF (legend, month axis), not outlines
    assert "Cost to serve Billed Margin" in text  # the trend's legend
    assert "Apr 35" in text
    assert "May 35" in text


def test_without_budget_states_or_forecasts_the_report_says_why(text):
    (configured,) = rows("select exists (select from config.budgets where valid_from <= '2035-05-31'"
                         " and (valid_to is null or valid_to > '2035-05-01'))")[0]
    if configured:  # another module of the session applied config/budgets.yml
        assert "Budgets are configured but were not evaluated for 2035-05" in text
    else:
        assert "No budgets configured (config/budgets.yml)." in text
    assert "No forecast of June 2035 yet." in text
    assert "No open anomaly began in 2035-05." in text
    assert "No recommendation for 2035-05 (chargeback recommend --period 2035-05)." in text


@pytest.fixture
def insights_rows(written):
    """Budget states and forecasts as the budgets and forecasts parts record them, removed afterwards."""
    with warehouse.connect() as conn:
        conn.execute(
            """
            insert into insights.budget_status (budget_id, month, valid_from, scope_level, scope_key, ledger,
                budget_amount, currency, state, actual, used_percent, elapsed_percent, forecast_p50,
                forecast_state, usage_through)
            values ('fr_globex', '2035-05-01', '2035-01-01', 'organisation', 'Globex', 'billed', 1000.00, 'USD',
                    'over', 1234.56, 123.46, 100.00, null, 'not_available', '2035-05-03 00:00Z'),
                   ('fr_risk', '2035-05-01', '2035-01-01', 'team', 'Globex / Cloud / risk', 'cost', 50000.00,
                    'USD', 'ok', 321.09, 0.64, 100.00, 400.10, 'ok', '2035-05-03 00:00Z')
            """)
        conn.execute(
            """
            insert into insights.budget_alerts (budget_id, month, threshold, threshold_kind, threshold_value,
                scope_level, scope_key, ledger, budget_amount, currency, actual, used_percent, elapsed_percent,
                usage_through, line)
            values ('fr_globex', '2035-05-01', 'actual 80%', 'actual', 80, 'organisation', 'Globex', 'billed',
                    1000.00, 'USD', 900.00, 90.00, 50.00, '2035-05-02 00:00Z', 'budget fr_globex: 80%'),
                   ('fr_globex', '2035-05-01', 'actual 100%', 'actual', 100, 'organisation', 'Globex', 'billed',
                    1000.00, 'USD', 1234.56, 123.46, 100.00, '2035-05-03 00:00Z', 'budget fr_globex: 100%')
            """)
        # two sets of June forecasts: only the latest as_of counts; t003 is too early
        conn.execute(
            """
            insert into insights.forecasts (forecast_month, as_of, tenant_id, meter, ledger, method, history_days,
                status, amount_p10, amount_p50, amount_p90, actual_to_date, currency)
            values ('2035-06-01', '2035-06-02 00:00Z', 't001', '(all)', 'billed', 'run_rate', 1, 'ok',
                    1.00, 2.00, 3.00, 0.50, 'USD'),
                   ('2035-06-01', '2035-06-03 00:00Z', 't001', '(all)', 'billed', 'run_rate', 2, 'ok',
                    100.10, 200.20, 300.30, 10.01, 'USD'),
                   ('2035-06-01', '2035-06-03 00:00Z', 't002', '(all)', 'billed', 'run_rate', 2, 'ok',
                    1000.01, 2000.02, 3000.03, 100.02, 'USD'),
                   ('2035-06-01', '2035-06-03 00:00Z', 't002', 'ingested_gb', 'billed', 'run_rate', 2, 'ok',
                    7.00, 8.00, 9.00, 1.00, 'USD'),
                   ('2035-06-01', '2035-06-03 00:00Z', 't003', '(all)', 'billed', 'run_rate', 2, 'too_early',
                    null, null, null, 5.00, 'USD'),
                   ('2035-06-01', '2035-06-03 00:00Z', 't001', '(all)', 'cost', 'run_rate', 2, 'ok',
                    50.00, 60.00, 70.00, 5.55, 'USD')
            """)
        conn.execute(
            """
            insert into insights.anomalies (tenant_id, meter, ledger, direction, first_day, last_day, currency,
                expected, actual, volume, rate, mix, largest_effect, z, may_be_missing_data, sentence, usage_through,
                line, status, ack_kind, ack_by, ack_reason, resolved_by, resolved_at)
            values ('t001', 'ingested_gb', 'billed', 'spike', '2035-05-12', '2035-05-13', 'USD', 100.00, 512.34,
                    400.00, 12.34, 0.00, 'volume', 9.5, false, 't001''s billed ingested_gb on 2035-05-12 rose',
                    '2035-05-14 00:00Z', 'line', 'acknowledged', 'planned', 'dana', 'load test', null, null),
                   ('t002', 'stored_gb', 'billed', 'drop', '2035-05-20', '2035-05-20', 'USD', 50.00, 40.00,
                    -10.00, 0.00, 0.00, 'volume', -4.0, false, 'resolved long ago', '2035-05-21 00:00Z', 'line',
                    'resolved', null, null, null, 'omar', '2035-05-22 00:00Z')
            """)
        conn.execute(
            """
            insert into insights.anomalies (tenant_id, meter, ledger, source, direction, first_day, last_day,
                currency, expected, actual, volume, rate, mix, largest_effect, z, may_be_missing_data, sentence,
                usage_through, line)
            values ('t003', 'query_cpu_seconds', 'cost', 'alert:x', 'spike', '2035-05-21', '2035-05-21', 'USD',
                    10.00, 15.00, 5.00, 0.00, 0.00, 'volume', 6.0, false, 'a storm', '2035-05-22 00:00Z', 'line')
            """)
        conn.execute(
            """
            insert into insights.recommendations (period, tenant_id, kind, target, change, title, evidence,
                confidence, currency, invoice_total, total_after, saving, status, status_by, status_reason)
            values ('2035-05-01', 't001', 'retention', '/prod/a', 'retention:/prod/a=7d', 'keep /prod/a 7 days',
                    'e', 'high', 'USD', 900.00, 687.66, 212.34, 'open', null, null),
                   ('2035-05-01', 't002', 'price_fit', '(tenant)', 'price_book=enterprise', 'move to enterprise',
                    'e', 'medium', 'USD', 500.00, 450.00, 50.00, 'accepted', 'dana', 'signed'),
                   ('2035-05-01', 't003', 'commitment', '(tenant)', 'commitment=0.00', 'lower it', 'e', 'low',
                    'USD', 100.00, 1.00, 99.00, 'dismissed', 'omar', 'renews in March')
            """)
    yield
    with warehouse.connect(admin=True) as conn:  # alerts are never deleted by the pipeline
        conn.execute("delete from insights.recommendations where period = '2035-05-01'")
        conn.execute("delete from insights.anomaly_days where anomaly_id in (select anomaly_id"
                     " from insights.anomalies where first_day between '2035-05-01' and '2035-05-31')")
        conn.execute("delete from insights.anomalies where first_day between '2035-05-01' and '2035-05-31'")
        conn.execute("delete from insights.budget_alerts where budget_id in ('fr_globex', 'fr_risk')")
        conn.execute("delete from insights.budget_status where budget_id in ('fr_globex', 'fr_risk')")
        conn.execute("delete from insights.forecasts where forecast_month = '2035-06-01'")


def test_budget_states_and_the_forecast_are_printed_as_recorded(insights_rows):
    report = finance_report.gather(PERIOD)
    data = finance_report.render_pdf(report)
    text = " ".join(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages).split())
    assert ("fr_globex organisation Globex billed 1,000.00 USD 1,234.56 USD 123.46 % not available over"
            " actual 80%, actual 100%") in text
    assert "fr_risk team Globex / Cloud / risk cost to serve 50,000.00 USD 321.09 USD 0.64 % 400.10 USD ok none" in text
    # the latest as_of only, meter (all) only, too-early tenants counted apart
    assert "billed 2 1 110.03 USD 1,100.11 USD 2,200.22 USD 3,300.33 USD" in text
    assert "cost to serve 1 0 5.55 USD 50.00 USD 60.00 USD 70.00 USD" in text
    assert "Month-end forecast of June 2035, usage through 2035-06-03 00:00 UTC" in text
    # the month's anomalies not resolved, with their effects and sentence
    row = r"\d+ t001 ingested_gb 12 May to 13 May \+412\.34 \+400\.00 \+12\.34 0\.00 acknowledged \(planned\)"
    assert re.search(row, text), text
    assert re.search(r"#\d+: t001's billed ingested_gb on 2035-05-12 rose", text), text
    assert "resolved long ago" not in text
    assert "t003 query_cpu_seconds from alert:x (cost to serve) 21 May +5.00" in text
    # the current recommendations not dismissed, the largest saving first, with their total
    assert "t001 retention keep /prod/a 7 days 212.34 USD high open t002 price fit move to enterprise 50.00 USD" in text
    assert "2 recommendations, saving 262.34 USD a month in all" in text
    assert "lower it" not in text


def test_cli_writes_the_report_beside_the_invoices(written, capsys, settings):
    assert main(["report", "finance", "--month", PERIOD]) == 0
    out = capsys.readouterr().out
    path = finance_report.report_path(PERIOD)
    assert path == f"{settings.reports_out.rstrip('/')}/2035-05/finance-report.pdf"
    assert out.startswith(f"wrote {path}: finance report, ")
    assert usage_through_line() in out
    data = Path(path).read_bytes()
    assert "Finance report — May 2035" in pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()
    print(f"\nfinance report: {written.pages} pages, read {written.read_seconds:.2f} s, "
          f"rendered {written.render_seconds:.2f} s")


def test_a_month_without_a_ledger_is_refused_in_one_line(capsys):
    assert main(["report", "finance", "--month", "2035-09"]) == 1
    err = capsys.readouterr().err
    assert "finance report of 2035-09: marts.fct_ledger_rollup_monthly has no ledger for the month" in err
