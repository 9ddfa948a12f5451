"""The warehouse: one connection path, schemas in place, a read-only role for BI."""

from __future__ import annotations

import psycopg
import pytest

from chargeback.engine import transform
from chargeback.platform import warehouse

pytestmark = pytest.mark.warehouse


def test_ensure_schema_is_idempotent_and_creates_every_stage_schema():
    warehouse.ensure_schema()
    warehouse.ensure_schema()
    with warehouse.connect() as conn:
        schemas = {r[0] for r in conn.execute("select nspname from pg_namespace")}
    assert {"raw", "config", "pipeline", "marts"} <= schemas


def test_dbt_and_sqlalchemy_reach_the_same_database_as_psycopg():
    params = warehouse.connection_params()
    with warehouse.connect() as conn:
        assert conn.execute("select current_database()").fetchone()[0] == params["dbname"]
    assert warehouse.dbt_env()["CHARGEBACK_PG_DBNAME"] == params["dbname"]
    assert f"/{params['dbname']}" in warehouse.sqlalchemy_url()


def test_bi_role_reads_the_marts_and_nothing_before_them():
    transform.build()
    warehouse.ensure_schema()
    with warehouse.connect(admin=True) as conn:
        conn.execute("set role chargeback_bi")
        assert conn.execute("select count(*) from marts.dim_meters").fetchone()[0] == 5
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from raw.usage_snapshots")
