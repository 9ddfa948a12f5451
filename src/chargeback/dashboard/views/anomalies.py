"""Anomalies: what moved, by how much, and why — volume, rate and mix adding up to the change — and
acknowledging one from the page (recorded in the viewer's name, of the viewer's scope only)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from chargeback.dashboard import queries, session, widgets

st.title("Anomalies")
widgets.freshness()

STATUSES = ["open", "acknowledged", "resolved", "all"]
shown = st.query_params.get("status", "open")
shown = shown if shown in STATUSES else "open"
status = st.radio("Show", STATUSES, horizontal=True, key=f"anomaly_status-{shown}", index=STATUSES.index(shown))
if status != shown:
    st.query_params["status"] = status
    st.rerun()
rows = session.read(queries.anomalies, None if status == "all" else status)
if not rows:
    st.info(f"No {'' if status == 'all' else status + ' '}anomaly in your scope.")
    st.stop()

frame = pd.DataFrame([{"#": r[0], "Tenant": r[1], "Meter": r[2], "Ledger": r[3], "Source": r[4], "Direction": r[5],
                       "From": r[6], "To": r[7], "Expected": r[8], "Actual": r[9], "Change": r[9] - r[8],
                       "Largest effect": r[13], "Status": r[14], "What happened": r[15]} for r in rows])
event = widgets.table(frame, name=f"anomalies-{status}", key=f"anomalies-{status}", select=True)
widgets.follow_selection(event, frame, "#", "id")

selected = st.query_params.get("id")
if not (selected and selected.isdigit()):
    st.caption("Click a row to see its explanation and acknowledge it.")
    st.stop()
a = session.read(queries.anomaly, int(selected))
if a is None:
    st.warning(f"Anomaly #{selected} is not one of yours.")
    st.stop()
(anomaly_id, tenant, meter, ledger, source, direction, first, last, expected, actual, volume, rate, mix, largest,
 state, sentence, ack_kind, ack_by, ack_reason, currency, contributors, price_versions, missing, z) = a
st.subheader(f"#{anomaly_id}: {tenant} · {meter} · {source} ({'cost to serve' if ledger == 'cost' else 'billed'})")
st.markdown(sentence)
cols = st.columns(5)
cols[0].metric("Expected", widgets.money(expected, currency))
cols[1].metric("Actual", widgets.money(actual, currency), delta=str(actual - expected))
cols[2].metric("Volume", widgets.money(volume, currency))
cols[3].metric("Rate", widgets.money(rate, currency))
cols[4].metric("Mix", widgets.money(mix, currency))
st.caption(f"Volume + rate + mix = {widgets.money(volume + rate + mix, currency)} = actual − expected"
           f" ({first} to {last}; z = {z:.1f}).")
if missing:
    st.warning("Usage fell below half of what was expected: some of it may be missing — check the completeness"
               " of the loads (Pipeline health).")
if contributors:
    st.markdown("**Contributors**")
    st.dataframe(pd.DataFrame(contributors), hide_index=True, width="stretch")
if price_versions:
    st.markdown("**Price versions**")
    st.dataframe(pd.DataFrame(price_versions), hide_index=True, width="stretch")

if state == "acknowledged":
    st.success(f"Acknowledged as {ack_kind} by {ack_by}: {ack_reason}")
elif state == "open":
    with st.form(f"ack-{anomaly_id}"):
        kind = st.selectbox("Acknowledge as", ["expected", "planned", "problem"], key="ack_kind")
        reason = st.text_input("Why", key="ack_reason")
        if st.form_submit_button("Acknowledge"):
            if not reason.strip():
                st.error("Say why: the acknowledgement is kept with your name and reason.")
            elif session.write(queries.acknowledge, anomaly_id, kind, reason.strip()):
                st.rerun()
            else:
                st.error("This anomaly could not be acknowledged (resolved meanwhile, or not in your scope).")
