"""Chart specs (chargeback.insights.charts): pure functions, a DataFrame in, an Altair chart out.

Unit tests: no warehouse, no rendering. Each spec's dict is checked for the encodings the
report and a dashboard rely on, and the functions are shown to do no I/O.
"""

from __future__ import annotations

import datetime as dt
import socket

import altair as alt
import pandas as pd
import pytest

from chargeback.insights import charts


@pytest.fixture
def no_io(monkeypatch):
    """Opening a file or a socket fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a chart spec did I/O")

    monkeypatch.setattr("builtins.open", refuse)
    monkeypatch.setattr(socket, "socket", refuse)


def trend() -> pd.DataFrame:
    months = [dt.date(2026, m, 1) for m in (9, 10, 11)]
    return pd.DataFrame([{"month": pd.Timestamp(m), "ledger": ledger, "amount": amount}
                         for m in months for ledger, amount in (("Cost to serve", 70.5), ("Billed", 71.25),
                                                                ("Margin", 0.75))])


def test_ledger_trend_draws_a_line_per_ledger_by_month(no_io):
    chart = charts.ledger_trend(trend())
    assert isinstance(chart, alt.Chart)
    spec = chart.to_dict()
    assert spec["mark"]["type"] == "line"
    assert spec["mark"]["point"] is True
    enc = spec["encoding"]
    assert enc["x"]["field"] == "month"
    assert enc["x"]["timeUnit"] == "yearmonth"
    assert enc["x"]["type"] == "ordinal"
    assert enc["y"] == {"field": "amount", "type": "quantitative", "title": "Amount", "axis": {"format": "~s"}}
    assert enc["color"]["field"] == "ledger"
    assert enc["color"]["scale"] == {"domain": ["Cost to serve", "Billed", "Margin"],
                                     "range": ["#c05621", "#1f4e79", "#7b8794"]}
    values = spec["datasets"][spec["data"]["name"]]
    assert len(values) == 9
    assert {v["ledger"] for v in values} == {"Cost to serve", "Billed", "Margin"}


def test_ledgers_by_group_puts_the_two_ledgers_side_by_side(no_io):
    frame = pd.DataFrame([{"group": g, "ledger": ledger, "amount": 1.0}
                          for g in ("Acme Corp", "Globex") for ledger in ("Cost to serve", "Billed")])
    spec = charts.ledgers_by_group(frame).to_dict()
    assert spec["mark"]["type"] == "bar"
    enc = spec["encoding"]
    assert enc["y"]["field"] == "group"
    assert enc["yOffset"]["field"] == "ledger"
    assert enc["x"]["field"] == "amount"
    assert enc["x"]["type"] == "quantitative"
    assert enc["color"]["scale"]["domain"] == ["Cost to serve", "Billed"]


def test_top_movers_colours_rises_and_falls(no_io):
    frame = pd.DataFrame({"scope": ["t001", "t002"], "change": [12.5, -3.0]})
    spec = charts.top_movers(frame).to_dict()
    enc = spec["encoding"]
    assert enc["y"] == {"field": "scope", "type": "nominal", "title": None, "sort": None}
    assert enc["x"]["field"] == "change"
    assert enc["color"]["condition"]["test"] == "(datum.change > 0)"
    assert enc["color"]["condition"]["value"] == charts.RISE
    assert enc["color"]["value"] == charts.FALL


def test_for_print_sets_the_shipped_font_and_leaves_the_spec_alone(no_io):
    chart = charts.top_movers(pd.DataFrame({"scope": ["t001"], "change": [1.0]}))
    printed = charts.for_print(chart).to_dict()
    assert printed["config"]["font"] == "DejaVu Sans" == charts.PRINT_FONT
    assert printed["config"]["view"]["stroke"] is None
    assert "font" not in chart.to_dict().get("config", {})  # the dashboard's chart is unchanged


def test_a_chart_that_would_reference_anything_outside_itself_is_refused():
    """The report inlines a chart's SVG as markup: an image (or link, script, style) is refused
    before WeasyPrint sees it, and text from the data arrives escaped."""
    from pathlib import Path

    from chargeback.insights import finance_report

    fonts = Path(__file__).resolve().parents[1] / "reports" / "fonts"
    image = alt.Chart(pd.DataFrame({"x": [1], "y": [1], "u": ["https://example.invalid/a.png"]})).mark_image(
        width=10, height=10).encode(x="x:Q", y="y:Q", url="u:N")
    with pytest.raises(finance_report.FinanceReportError, match="holds <image> with a reference outside itself"):
        finance_report.chart_svg(image, fonts_dir=fonts)
    svg = finance_report.chart_svg(charts.top_movers(pd.DataFrame({"scope": ["<script>x</script> & co"],
                                                                  "change": [1.0]})), fonts_dir=fonts)
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in svg
    assert "<script>" not in svg
