"""Cost explorer: drill from the organisation to the hour by clicking a bar or a row.

The whole view is the query string (:mod:`chargeback.dashboard.drill`): month, ledger, idle,
the filters chosen and the grouping. A drill writes it (a browser history entry); the breadcrumb
goes back up.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from chargeback.dashboard import drill, queries, session, widgets
from chargeback.insights import charts

months = widgets.page("Cost explorer")
try:
    pos = drill.from_params(st.query_params.to_dict(), months[0])
except drill.DrillError as exc:
    st.warning(f"This link names no view ({widgets.plain(str(exc))}); showing the top of the latest month.")
    pos = drill.Position(months[0])


def go(position: drill.Position) -> None:
    st.query_params.from_dict(position.to_params())
    st.rerun()


# ---- controls ----
# The widgets' keys carry the position: each view's controls start from its URL, so the back
# button (which changes the URL, not the widgets' state) never finds a stale control to re-apply.
key = "-".join(f"{k}={v}" for k, v in sorted(pos.to_params().items()))
left, middle, right, last = st.columns([2, 3, 2, 3])
with left:
    options = sorted(set(months) | {pos.month}, reverse=True)
    month = st.selectbox("Month", options, index=options.index(pos.month), key=f"explorer_month-{key}",
                         format_func=lambda m: f"{m:%B %Y}")
with middle:
    ledger = st.radio("Ledger", drill.LEDGERS, index=drill.LEDGERS.index(pos.ledger), horizontal=True,
                      format_func=drill.LEDGER_LABEL.get, key=f"explorer_ledger-{key}")
with right:
    idle = st.radio("Idle and shared cost", drill.IDLE, index=drill.IDLE.index(pos.idle), horizontal=True,
                    key=f"explorer_idle-{key}", help="spread: inside each tenant's cost to serve, as the ledger has it;"
                    " separate: taken out of the tenants and shown as rows of their own")
with last:
    options = pos.groupable(session.read(queries.label_keys))
    if pos.group not in options:  # the bottom: one hour, grouped by hour
        options.insert(0, pos.group)
    by = st.selectbox("Group by", options, index=options.index(pos.group), key=f"explorer_by-{key}",
                      format_func=lambda g: f"label {g[6:]}" if g.startswith("label:") else drill.LABEL[g])
if month != pos.month:  # the same place in another month: its days and hours are not that month's
    go(replace(pos, month=month, filters=tuple((lv, v) for lv, v in pos.filters if lv not in ("day", "hour")),
               by=None if pos.by == "hour" else pos.by))
if (ledger, idle) != (pos.ledger, pos.idle):
    go(replace(pos, ledger=ledger, idle=idle))
if by != pos.group:
    go(replace(pos, by=by))

# ---- breadcrumb ----
crumbs = pos.breadcrumb()
cols = st.columns(len(crumbs) + 1)
for i, (text, target) in enumerate(crumbs):
    with cols[i]:
        if i == len(crumbs) - 1:
            st.markdown(f"**{widgets.plain(text)}**")
        elif st.button(widgets.plain(text), key=f"crumb-{i}", type="tertiary"):
            go(target)

# ---- the breakdown ----
rows = session.read(queries.breakdown, pos)
currency = rows[0].currency if rows else "USD"
total_cost = sum((r.cost for r in rows), queries.ZERO)
total_billed = sum((r.billed for r in rows), queries.ZERO)
a, b, c = st.columns(3)
a.metric("Billed", widgets.money(total_billed, currency))
b.metric("Cost to serve", widgets.money(total_cost, currency))
c.metric("Margin", widgets.money(total_billed - total_cost, currency))
if not rows:
    st.info("Nothing here in your scope for this month.")
    st.stop()

group_label = f"label {pos.group[6:]}" if pos.group.startswith("label:") else drill.LABEL[pos.group]
shown = ["Cost to serve", "Billed"] if pos.ledger != "margin" else ["Margin"]
chart_rows = rows[:40]
frame = pd.DataFrame(
    [{"group": r.group, "ledger": name, "amount": float(r.of({"Cost to serve": "cost", "Billed": "billed",
                                                              "Margin": "margin"}[name]))}
     for r in chart_rows for name in shown])
clickable = not pos.at_bottom
chart = charts.ledgers_by_group(frame, pick="pick" if clickable else None).properties(
    title=f"By {group_label.lower()}" + (" (top 40; the table has all)" if len(rows) > 40 else ""))
if clickable:
    event = st.altair_chart(chart, on_select="rerun", key=f"chart-{key}", width="stretch")
    picked = (event.selection.get("pick") or []) if event else []
    if picked and picked[0].get("group") not in (None, queries.IDLE_GROUP, queries.SHARED_GROUP):
        go(pos.drill(str(picked[0]["group"])))
else:
    st.altair_chart(chart, width="stretch")

figures = pd.DataFrame([{group_label: r.group, "Billed": r.billed, "Cost to serve": r.cost, "Margin": r.margin,
                         "Currency": r.currency} for r in rows])
event = widgets.table(figures, name=f"chargeback-{pos.group}-{pos.month:%Y-%m}", key=f"table-{key}",
                      select=clickable)
if clickable and event and event.selection.rows:
    value = str(figures.iloc[event.selection.rows[0]][group_label])
    if value not in (queries.IDLE_GROUP, queries.SHARED_GROUP):
        go(pos.drill(value))

trend = session.read(queries.daily_trend, pos)
if trend:
    days = pd.DataFrame([{"day": pd.Timestamp(d), "ledger": name, "amount": float(v)} for d, cost, billed in trend
                         for name, v in (("Cost to serve", cost), ("Billed", billed))])
    st.altair_chart(charts.ledgers_by_day(days).properties(title="Day by day"), width="stretch", height=280)

# ---- what the figures are made of (read only when asked for: they are the widest tables) ----
trace = st.toggle("Show what these figures are made of: invoice lines, price versions, allocations",
                  value=pos.trace, key=f"explorer_trace-{key}")
if trace != pos.trace:
    go(replace(pos, trace=trace))
if trace:
    if pos.filter_map.get("source") or pos.label_filters:
        st.markdown("A source's or label's amounts are its tenant's, per meter and day, split by its share of the"
                    " usage (largest remainder): the tenant's figures below are what was split.")
    if "day" in pos.filter_map or "hour" in pos.filter_map:
        st.markdown("The billed amount is priced by the month and spread over the month's days by each day's"
                    " usage; an hour's share is its day's, split by the hour's usage.")
    lines = session.read(queries.invoice_lines, pos)
    lines_total = sum((r[11] for r in lines), queries.ZERO)
    st.markdown(f"**Invoice lines of {pos.month:%B %Y}** — total {widgets.money(lines_total, currency)}")
    widgets.table(pd.DataFrame(lines, columns=["Tenant", "Line", "Type", "Meter", "Description", "Price book",
                                               "Price version", "Tier", "Quantity", "Unit", "Unit price",
                                               "Amount", "Currency"]),
                  name=f"invoice-lines-{pos.month:%Y-%m}", key=f"lines-{key}")
    allocations = session.read(queries.cost_allocations, pos)
    allocated = sum((r[6] for r in allocations), queries.ZERO)
    st.markdown(f"**Cost allocations** — total {widgets.money(allocated, currency)}")
    widgets.table(pd.DataFrame(allocations, columns=["Pool", "Component", "Cost type", "Driver meter",
                                                     "Driver quantity", "Hours", "Allocated cost", "Currency"]),
                  name=f"cost-allocations-{pos.month:%Y-%m}", key=f"alloc-{key}")
