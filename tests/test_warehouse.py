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


def test_the_warehouse_database_sorts_text_by_byte_order():
    """Identifiers sort by code point ('B' before 'a', 'é' after 'z'), with byte-order
    comparisons (docs/DECISIONS.md: the databases collate by byte order)."""
    with warehouse.connect() as conn:
        collate, provider = conn.execute(
            "select coalesce(datlocale, datcollate), datlocprovider from pg_database"
            " where datname = current_database()" if conn.info.server_version >= 170000 else
            "select datcollate, datlocprovider from pg_database where datname = current_database()").fetchone()
        ordered = conn.execute("select array_agg(x order by x) from unnest(array['a', 'é', 'B', 'z']) as x")
        ordered = ordered.fetchone()[0]
    assert (collate, provider) in {("C.UTF-8", "b"), ("C", "c")}
    assert ordered == ["B", "a", "z", "é"]


def test_bi_role_reads_the_marts_and_nothing_before_them():
    transform.build()
    warehouse.ensure_schema()
    with warehouse.connect(admin=True) as conn:
        conn.execute("set role chargeback_bi")
        assert conn.execute("select count(*) from marts.dim_meters").fetchone()[0] == 5
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from raw.usage_snapshots")


def test_a_new_embedded_server_starts_with_its_cache_sized_to_the_machine(tmp_path, monkeypatch):
    """The embedded server is initialised, sized (shared_buffers) and restarted once; found
    again, it is not restarted. A server named by WAREHOUSE_DSN is its DBA's to size."""
    from chargeback.platform.settings import get_settings

    monkeypatch.delenv("WAREHOUSE_DSN", raising=False)
    monkeypatch.setenv("CHARGEBACK_EMBEDDED_DIR", str(tmp_path / "embedded"))
    settings = get_settings()
    try:
        uri = warehouse.server_dsn(settings)
        with psycopg.connect(uri) as conn:
            started = conn.execute("select pg_postmaster_start_time()").fetchone()[0]
            assert conn.execute("select pg_size_bytes(current_setting('shared_buffers'))"
                                " = pg_size_bytes(%s)", (warehouse._embedded_shared_buffers(),)).fetchone()[0]
        with psycopg.connect(warehouse.server_dsn(settings)) as conn:
            assert conn.execute("select pg_postmaster_start_time()").fetchone()[0] == started
    finally:
        warehouse.stop_embedded(settings)
