"""Readers scoped by the database: a dashboard user's role or a BI login sees only the tenants
of its scope, in every mart, intermediate table, insight and invoice it may read, whatever SQL
it sends; personal data is finance's only; readers cannot write, create temporary tables or run
long; a dashboard user acknowledges an anomaly only of its scope and only in its own name.

A few simulated days of five tenants from three organisations, built by dbt; every check runs as
the reader's role (``SET ROLE`` from the owner, as the dashboard's login does, or a real login
for the BI role)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import conninfo, sql

from chargeback.engine import transform
from chargeback.platform import access, warehouse
from conftest import database_of_its_own
from snapshots import publish_simulated

pytestmark = pytest.mark.warehouse

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
END = START + dt.timedelta(days=3)
TENANTS = ["t001", "t002", "t003", "t004", "t007"]  # Globex: t001 t003; Acme: t002 t004; Initech: t007
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def built(test_warehouse):
    with database_of_its_own("access") as name:
        publish_simulated(TENANTS, START, END, seed=5, sources=3)
        transform.build(START, END)
        with warehouse.connect() as conn:  # an anomaly per tenant, as the detector records them
            for tenant in TENANTS:
                conn.execute(
                    "insert into insights.anomalies (tenant_id, meter, ledger, direction, first_day, last_day,"
                    " currency, expected, actual, volume, rate, mix, largest_effect, z, may_be_missing_data,"
                    " sentence, usage_through, line) values (%s, 'ingested_gb', 'billed', 'spike', '2026-10-02',"
                    " '2026-10-02', 'USD', 10, 20, 10, 0, 0, 'volume', 5, false, 's', now(), 'l')", (tenant,))
        access.add_user("acme", "tenant", [access.parse_scope("org:Acme Corp")], PASSWORD)
        access.add_user("t007", "tenant", [access.parse_scope("tenant:t007")], PASSWORD)
        access.add_user("eng", "engineer", [], PASSWORD)
        access.add_user("fin", "finance", [], PASSWORD)
        yield name


def acme() -> set[str]:
    """Every tenant of the organisation Acme Corp (those without usage have invoice lines too: fees)."""
    with warehouse.connect() as conn:
        return {r[0] for r in conn.execute("select tenant_id from config.tenants where organisation = 'Acme Corp'")}


def invoiced() -> set[str]:
    with warehouse.connect() as conn:
        return {r[0] for r in conn.execute("select tenant_id from marts.fct_invoices")}


def as_role(role: str, query: str, params: tuple = ()) -> list[tuple]:
    """``query`` as ``role`` (SET ROLE from the owner: the owner's superuser rights are gone)."""
    with warehouse.connect(admin=True) as conn:
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        return conn.execute(query, params).fetchall()


def readable_tenant_relations() -> list[str]:
    """Every table or view with a tenant_id column that chargeback_bi may select."""
    with warehouse.connect(admin=True) as conn:
        return [r[0] for r in conn.execute(
            "select format('%I.%I', c.table_schema, c.table_name) from information_schema.columns as c"
            " where c.column_name = 'tenant_id' and c.table_schema in ('marts', 'intermediate', 'insights', 'pipeline')"
            " and has_table_privilege('chargeback_bi', format('%I.%I', c.table_schema, c.table_name), 'select')"
            " order by 1")]


def test_a_scoped_role_sees_only_its_tenants_in_every_relation_it_can_read(built):
    relations = readable_tenant_relations()
    assert {"marts.fct_invoice_lines", "marts.fct_usage_hourly", "marts.fct_showback_sources_daily",
            "marts.int_ledger_daily", "intermediate.int_usage_hourly", "insights.anomalies",
            "pipeline.invoices"} <= set(relations)
    populated = 0
    for relation in relations:
        everything = {r[0] for r in as_role(warehouse.pipeline_role()[0], f"select distinct tenant_id from {relation}")}
        scoped = {r[0] for r in as_role(access.db_role_of("acme"), f"select distinct tenant_id from {relation}")}
        t007 = {r[0] for r in as_role(access.db_role_of("t007"), f"select distinct tenant_id from {relation}")}
        assert scoped - {None} == everything & acme(), relation  # a view's roll-up rows: of visible rows
        assert t007 - {None} == everything & {"t007"}, relation
        populated += bool(scoped)
    assert populated >= 10


def test_another_tenant_cannot_be_reached_by_filter_or_crafted_sql(built):
    role = access.db_role_of("t007")
    assert as_role(role, "select count(*) from marts.fct_usage_hourly where tenant_id = 't002'") == [(0,)]
    assert as_role(role, "select count(*) from marts.fct_usage_hourly where tenant_id = 't002' or true") > [(0,)]
    assert {r[0] for r in as_role(role, "select tenant_id from marts.fct_usage_hourly"
                                        " union select tenant_id from pipeline.invoices")} <= {"t007"}
    # rows without a tenant (organisation roll-ups, the pools, what the platform keeps): all-seeing roles only
    assert as_role(role, "select count(*) from marts.fct_trends_daily where tenant_id is null") == [(0,)]
    assert as_role(role, "select count(*) from marts.fct_cost_pools_hourly") == [(0,)]
    assert as_role(access.db_role_of("eng"), "select count(*) > 0 from marts.fct_cost_pools_hourly") == [(True,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(role, "select count(*) from access.scopes")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(role, "select * from access.users")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(role, "select count(*) from raw.usage_snapshots")


def test_personal_data_is_finance_only(built):
    for user in ("acme", "eng"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_role(access.db_role_of(user), "select billing_email from marts.dim_tenants")
        assert len(as_role(access.db_role_of(user), "select tenant_id, tenant_name from marts.dim_tenants")) \
            == (len(acme()) if user == "acme" else 50)
    emails = as_role(access.db_role_of("fin"), "select tenant_id, billing_email from marts.dim_tenants"
                                               " where tenant_id = 't002'")
    assert emails == [("t002", "finance+pricing@acme.example")]


def test_readers_cannot_write_create_temporary_tables_or_run_long(built):
    role = access.db_role_of("acme")
    for statement in ("delete from marts.fct_invoice_lines", "insert into access.scopes values ('x', 'all', '')",
                      "create temporary table x (a int)", "create table marts.x (a int)",
                      "update insights.anomalies set sentence = 'x'"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_role(role, statement)
    with warehouse.connect(admin=True) as conn:
        settings = dict(conn.execute("select unnest(setconfig) ~ 'statement_timeout=30s', true from pg_db_role_setting"
                                     " where setrole = 'chargeback_dashboard'::regrole").fetchall())
    assert settings.get(True)


def test_a_dashboard_user_acknowledges_only_in_its_scope_and_in_its_own_name(built):
    role = access.db_role_of("acme")
    ack = ("update insights.anomalies set status = 'acknowledged', ack_kind = 'expected', ack_by = %s,"
           " ack_reason = 'launch', ack_at = now() where tenant_id = %s returning anomaly_id")
    assert len(as_role(role, ack, ("acme", "t002"))) == 1
    assert as_role(role, ack, ("acme", "t007")) == []  # another tenant's: not even found
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the policy's WITH CHECK: in someone else's name
        as_role(role, ack, ("fin", "t004"))
    with warehouse.connect() as conn:
        assert conn.execute("select tenant_id, ack_by from insights.anomalies where status = 'acknowledged'"
                            ).fetchall() == [("t002", "acme")]


def test_a_bi_login_sees_its_scope_through_its_own_connection(built):
    access.grant_bi("metabase_acme", [access.parse_scope("org:Acme Corp")], password="bi-password-1")
    params = conninfo.conninfo_to_dict(warehouse.admin_dsn())
    params.update(user="metabase_acme", password="bi-password-1")
    with psycopg.connect(conninfo.make_conninfo("", **params)) as conn:
        tenants = {r[0] for r in conn.execute("select distinct tenant_id from marts.fct_invoices")}
        assert tenants == invoiced() & acme()
        assert conn.execute("show statement_timeout").fetchone() == ("30s",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create temporary table t (a int)")
    access.revoke_bi("metabase_acme")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no group left, not even usage on the marts
        as_role("metabase_acme", "select count(*) from marts.fct_invoices")


def test_the_dashboards_own_login_reads_nothing_until_it_becomes_a_user(built):
    with psycopg.connect(access.dashboard_dsn()) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select count(*) from marts.fct_invoices")
        conn.rollback()
        viewer = access.authenticate(conn, "t007", PASSWORD)
        assert viewer == access.Viewer("t007", "tenant", access.db_role_of("t007"))
        assert access.authenticate(conn, "t007", "wrong password") is None
        assert access.authenticate(conn, "nobody", PASSWORD) is None
        with access.viewer_session(conn, viewer):
            assert {r[0] for r in conn.execute("select distinct tenant_id from marts.fct_invoices")} \
                == invoiced() & {"t007"}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # its login may become a user, nothing more
            conn.execute("set role chargeback_pipeline")


def test_a_rebuilt_mart_keeps_its_policies(built):
    transform.build(START, END, select="dim_tenants fct_invoices", full_refresh=False)
    assert {r[0] for r in as_role(access.db_role_of("acme"), "select tenant_id from marts.fct_invoices")} \
        == invoiced() & acme()


def test_scopes_and_users_are_checked_when_granted():
    with pytest.raises(access.AccessError, match="org:NAME"):
        access.parse_scope("galaxy:far")
    with pytest.raises(access.AccessError, match="needs --scope"):
        access.add_user("nobody", "tenant", [], PASSWORD)
    with pytest.raises(access.AccessError, match="8 characters"):
        access.hash_password("short")
    stored = access.hash_password(PASSWORD)
    assert access.verify_password(PASSWORD, stored)
    assert not access.verify_password(PASSWORD + "x", stored)


def test_a_scope_naming_nothing_is_refused(built):
    with pytest.raises(access.AccessError, match=r"no tenant in config/tenants\.yml has organisation 'Acme'"):
        access.add_user("typo", "tenant", [access.parse_scope("org:Acme")], PASSWORD)


def test_a_reader_sees_the_budgets_it_covers_and_its_own_scopes_budget(built):
    from chargeback.insights import budget_config

    budget_config.apply(budget_config.read())
    access.add_user("retail", "tenant", [access.parse_scope("bu:Retail")], PASSWORD)
    retail, acme_user = access.db_role_of("retail"), access.db_role_of("acme")
    assert as_role(retail, "select budget_id from access.my_scope_budgets") == [("acme-retail-cost",)]
    assert ("acme-retail-cost",) in as_role(acme_user, "select budget_id from access.my_budgets")
    assert as_role(acme_user, "select budget_id from access.my_scope_budgets") == []  # Acme is more than Retail
    assert ("acme-retail-cost",) not in as_role(access.db_role_of("t007"), "select budget_id from access.my_budgets")


def test_pipeline_health_is_for_readers_of_the_whole_platform_only(built):
    with warehouse.connect() as conn:
        conn.execute("insert into pipeline.events (kind, severity, subject, reason, line)"
                     " values ('notice', 'info', 't002', 'test', 'a line naming t002')")
    access.add_user("acme-fin", "finance", [access.parse_scope("org:Acme Corp")], PASSWORD)
    access.grant_bi("superset_personal", [access.Scope("all")], personal_data=True)
    assert as_role(access.db_role_of("eng"), "select count(*) > 0 from pipeline.events") == [(True,)]
    assert as_role(access.db_role_of("acme-fin"), "select count(*) from pipeline.events") == [(0,)]
    for role in ("superset_personal", access.db_role_of("acme")):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_role(role, "select count(*) from pipeline.events")
    assert as_role("superset_personal", "select count(*) > 0 from marts.dim_tenants where billing_email is not null"
                   ) == [(True,)]


def test_a_filter_cannot_make_the_scope_views_reveal_another_tenant(built):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as caught:  # security_barrier: scope first
        as_role(access.db_role_of("t007"), "select * from access.my_tenants where tenant_id::int = 0")
    assert '"t007"' in str(caught.value)


def test_a_removed_user_and_a_revoked_login_keep_nothing(built):
    access.add_user("leaver", "finance", [], PASSWORD)
    access.grant_bi("metabase_leaver", [access.Scope("all")], password="bi-password-2")
    with psycopg.connect(access.dashboard_dsn()) as conn:
        viewer = access.authenticate(conn, "leaver", PASSWORD)
        conn.rollback()
        access.remove_user("leaver")
        access.revoke_bi("metabase_leaver")
        with pytest.raises(PermissionError, match="no longer a dashboard user"), access.viewer_session(conn, viewer):
            pass
        assert access.authenticate(conn, "leaver", PASSWORD) is None
    with warehouse.connect(admin=True) as conn:
        assert conn.execute("select rolcanlogin from pg_roles where rolname = 'metabase_leaver'").fetchone() == (False,)
        assert conn.execute("select count(*) from pg_auth_members where member = 'metabase_leaver'::regrole"
                            " or member = %s::regrole", (access.db_role_of("leaver"),)).fetchone() == (0,)
        assert not conn.execute("select pg_has_role('chargeback_dashboard', %s, 'MEMBER')",
                                (access.db_role_of("leaver"),)).fetchone()[0]


def test_an_existing_role_that_is_not_a_readers_is_refused(built):
    with warehouse.connect(admin=True) as conn:
        if not conn.execute("select 1 from pg_roles where rolname = 'reads_everything'").fetchone():
            conn.execute("create role reads_everything login")
        conn.execute("grant pg_read_all_data to reads_everything")
    with pytest.raises(access.AccessError, match="not a reader's"):
        access.grant_bi("reads_everything", [access.Scope("all")])
