"""What several pages show the same way: the freshness line, money, tables with a CSV export."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pandas as pd
import streamlit as st

from chargeback.dashboard import queries, session
from chargeback.platform.money import format_money


def plain(text: str) -> str:
    """``text`` (from a URL, a source's name) shown as itself in Markdown: no link, emphasis or HTML."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~:$])", r"\\\1", text)


def money(amount: Decimal | None, currency: str = "USD") -> str:
    return "—" if amount is None else format_money(amount, currency)


def freshness() -> None:
    through = session.read(queries.usage_through)
    text = f"{through:%Y-%m-%d %H:%M} UTC" if through else "no usage yet"
    st.caption(f"Usage through {text}. Figures are the marts', to the cent; each table exports as CSV.")


def page(title: str) -> list[dt.date]:
    """A page's head: its title, the freshness line, and the months with a ledger in the viewer's
    scope (newest first); stops the page when there are none."""
    st.title(title)
    freshness()
    months = session.read(queries.months)
    if not months:
        st.info("No ledger yet: the marts have no usage in your scope.")
        st.stop()
    return months


def month_param(months: list[dt.date], key: str = "month") -> dt.date | None:
    """The month of the query string (``?month=YYYY-MM``), or the newest the viewer has."""
    text = st.query_params.get(key)
    if text:
        try:
            return dt.date.fromisoformat(f"{text}-01")
        except ValueError:
            st.warning(f"month {text!r} in the link is not YYYY-MM: showing the latest month")
    return months[0] if months else None


def month_picker(months: list[dt.date], current: dt.date, *, key: str) -> dt.date:
    """A month select that writes ``month`` to the query string."""
    options = sorted(set(months) | {current}, reverse=True)
    # the key carries the month shown: after the back button the select starts from the URL's month
    chosen = st.selectbox("Month", options, index=options.index(current), key=f"{key}-{current}",
                          format_func=lambda m: f"{m:%B %Y}")
    if chosen != current:
        st.query_params["month"] = f"{chosen:%Y-%m}"
        st.rerun()
    return chosen


def table(frame: pd.DataFrame, *, name: str, key: str, select: bool = False, **options):
    """``frame`` as a table with a "Download CSV" button; with ``select``, a single row can be
    clicked (returns the selection event)."""
    config = {column: st.column_config.NumberColumn(column, format="%.2f") for column in frame.columns
              if _is_money(frame[column])}
    config.update(options.pop("column_config", {}))
    event = st.dataframe(frame, hide_index=True, key=key, column_config=config,
                         on_select="rerun" if select else "ignore",
                         selection_mode="single-row" if select else "multi-row", **options)
    st.download_button("Download CSV", frame.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=f"{key}-csv",
                       on_click="ignore")
    return event


def follow_selection(event, frame: pd.DataFrame, column: str, param: str) -> None:
    """A clicked row of ``frame`` opens it: its ``column`` becomes the query parameter ``param``.
    A selection outlives its rerun, so it is followed only when it changes the URL."""
    if event and event.selection.rows:
        picked = str(int(frame.iloc[event.selection.rows[0]][column]))
        if picked != st.query_params.get(param):
            st.query_params[param] = picked
            st.rerun()


def _is_money(column: pd.Series) -> bool:
    """A column of amounts: Decimals in cents (numeric(18,2)), shown with their two decimals."""
    values = [v for v in column if v is not None and not (isinstance(v, float) and v != v)]
    return bool(values) and all(isinstance(v, Decimal) and v.as_tuple().exponent == -2 for v in values)
