"""A small warehouse with everything the dashboard shows: tenants of three organisations with
sources, two closed months (October final, with PDFs), November to date, an injected spike and
the anomalies found, recommendations, forecasts, budget states, and a user of each kind. Built the way the
pipeline builds it (dbt, month close, the insights' own code), in the current database."""

from __future__ import annotations

import datetime as dt

from chargeback.billing import close
from chargeback.engine import transform
from chargeback.ingest.simulate import Injection
from chargeback.insights import anomalies, budgets, forecast, recommend
from chargeback.platform import access, warehouse
from snapshots import publish_simulated

TENANTS = ["t001", "t002", "t003", "t004", "t005", "t007", "t008", "t011"]  # Globex, Acme, Initech
START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
THROUGH = dt.datetime(2026, 11, 12, tzinfo=dt.UTC)
CLOSED = "2026-10"
SPIKE = Injection("source_spike", "t002", dt.datetime(2026, 10, 20, tzinfo=dt.UTC),
                  dt.datetime(2026, 10, 21, tzinfo=dt.UTC), rank=1, factor=8.0)
PASSWORD = "dashboard-password"
USERS = {"fin": ("finance", []), "eng": ("engineer", []), "acme": ("tenant", ["org:Acme Corp"]),
         "t007": ("tenant", ["tenant:t007"])}


def build() -> None:
    publish_simulated(TENANTS, START, THROUGH, seed=21, sources=4, injections=(SPIKE,))
    transform.build()
    recommend.run(CLOSED)  # before the final invoices, as billing_monthly does: they list the top three
    close.close_month(CLOSED, as_of="2026-11-05T00:00:00Z", workers=1)
    anomalies.run(dt.date(2026, 10, 1), dt.date(2026, 11, 11), environ={})
    with warehouse.connect() as conn:
        forecast.forecast_month(conn, dt.date(2026, 11, 1))
    budgets.check("2026-11", environ={})  # config/budgets.yml: states and alerts, nothing sent
    for name, (role, scopes) in USERS.items():
        access.add_user(name, role, [access.parse_scope(s) for s in scopes], PASSWORD)
