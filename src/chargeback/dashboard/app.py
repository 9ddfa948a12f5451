"""The dashboard's entry point, run by Streamlit (``chargeback dashboard``): sign-in, then the pages
the viewer's kind of user opens. Pages only lay out; queries are in :mod:`.queries`."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from chargeback.dashboard import session

VIEWS = Path(__file__).parent / "views"  # not "pages": Streamlit would run those files on its own, before the sign-in

st.set_page_config(page_title="Chargeback", page_icon=":material/receipt_long:", layout="wide")

everyone = ("finance", "engineer", "tenant")
pages = [
    (st.Page(VIEWS / "overview.py", title="Overview", url_path="overview", icon=":material/home:", default=True),
     everyone),
    (st.Page(VIEWS / "explorer.py", title="Cost explorer", url_path="explorer", icon=":material/account_tree:"),
     everyone),
    (st.Page(VIEWS / "budgets.py", title="Forecast & budgets", url_path="budgets", icon=":material/trending_up:"),
     everyone),
    (st.Page(VIEWS / "anomalies.py", title="Anomalies", url_path="anomalies", icon=":material/troubleshoot:"),
     everyone),
    (st.Page(VIEWS / "recommendations.py", title="Ways to pay less", url_path="recommendations",
             icon=":material/savings:"), everyone),
    (st.Page(VIEWS / "invoices.py", title="Invoices", url_path="invoices", icon=":material/description:"),
     ("finance", "tenant")),
    (st.Page(VIEWS / "pipeline.py", title="Pipeline health", url_path="pipeline", icon=":material/monitor_heart:"),
     ("finance", "engineer")),
]

viewer = session.viewer()
if viewer is None:
    # every page is known before the sign-in, so a link to one (with its query string) opens it once signed in
    st.navigation([page for page, _ in pages], position="hidden")
    session.sign_in_form()
else:
    # which pages a kind of user opens is a convenience; what each shows is decided by the database
    navigation = st.navigation([page for page, kinds in pages if viewer.role in kinds])
    with st.sidebar:
        st.markdown(f"Signed in as **{viewer.name}** ({viewer.role})")
        if st.button("Sign out", key="sign_out"):
            session.sign_out()
    navigation.run()
