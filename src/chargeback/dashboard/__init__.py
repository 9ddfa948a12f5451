"""The dashboard (docs/DASHBOARD.md): a Streamlit app over the marts, each viewer seeing only what the
database lets its role see. ``chargeback dashboard`` serves it; :mod:`.server` starts it."""
