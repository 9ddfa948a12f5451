"""Pipeline health, for data engineers: how fresh each mart is, the last loads and dbt builds, the
failures the DAGs recorded, Great Expectations results with their Data Docs, quarantine by reason
and what waits for its grace period."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from chargeback.dashboard import queries, session, widgets

st.title("Pipeline health")
widgets.freshness()
status = session.read(queries.pipeline_status)

a, b, c = st.columns([2, 1, 1])
a.metric("Usage through", f"{status.usage_through:%Y-%m-%d %H:%M} UTC" if status.usage_through else "—")
b.metric("Quarantined rows open", f"{status.quarantine_open:,}")
c.metric("Months waiting for their grace period", str(len(status.draft_months)))

st.subheader("Freshness per mart")
widgets.table(pd.DataFrame([{"Mart": m.mart, "Last successful build": m.finished_at, "Window start": m.window_start,
                             "Window end": m.window_end, "dbt run": m.transform_id} for m in status.marts]),
              name="mart-freshness", key="marts")

left, right = st.columns(2)
with left:
    st.subheader("Loads")
    widgets.table(pd.DataFrame(session.read(queries.load_runs), columns=[
        "Load", "Source", "Window start", "Window end", "Status", "Rows loaded", "Rows quarantined", "Finished"]),
        name="loads", key="loads")
with right:
    st.subheader("dbt builds")
    widgets.table(pd.DataFrame(session.read(queries.transform_runs), columns=[
        "Run", "Started", "Finished", "Status", "Selection", "Window start", "Window end", "Failures", "By"]),
        name="dbt-runs", key="dbt")

st.subheader("Failures recorded by the DAGs")
failures = session.read(queries.failures)
if failures:
    widgets.table(pd.DataFrame(failures, columns=["At", "Kind", "Severity", "DAG", "Task", "Run", "Subject", "Reason",
                                                  "Action"]), name="failures", key="failures")
else:
    st.caption("No failure recorded.")

st.subheader("Great Expectations")
checks = session.read(queries.validations)
if checks:
    widgets.table(pd.DataFrame(checks, columns=["At", "Suite", "Table", "Passed", "Expectations", "Failed", "Summary",
                                                "Data Docs"]), name="validations", key="validations",
                  column_config={"Data Docs": st.column_config.LinkColumn("Data Docs")})
else:
    st.caption("No validation yet.")

st.subheader("Quarantine (open rows)")
rows = session.read(queries.quarantine)
if rows:
    widgets.table(pd.DataFrame(rows, columns=["Field", "Reason", "Rows", "Files", "First hour", "Last hour"]),
                  name="quarantine", key="quarantine")
else:
    st.caption("Nothing in quarantine.")

st.subheader("Waiting for the grace period")
if status.holds:
    st.markdown("**Producers held back by the gate's policy**")
    widgets.table(pd.DataFrame([{"Load": h.load_id, "Held": h.holder_kind, "Who": h.holder, "Reason": h.reason,
                                 "Hours": h.hours} for h in status.holds]), name="holds", key="holds")
if status.draft_months:
    widgets.table(pd.DataFrame([{"Month": d.period, "Draft invoices": d.drafts, "Grace period ends": d.grace_period_end,
                                 "Completeness": d.close_status, "Missing hours": d.missing_hours}
                                for d in status.draft_months]),
                  name="grace-period", key="drafts")
else:
    st.caption("No month waits: every closed month is final.")
