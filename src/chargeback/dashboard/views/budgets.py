"""Forecast & budgets: the month's forecast band against its budgets, budget states and the alerts
that fired."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from chargeback.dashboard import queries, session, widgets
from chargeback.insights import charts

months = widgets.page("Forecast & budgets")
month = widgets.month_picker(months, widgets.month_param(months), key="budgets_month")

forecast = session.read(queries.forecasts, month)
budgets = session.read(queries.budget_status, month)
# a budget is drawn against the forecast only where its scope is exactly the viewer's
whole = session.read(queries.scope_budgets)
widest = {b[3]: float(b[4]) for b in budgets if b[0] in whole}
if forecast:
    frame = pd.DataFrame([{"ledger": {"billed": "Billed", "cost": "Cost to serve"}[f[0]], "p10": float(f[1]),
                           "p50": float(f[2]), "p90": float(f[3]), "actual": float(f[4] or 0),
                           "budget": widest.get(f[0], float("nan"))} for f in forecast])
    st.altair_chart(charts.forecast_band(frame).properties(title=f"{month:%B %Y}: forecast band (p10–p90),"
                                                            " p50, actual so far and budget"),
                    width="stretch", height=170)
    widgets.table(pd.DataFrame([{"Ledger": f[0], "p10": f[1], "p50": f[2], "p90": f[3], "Actual so far": f[4],
                                 "As of": f[5]} for f in forecast]), name=f"forecast-{month:%Y-%m}", key="forecast")
else:
    st.info("No forecast for this month in your scope (the insights DAG forecasts the month in progress).")

st.subheader("Budgets")
if budgets:
    widgets.table(pd.DataFrame(budgets, columns=["Budget", "Scope level", "Scope", "Ledger", "Budget amount",
                                                 "Actual", "Used %", "Month elapsed %", "Forecast p50", "State",
                                                 "Forecast state", "Breach date", "Currency", "Note"]),
                  name=f"budgets-{month:%Y-%m}", key="budgets")
else:
    st.info("No budget covers your scope this month (config/budgets.yml).")

st.subheader("Alerts")
alerts = session.read(queries.budget_alerts, month)
if alerts:
    widgets.table(pd.DataFrame(alerts, columns=["Fired at", "Budget", "Threshold", "Kind", "Actual", "Used %",
                                                "Message"]), name=f"alerts-{month:%Y-%m}", key="alerts")
else:
    st.caption("No alert fired this month.")
