"""Ways to pay less: each recommendation with its saving (the month re-priced with the change, less
its invoice), accepted or dismissed from the page in the viewer's name, and a what-if re-pricer."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from chargeback.dashboard import queries, session, widgets
from chargeback.insights import whatif

st.title("Ways to pay less")
widgets.freshness()

rows = session.read(queries.recommendations, None)
if rows:
    periods = sorted({r[1] for r in rows}, reverse=True)
    period = widgets.month_picker(periods, widgets.month_param(periods), key="rec_month")
    current = [r for r in rows if r[1] == period]
    total = sum((r[8] for r in current), queries.ZERO)
    st.metric(f"Saving on {period:%B %Y}, if every recommendation had been taken", widgets.money(total))
    frame = pd.DataFrame([{"#": r[0], "Tenant": r[2], "Kind": r[3], "Target": r[4], "Recommendation": r[5],
                           "Confidence": r[7], "Saving a month": r[8], "Currency": r[9], "Status": r[10],
                           "Change": r[13]} for r in current])
    event = widgets.table(frame, name=f"recommendations-{period:%Y-%m}", key=f"recs-{period}", select=True)
    widgets.follow_selection(event, frame, "#", "id")
    selected = st.query_params.get("id")
    chosen = next((r for r in current if selected and str(r[0]) == selected), None)
    if chosen:
        rec_id, _, tenant, kind, target, title, evidence, confidence, saving, currency, status, by, why, change = chosen
        st.subheader(f"#{rec_id}: {title}")
        st.markdown(f"{evidence}\n\nSaving: **{widgets.money(saving, currency)}** a month ({confidence} confidence)."
                    f" What-if: `--set {change}`.")
        if status != "open":
            st.success(f"{status.capitalize()} by {by}: {why}")
        else:
            with st.form(f"decide-{rec_id}"):
                reason = st.text_input("Why", key="decide_reason")
                accept, dismiss = st.columns(2)
                accepted = accept.form_submit_button("Accept")
                dismissed = dismiss.form_submit_button("Dismiss")
            if accepted or dismissed:
                if not reason.strip():
                    st.error("Say why: the decision is kept with your name and reason.")
                elif session.write(queries.decide, rec_id, "accepted" if accepted else "dismissed", reason.strip()):
                    st.rerun()
else:
    st.info("No recommendation in your scope yet (they are priced at each month's close).")

st.subheader("What if…")
st.caption("Re-price a month of a tenant with changes, through the same pricing engine as the invoices:"
           " `retention:SOURCE=7d`, `retention=30d`, `sample:SOURCE=10%`, `drop:SOURCE`, `scans:SOURCE=50%`,"
           " `commitment=2000`, `price_book=NAME`.")
with st.form("whatif"):
    defaults = st.query_params.get("whatif_tenant", rows[0][2] if rows else "")
    a, b = st.columns(2)
    tenant = a.text_input("Tenant", value=defaults, key="whatif_tenant")
    period_text = b.text_input("Month (YYYY-MM)", value=f"{rows[0][1]:%Y-%m}" if rows else "", key="whatif_period")
    changes = st.text_area("Changes, one per line", value=st.query_params.get("whatif_set", ""), key="whatif_set")
    run = st.form_submit_button("Re-price")
if run:
    try:
        comparison = session.whatif(period_text.strip(), tenant.strip(),
                                    [c.strip() for c in changes.splitlines() if c.strip()])
    except (whatif.WhatIfError, ValueError, PermissionError) as exc:
        st.error(str(exc))
    else:
        lines = whatif.line_by_line(comparison)
        st.metric("The change saves a month" if comparison.saving >= 0 else "The change costs a month",
                  widgets.money(abs(comparison.saving), comparison.currency))
        widgets.table(pd.DataFrame(lines, columns=["Line", "Quantity now", "Amount now", "Quantity then",
                                                   "Amount then", "Difference"]),
                      name=f"whatif-{tenant.strip()}-{period_text.strip()}", key="whatif-table")
