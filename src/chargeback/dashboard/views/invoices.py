"""Invoices: every document of the viewer's scope — drafts, finals, credit and debit notes — with its
status, and its stored PDF to download once its sha256 matches the one recorded."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from chargeback.dashboard import queries, session, widgets

st.title("Invoices")
widgets.freshness()
rows = session.read(queries.invoices)
if not rows:
    st.info("No invoice in your scope yet (drafts are rendered at each month's close).")
    st.stop()
frame = pd.DataFrame([{"Document": r[0], "Type": r[1].replace("_", " "), "Number": r[2] or "(draft)", "Tenant": r[3],
                       "Month": f"{r[4]:%Y-%m}", "Status": "corrected" if r[12] else r[5], "Total": r[6],
                       "Currency": r[7], "Issued": r[8], "Corrects": r[9]} for r in rows])
event = widgets.table(frame, name="invoices", key="invoices", select=True)
widgets.follow_selection(event, frame, "Document", "document")
selected = st.query_params.get("document")
if selected and selected.isdigit():
    name, pdf, message = session.stored_pdf(int(selected))
    if pdf is None:
        st.error(f"Document {selected}: {message}")
    else:
        st.markdown(f"**{name}** — {message}")
        st.download_button("Download PDF", pdf, file_name=name, mime="application/pdf", key="pdf")
else:
    st.caption("Click a row to download its PDF.")
