"""Chart specs: one function per chart, a DataFrame in, an Altair chart out.

Drawn once from data and used wherever a chart is shown: the finance report renders them
to SVG (``vl_convert``) and embeds them in its page; a dashboard can hand the same specs
to Vega-Embed. The functions do no I/O and know nothing about the warehouse: the caller
reads the marts and passes a frame with the columns each function names.

Amounts arrive as floats: a chart only draws them (the figures a report prints come from
``Decimal`` values, never from here). :func:`for_print` adds the look of a printed page —
the shipped font, sizes, no frame — and is kept apart so that a dashboard applies its own.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

LEDGER_COLOURS = {"Cost to serve": "#c05621", "Billed": "#1f4e79", "Margin": "#7b8794"}
"""One colour per ledger in every chart (the report's accent blue for the price billed)."""

RISE, FALL = "#be1e2d", "#2f855a"

PRINT_FONT = "DejaVu Sans"
"""The shipped font (reports/fonts) — the report's CSS declares it with @font-face, so the
SVG's text is laid out by WeasyPrint in the same font vl-convert measured it with."""


def _ledger_colour(*ledgers: str) -> alt.Scale:
    ledgers = ledgers or tuple(LEDGER_COLOURS)
    return alt.Scale(domain=list(ledgers), range=[LEDGER_COLOURS[ledger] for ledger in ledgers])


def _ledgers_in(frame: pd.DataFrame, default: tuple[str, ...] = tuple(LEDGER_COLOURS)) -> list[str]:
    """The ledgers ``frame`` holds, in the one order every chart uses (``default`` when it holds none)."""
    return [name for name in LEDGER_COLOURS if name in set(frame["ledger"])] or list(default)


def _ledger_lines(frame: pd.DataFrame, x: alt.X, x_tooltip: alt.Tooltip, ledgers: list[str]) -> alt.Chart:
    """A line per ledger over ``x``: the shape of :func:`ledger_trend` and :func:`ledgers_by_day`."""
    return (
        alt.Chart(frame)
        .mark_line(point=True, strokeWidth=1.5)
        .encode(
            x=x,
            y=alt.Y("amount:Q", title="Amount", axis=alt.Axis(format="~s")),
            color=alt.Color("ledger:N", title=None, scale=_ledger_colour(*ledgers),
                            legend=alt.Legend(orient="top", direction="horizontal")),
            tooltip=[x_tooltip, "ledger:N", alt.Tooltip("amount:Q", format=",.2f")],
        )
        .properties(width=440, height=170)
    )


def ledger_trend(frame: pd.DataFrame) -> alt.Chart:
    """Both ledgers month by month: a line per ledger.

    ``frame``: one row per month and ledger — ``month`` (a date, first of the month),
    ``ledger`` (``"Cost to serve"``, ``"Billed"`` or ``"Margin"``), ``amount`` (number).
    """
    return _ledger_lines(frame, alt.X("yearmonth(month):O", title=None, axis=alt.Axis(format="%b %y", labelAngle=0)),
                         alt.Tooltip("yearmonth(month):O", title="Month"), list(LEDGER_COLOURS))


def ledgers_by_group(frame: pd.DataFrame, *, pick: str | None = None) -> alt.Chart:
    """The ledgers side by side per group (organisation, business unit, tenant, day…): grouped bars.

    ``frame``: ``group`` (text), ``ledger`` (``"Cost to serve"``, ``"Billed"`` and/or ``"Margin"``),
    ``amount``, in the order to show the groups. ``pick``: the name of a click selection on
    ``group`` (the dashboard drills down on it); the printed report passes none.
    """
    ledgers = _ledgers_in(frame, ("Cost to serve", "Billed"))
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("group:N", title=None, sort=None),
            yOffset=alt.YOffset("ledger:N", sort=ledgers),
            x=alt.X("amount:Q", title="Amount", axis=alt.Axis(format="~s")),
            color=alt.Color("ledger:N", title=None, scale=_ledger_colour(*ledgers),
                            legend=alt.Legend(orient="top", direction="horizontal")),
            tooltip=["group:N", "ledger:N", alt.Tooltip("amount:Q", format=",.2f")],
        )
        .properties(width=400)
    )
    if pick:
        selection = alt.selection_point(name=pick, fields=["group"], on="click")
        chart = chart.add_params(selection).encode(
            opacity=alt.condition(selection, alt.value(1.0), alt.value(0.55)))
    return chart


def ledgers_by_day(frame: pd.DataFrame) -> alt.Chart:
    """The ledgers day by day over a month: a line per ledger.

    ``frame``: ``day`` (a date), ``ledger``, ``amount``.
    """
    return _ledger_lines(frame, alt.X("day:T", title=None, axis=alt.Axis(format="%d %b", labelAngle=0)),
                         alt.Tooltip("day:T", title="Day"), _ledgers_in(frame))


def forecast_band(frame: pd.DataFrame) -> alt.Chart:
    """A month's forecast per ledger: the band from p10 to p90, the p50, the actual so far and,
    where one applies, the budget (a red tick).

    ``frame``: one row per ledger — ``ledger``, ``p10``, ``p50``, ``p90``, ``actual`` and
    ``budget`` (NaN without one).
    """
    base = alt.Chart(frame).encode(y=alt.Y("ledger:N", title=None))
    band = base.mark_bar(height=14, color="#cbd2d9").encode(
        x=alt.X("p10:Q", title="Amount", axis=alt.Axis(format="~s")), x2="p90:Q",
        tooltip=["ledger:N", alt.Tooltip("p10:Q", format=",.2f"), alt.Tooltip("p50:Q", format=",.2f"),
                 alt.Tooltip("p90:Q", format=",.2f")])
    median = base.mark_tick(thickness=3, size=20, color=LEDGER_COLOURS["Billed"]).encode(x="p50:Q")
    actual = base.mark_point(shape="diamond", filled=True, size=80, color=LEDGER_COLOURS["Cost to serve"]).encode(
        x="actual:Q", tooltip=[alt.Tooltip("actual:Q", title="Actual so far", format=",.2f")])
    budget = base.mark_tick(thickness=2, size=28, color=RISE).encode(
        x="budget:Q", tooltip=[alt.Tooltip("budget:Q", title="Budget", format=",.2f")])
    return alt.layer(band, median, actual, budget).properties(width=440, height=90)


def top_movers(frame: pd.DataFrame) -> alt.Chart:
    """The biggest month-over-month changes: a horizontal bar per scope, red up, green down.

    ``frame``: ``scope`` (label, e.g. ``"t001 Globex Cloud risk-staging"``), ``change``
    (number, this month minus the previous), in the order to show them.
    """
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("scope:N", title=None, sort=None),
            x=alt.X("change:Q", title="Change from the previous month", axis=alt.Axis(format="~s")),
            color=alt.condition(alt.datum.change > 0, alt.value(RISE), alt.value(FALL)),
            tooltip=["scope:N", alt.Tooltip("change:Q", format="+,.2f")],
        )
        .properties(width=360)
    )


def for_print(chart: alt.Chart, *, font: str = PRINT_FONT) -> alt.Chart:
    """``chart`` as a printed page shows it: the shipped font, small type, no view frame,
    no interactivity to offer. Returns a new chart; ``chart`` is unchanged."""
    return chart.configure(font=font, background="white").configure_view(stroke=None).configure_axis(
        labelFontSize=8, titleFontSize=8, grid=True, gridColor="#e4e7eb", domainColor="#9aa5b1",
    ).configure_legend(labelFontSize=8, symbolSize=40)
