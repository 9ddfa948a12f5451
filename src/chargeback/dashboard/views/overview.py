"""Overview: the month to date against its forecast and budgets, both ledgers month by month, and
the biggest movers — the viewer's scope (finance: the whole platform)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from chargeback.dashboard import drill, queries, session, widgets
from chargeback.insights import charts

months = widgets.page("Overview")
month = widgets.month_param(months)
month = widgets.month_picker(months, month, key="overview_month")

by_org = session.read(queries.breakdown, drill.Position(month))
billed = sum((r.billed for r in by_org), queries.ZERO)
cost = sum((r.cost for r in by_org), queries.ZERO)
currency = by_org[0].currency if by_org else "USD"
forecast = {row[0]: row for row in session.read(queries.forecasts, month)}
budgets = session.read(queries.budget_status, month)

a, b, c, d = st.columns(4)
a.metric(f"Billed, {month:%B}", widgets.money(billed, currency))
b.metric("Cost to serve", widgets.money(cost, currency))
c.metric("Margin", widgets.money(billed - cost, currency))
if "billed" in forecast:
    d.metric("Billed forecast (p50)", widgets.money(forecast["billed"][2], currency),
             help=f"p10 {widgets.money(forecast['billed'][1])} – p90 {widgets.money(forecast['billed'][3])}")
else:
    d.metric("Billed forecast (p50)", "—", help="no forecast for this month yet (the insights DAG makes them)")

if budgets:
    st.markdown(f"**Budgets:** {len(budgets)} this month, {sum(b[9] == 'over' for b in budgets)} over,"
                f" {sum(b[9] == 'at_risk' for b in budgets)} at risk — see *Forecast & budgets*.")

trend = session.read(queries.monthly_ledgers)
frame = pd.DataFrame([{"month": pd.Timestamp(m), "ledger": name, "amount": float(v)} for m, c_, b_ in trend
                      for name, v in (("Cost to serve", c_), ("Billed", b_), ("Margin", b_ - c_))])
st.altair_chart(charts.ledger_trend(frame).properties(title="Both ledgers by month"), width="stretch",
                height=280)

left, right = st.columns(2)
with left:
    orgs = pd.DataFrame([{"group": r.group, "ledger": name, "amount": float(v)} for r in by_org
                         for name, v in (("Cost to serve", r.cost), ("Billed", r.billed))])
    st.altair_chart(charts.ledgers_by_group(orgs).properties(title="By organisation"),
                    width="stretch")
with right:
    # movers between two whole months: the selected one if it is complete, else the last two complete
    through = session.read(queries.usage_through)
    complete = [m for m in months if through and queries.next_month(m) <= through.date()]
    pair = [m for m in complete if m <= month][:2]
    if len(pair) == 2:
        now = {r.group: r.billed for r in session.read(queries.breakdown, drill.Position(pair[0], by="tenant"))}
        before = {r.group: r.billed for r in session.read(queries.breakdown, drill.Position(pair[1], by="tenant"))}
        changes = sorted(((t, now.get(t, queries.ZERO) - before.get(t, queries.ZERO)) for t in set(now) | set(before)),
                         key=lambda x: (-abs(x[1]), x[0]))[:10]
        movers = pd.DataFrame([{"scope": t, "change": float(ch)} for t, ch in changes if ch])
        if not movers.empty:
            st.altair_chart(charts.top_movers(movers).properties(
                title=f"Biggest movers of the price billed, {pair[0]:%B} against {pair[1]:%B}"),
                width="stretch")
