"""Roles: the pipeline connects as a role that cannot undo what protects issued documents.

Each test connects as the pipeline's role (``warehouse.connect()``, what every stage uses),
tries one way around the immutability of final documents or the gapless numbering, and
asserts the database refuses it: a missing privilege (InsufficientPrivilege) or the
trigger's refusal. A document is issued here the legitimate way — a draft, its lines, then
``pipeline.issue_document`` — under an issuer of its own, in a database of its own.
"""

from __future__ import annotations

import psycopg
import pytest

from chargeback.platform import warehouse
from conftest import database_of_its_own

pytestmark = pytest.mark.warehouse

ISSUER = "roles"
NUMBER = "RL-2040-000001"
Refused = psycopg.errors.InsufficientPrivilege


@pytest.fixture(scope="module", autouse=True)
def own_database():
    with database_of_its_own("roles") as name:
        with warehouse.connect(admin=True) as conn:  # the owner registers the test's issuer
            conn.execute("insert into pipeline.issuers (issuer, number_prefix) values (%s, 'RL')", (ISSUER,))
        yield name


def draft(conn: psycopg.Connection, tenant_id: str, document_type: str = "invoice",
          corrects: str | None = None) -> int:
    """A draft of 2040-01 with one line, as the pipeline records it."""
    (document_id,) = conn.execute(
        "insert into pipeline.invoices (document_type, issuer, tenant_id, period_start, period_end, close_period,"
        " corrects, issue_date, currency, total, pdf_uri, pdf_sha256)"
        " values (%s, %s, %s, '2040-01-01', '2040-01-31', '2040-01-01', %s, '2040-02-04', 'USD', 10.00,"
        " '/nowhere/x.pdf', 'sha') returning document_id", (document_type, ISSUER, tenant_id, corrects)).fetchone()
    conn.execute(
        "insert into pipeline.invoice_lines (document_id, line_no, line_type, description, quantity,"
        " pricing_quantity, list_amount, discount_amount, amount, currency)"
        " values (%s, 1, 'usage', 'ingested', 1, 1, 10.00, 0, 10.00, 'USD')", (document_id,))
    return document_id


@pytest.fixture(scope="module")
def final(own_database) -> int:
    """A final invoice issued the legitimate way; its document_id."""
    with warehouse.connect() as conn:
        assert conn.execute("select pipeline.lock_issuer(%s)", (ISSUER,)).fetchone() == (0,)
        document_id = draft(conn, "t-final")
        conn.execute("select pipeline.issue_document(%s, %s, now())", (document_id, NUMBER))
    with warehouse.connect() as conn:
        assert conn.execute("select invoice_number, status from pipeline.invoices where document_id = %s",
                            (document_id,)).fetchone() == (NUMBER, "final")
        assert conn.execute("select last_number from pipeline.invoice_counters where issuer = %s",
                            (ISSUER,)).fetchone() == (1,)
    return document_id


def not_owner(table: str) -> set[str]:
    """PostgreSQL's refusal of DDL by a role that does not own ``table`` (15 and 16+ word it differently)."""
    return {f"must be owner of table {table}", f"must be owner of relation {table}"}


def refused(statement: str, params=None, error=Refused) -> str:
    """Run ``statement`` as the pipeline role; the database's refusal (its primary message)."""
    with warehouse.connect() as conn, pytest.raises(error) as caught:
        conn.execute(statement, params)
    return caught.value.diag.message_primary


def test_the_pipeline_is_a_login_role_of_its_own_that_owns_nothing_it_protects():
    with warehouse.connect() as conn:
        conn.execute("reset role")
        user, session_user, superuser, owner = conn.execute(
            "select current_user, session_user, r.rolsuper, pg_get_userbyid(c.relowner)"
            " from pg_roles r, pg_class c where r.rolname = current_user and c.oid = 'pipeline.invoices'::regclass"
        ).fetchone()
    assert (user, session_user, superuser) == ("chargeback_pipeline", "chargeback_pipeline", False)
    assert owner != user
    assert warehouse.dbt_env()["CHARGEBACK_PG_USER"] == "chargeback_pipeline"
    assert warehouse.sqlalchemy_url().startswith("postgresql+psycopg2://chargeback_pipeline@")


@pytest.mark.parametrize(("table", "trigger"), [
    ("pipeline.invoices", "invoices_final_is_immutable"),
    ("pipeline.invoices", "invoices_final_no_truncate"),
    ("pipeline.invoice_lines", "invoice_lines_final_are_immutable"),
    ("pipeline.invoice_lines", "invoice_lines_final_no_truncate"),
])
def test_pipeline_cannot_disable_or_drop_a_trigger(final, table, trigger):
    name = table.split(".")[1]
    assert refused(f"alter table {table} disable trigger {trigger}") in not_owner(name)
    assert refused(f"alter table {table} disable trigger all") in not_owner(name)
    assert refused(f"drop trigger {trigger} on {table}") in not_owner(name)


@pytest.mark.parametrize(("table", "column", "type_"), [
    ("pipeline.invoices", "total", "numeric(18, 4)"),
    ("pipeline.invoices", "status", "varchar(10)"),
    ("pipeline.invoice_lines", "amount", "text"),
])
def test_pipeline_cannot_alter_a_column_type(final, table, column, type_):
    assert refused(f"alter table {table} alter column {column} type {type_}") in not_owner(table.split(".")[1])


@pytest.mark.parametrize("function", ["refuse_change_of_final_invoice", "refuse_change_of_final_invoice_lines"])
def test_pipeline_cannot_replace_the_trigger_function(final, function):
    message = refused(f"create or replace function pipeline.{function}() returns trigger"
                      " language plpgsql as $$ begin return new; end $$")
    assert message == "permission denied for schema pipeline"
    assert refused(f"alter function pipeline.{function}() set search_path = public") == \
        f"must be owner of function pipeline.{function}"


def test_pipeline_cannot_create_a_trigger_or_function_where_the_protected_tables_are(final):
    assert refused("create function pipeline.noop() returns int language sql as 'select 1'") == \
        "permission denied for schema pipeline"
    assert refused("create trigger sneak before update on pipeline.invoices for each row"
                   " execute function pipeline.refuse_change_of_final_invoice()") == \
        "permission denied for table invoices"


@pytest.mark.parametrize(("document_type", "corrects"), [("credit_note", NUMBER), ("debit_note", NUMBER),
                                                     ("invoice", None)])
def test_pipeline_cannot_insert_a_final_document(final, document_type, corrects):
    message = refused(
        "insert into pipeline.invoices (document_type, invoice_number, issuer, tenant_id, period_start, period_end,"
        " close_period, corrects, issue_date, currency, total, pdf_uri, pdf_sha256, status, finalized_at,"
        " usage_as_of) values (%s, 'RL-2040-000777', %s, 't-forged', '2040-01-01', '2040-01-31', '2040-02-01', %s,"
        " '2040-02-04', 'USD', -10.00, '/nowhere/f.pdf', 'sha', 'final', now(), now())",
        (document_type, ISSUER, corrects))
    assert message == "permission denied for table invoices"


def test_pipeline_cannot_make_a_draft_final_but_through_the_owners_function(final):
    with warehouse.connect() as conn:
        document_id = draft(conn, "t-draft", "credit_note", NUMBER)
    assert refused("update pipeline.invoices set status = 'final', invoice_number = 'RL-2040-000777',"
                   " finalized_at = now(), usage_as_of = now() where document_id = %s",
                   (document_id,)) == "permission denied for table invoices"
    for number in ("RL-2040-000001", "RL-2040-000003", "RL-2040-000777", "no number"):  # only the next: 2
        message = refused("select pipeline.issue_document(%s, %s, now())", (document_id, number),
                          psycopg.errors.RaiseException)
        assert message == (f"chargeback refusal: number {number} for document {document_id} refused:"
                           f" the next number of issuer {ISSUER} is RL-2040-000002")
    assert refused("select pipeline.issue_document(%s, 'RL-2040-000002', now())", (final,),
                   psycopg.errors.RaiseException) == \
        f"chargeback refusal: issuing document {final} refused: it is issued already as {NUMBER}"
    with warehouse.connect() as conn:
        assert conn.execute("select last_number from pipeline.invoice_counters where issuer = %s",
                            (ISSUER,)).fetchone() == (1,)


@pytest.mark.parametrize("statement", [
    "update pipeline.invoice_counters set last_number = 0",
    "delete from pipeline.invoice_counters",
    "truncate pipeline.invoice_counters",
    "insert into pipeline.invoice_counters (issuer, last_number) values ('other', 41)",
    "select last_number from pipeline.invoice_counters for update",
])
def test_pipeline_cannot_reset_or_forge_the_counter(final, statement):
    assert refused(statement) == "permission denied for table invoice_counters"


@pytest.mark.parametrize(("statement", "error", "message"), [
    ("update pipeline.invoices set total = 0 where document_id = %(id)s", psycopg.errors.RaiseException,
     f"chargeback refusal: UPDATE of final invoice {NUMBER} (tenant t-final, 2040-01) refused: issued documents are"
     " immutable — correct it with a credit or debit note (chargeback close)"),
    ("update pipeline.invoices set status = 'draft', invoice_number = null where document_id = %(id)s", Refused,
     "permission denied for table invoices"),
    ("delete from pipeline.invoices where document_id = %(id)s", psycopg.errors.RaiseException,
     f"chargeback refusal: DELETE of final invoice {NUMBER} (tenant t-final, 2040-01) refused: issued documents are"
     " immutable — correct it with a credit or debit note (chargeback close)"),
    ("truncate pipeline.invoices cascade", Refused, "permission denied for table invoices"),
    ("update pipeline.invoice_lines set amount = 0 where document_id = %(id)s", Refused,
     "permission denied for table invoice_lines"),
    ("delete from pipeline.invoice_lines where document_id = %(id)s", Refused,
     "permission denied for table invoice_lines"),
    ("truncate pipeline.invoice_lines", Refused, "permission denied for table invoice_lines"),
    ("insert into pipeline.invoice_lines (document_id, line_no, line_type, description, quantity, pricing_quantity,"
     " list_amount, discount_amount, amount, currency) values (%(id)s, 2, 'usage', 'extra', 1, 1, 1, 0, 1, 'USD')",
     psycopg.errors.RaiseException,
     f"chargeback refusal: INSERT of a line of final document {NUMBER} refused: issued documents are immutable —"
     " correct it with a credit or debit note (chargeback close)"),
])
def test_pipeline_cannot_change_a_final_invoice_or_its_lines(final, statement, error, message):
    assert refused(statement, {"id": final}, error) == message
    with warehouse.connect() as conn:
        assert conn.execute("select total, status, invoice_number from pipeline.invoices where document_id = %s",
                            (final,)).fetchone() == (10, "final", NUMBER)
        assert conn.execute("select count(*), sum(amount) from pipeline.invoice_lines where document_id = %s",
                            (final,)).fetchone() == (1, 10)


CREATED_AGAIN = ("chargeback: trigger invoices_final_is_immutable on pipeline.invoices was disabled or changed:"
                 " created again")


@pytest.mark.parametrize(("sabotage", "warnings"), [
    ("alter table pipeline.invoices disable trigger invoices_final_is_immutable", [CREATED_AGAIN]),
    ("alter table pipeline.invoices enable replica trigger invoices_final_is_immutable", [CREATED_AGAIN]),
    ("drop trigger invoices_final_is_immutable on pipeline.invoices; create trigger invoices_final_is_immutable"
     " before delete on pipeline.invoices for each row execute function pipeline.refuse_change_of_final_invoice()",
     [CREATED_AGAIN]),
    ("drop trigger invoices_final_is_immutable on pipeline.invoices", []),
])
def test_ensure_schema_restores_a_trigger_the_owner_disabled_or_dropped(final, sabotage, warnings, caplog):
    with warehouse.connect(admin=True) as conn:
        conn.execute(sabotage)
        assert conn.execute("select count(*) from pipeline.invoices where document_id = %s", (final,)).fetchone()
    warehouse.ensure_schema()
    assert caplog.messages == warnings
    with warehouse.connect() as conn:
        assert conn.execute("select tgenabled from pg_trigger where tgrelid = 'pipeline.invoices'::regclass"
                            " and tgname = 'invoices_final_is_immutable'").fetchone() == ("O",)
    assert refused("update pipeline.invoices set total = 0 where document_id = %s", (final,),
                   psycopg.errors.RaiseException).startswith(f"chargeback refusal: UPDATE of final invoice {NUMBER}")


def test_ensure_schema_leaves_enabled_triggers_alone(final, caplog):
    with warehouse.connect(admin=True) as conn:
        before = conn.execute("select tgname, oid from pg_trigger where not tgisinternal order by 1").fetchall()
    warehouse.ensure_schema()
    with warehouse.connect(admin=True) as conn:
        assert conn.execute("select tgname, oid from pg_trigger where not tgisinternal order by 1").fetchall() \
            == before
    assert len(before) == 4
    assert caplog.messages == []


def test_a_reader_without_a_scope_reads_no_invoices_and_issues_nothing(final):
    with warehouse.connect(admin=True) as conn:
        conn.execute("set role chargeback_bi")
        assert conn.execute("select count(*) from pipeline.invoices").fetchone() == (0,)
        with pytest.raises(Refused) as caught:
            conn.execute("select pipeline.issue_document(1, 'x', now())")
    assert caught.value.diag.message_primary == "permission denied for function issue_document"


def test_a_function_the_pipeline_creates_cannot_run_as_the_owner_in_ensure_schema():
    """The owner's default search path starts with "$user": a schema the pipeline names like
    the owner, holding its own format(text, text), must not be what the DDL calls."""
    with warehouse.connect(admin=True) as conn:
        owner = conn.execute("select current_user").fetchone()[0]
    with warehouse.connect() as conn:
        conn.execute(f'create schema if not exists "{owner}"')
        conn.execute(f"""
            create or replace function "{owner}".format(fmt text, arg text) returns text
            language plpgsql as $$
            begin
                execute 'create table if not exists "{owner}".pwned (at timestamptz)';
                return pg_catalog.format(fmt, arg);
            end $$""")
    try:
        warehouse.ensure_schema()
        with warehouse.connect() as conn:
            pwned = conn.execute("select to_regclass(%s)", (f'"{owner}".pwned',)).fetchone()[0]
        assert pwned is None
    finally:
        with warehouse.connect() as conn:
            conn.execute(f'drop schema "{owner}" cascade')


def test_pipeline_cannot_open_a_numbering_series_of_its_own(final):
    assert refused("select pipeline.lock_issuer('mine')", error=psycopg.errors.RaiseException) == (
        "chargeback refusal: issuer mine is not registered in pipeline.issuers (the owner registers issuers)")
    assert refused("insert into pipeline.issuers (issuer, number_prefix) values ('mine', 'XX')") == \
        "permission denied for table issuers"


def test_a_process_with_only_the_pipelines_credentials_verifies_and_refuses_undone_protection(monkeypatch):
    """Where only CHARGEBACK_PIPELINE_DSN is set (a worker without the owner's credentials),
    ensure_schema verifies instead of changing anything, and refuses in one line."""
    warehouse.ensure_schema()
    pipeline_dsn = warehouse.dsn()
    action = "run `chargeback warehouse migrate` as the owner (WAREHOUSE_DSN); the pipeline role cannot"

    def as_pipeline_only() -> str | None:
        with monkeypatch.context() as patch:
            patch.setenv("CHARGEBACK_PIPELINE_DSN", pipeline_dsn)
            with pytest.raises(warehouse.WarehouseError, match="schema changes run as the owner"):
                warehouse.admin_dsn()
            try:
                warehouse.ensure_schema()
            except warehouse.WarehouseError as exc:
                return str(exc)
        return None

    try:
        assert as_pipeline_only() is None  # this release, every trigger sound
        with warehouse.connect(admin=True) as conn:
            conn.execute("alter table pipeline.invoices disable trigger invoices_final_is_immutable")
        assert as_pipeline_only() == ("protective trigger(s) disabled, changed or missing:"
                                      f" invoices_final_is_immutable on pipeline.invoices — {action} restore them")
        warehouse.ensure_schema()  # the owner restores it
        with warehouse.connect(admin=True) as conn:
            conn.execute("update pipeline.schema_version set sha256 = 'an older release'")
        assert as_pipeline_only() == f"the warehouse schema is not this release's — {action} change it"
    finally:
        warehouse.ensure_schema()
    assert as_pipeline_only() is None
