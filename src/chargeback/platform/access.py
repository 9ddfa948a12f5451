"""Readers of the warehouse: dashboard users and BI logins, scoped by the database.

Who may see what is decided by PostgreSQL, never by a page or a command (docs/ACCESS.md):
every reader is a role in ``chargeback_bi``; ``access.scopes`` names the tenants each role
may see; the marts, the intermediate tables under their views, the insights and the invoices
carry FORCE ROW LEVEL SECURITY with a policy reading it (``access.secure_relation`` in
schema.sql). This module writes users and scopes, as the owner, and opens the dashboard's
sessions as the signed-in user's role.

- A **dashboard user** (:func:`add_user`) is a row of ``access.users`` with an scrypt hash of
  its password and a NOLOGIN role ``chargeback_user_<name>``. The dashboard connects as
  ``chargeback_dashboard`` (LOGIN, NOINHERIT: it can read nothing itself) and runs every
  query of a viewer after ``SET LOCAL ROLE`` to that viewer's role (:func:`viewer_session`).
- A **BI login** (:func:`grant_bi`) is a LOGIN role of its own for Metabase, Superset or psql,
  with the same scopes and timeouts; nothing else changes for it.

Roles are the cluster's (as the pipeline role): a name added in two databases of one server is
one role, each database keeping its own scopes for it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo, sql

from chargeback.platform import warehouse
from chargeback.platform.settings import Settings

ROLES = ("finance", "engineer", "tenant")
"""What a dashboard user is: finance (all money, personal data, invoices), engineer (pipeline
health and usage, no personal data), tenant (its scope only)."""

SCOPE_KINDS = {"all": "all", "org": "organisation", "organisation": "organisation",
               "bu": "business_unit", "business_unit": "business_unit", "team": "team", "tenant": "tenant"}

DASHBOARD_ROLE = "chargeback_dashboard"
READERS = "chargeback_bi"
_GROUPS = {"finance": ("chargeback_finance", "chargeback_personal"), "engineer": ("chargeback_engineer",),
           "tenant": ()}
_READER_GROUPS = ("chargeback_finance", "chargeback_engineer", "chargeback_reviewer", "chargeback_personal", READERS)
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,39}$")
_LOGIN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# scrypt: 2^15 x 8 x 1 takes ~60 ms and 32 MiB here, per sign-in
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
READER_TIMEOUTS = {"statement_timeout": "30s", "idle_in_transaction_session_timeout": "60s"}


class AccessError(ValueError):
    """A user, login or scope that cannot be granted as asked."""


@dataclass(frozen=True)
class Scope:
    kind: str  # all | organisation | business_unit | team | tenant
    value: str = ""

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Viewer:
    """A signed-in dashboard user: its name, kind and the database role its queries run as."""

    name: str
    role: str
    db_role: str


def parse_scope(text: str) -> Scope:
    """``all``, ``org:Acme``, ``bu:Retail``, ``team:Search`` or ``tenant:t014``."""
    kind, _, value = text.strip().partition(":")
    if kind.lower() not in SCOPE_KINDS:
        raise AccessError(f"scope {text!r}: expected all, org:NAME, bu:NAME, team:NAME or tenant:ID")
    kind = SCOPE_KINDS[kind.lower()]
    if (kind == "all") != (value == ""):
        raise AccessError(f"scope {text!r}: {'all takes no value' if kind == 'all' else 'a name is missing'}")
    return Scope(kind, value)


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), a fresh salt each time."""
    if len(password) < 8:
        raise AccessError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=2**26, dklen=32, **_SCRYPT)
    encode = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                              maxmem=2**26, dklen=32)
    return hmac.compare_digest(computed, base64.b64decode(digest))


def db_role_of(user_name: str) -> str:
    return f"chargeback_user_{user_name}"


def _check_scopes(conn: psycopg.Connection, scopes: Sequence[Scope]) -> None:
    """Every scope names something the configuration has (a typo would grant nothing, silently)."""
    column = {"organisation": "organisation", "business_unit": "business_unit", "team": "team",
              "tenant": "tenant_id"}
    for scope in scopes:
        if scope.kind == "all":
            continue
        found = conn.execute(sql.SQL("select exists (select 1 from config.tenants where {} = %s)")
                             .format(sql.Identifier(column[scope.kind])), (scope.value,)).fetchone()
        if not found or not found[0]:
            raise AccessError(f"scope {scope}: no tenant in config/tenants.yml has {column[scope.kind]}"
                              f" {scope.value!r}")


class _Roles:
    """Changes to roles — the cluster's, not one database's — each in its own statement: another
    database's ``ensure_schema`` or ``users add`` may change the same role at the same moment, so
    only what differs is changed, and a statement that meets a concurrent change is tried again."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn  # autocommit, as the owner

    def run(self, statement: sql.Composable) -> None:
        for attempt in range(6):
            try:
                self.conn.execute(statement)
                return
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                return  # made meanwhile by the other session: what we wanted
            except psycopg.errors.InternalError_ as exc:  # "tuple concurrently updated"
                if "concurrently" not in str(exc) or attempt == 5:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def value(self, query: str, params: tuple = ()) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def ensure(self, role: str, *, login: bool, password: str | None = None) -> None:
        if self.value("select 1 from pg_roles where rolname = %s", (role,)) is None:
            self.run(sql.SQL("create role {} {} nosuperuser nocreatedb nocreaterole noreplication")
                     .format(sql.Identifier(role), sql.SQL("login" if login else "nologin")))
        # an existing role becomes a reader only if it holds nothing else: not the owner, not the
        # pipeline, no attribute or role outside Chargeback's reader groups (pg_read_all_data…)
        elif self.value(
                "select rolsuper or rolcreaterole or rolbypassrls or rolreplication or rolname = current_user"
                " or exists (select 1 from pg_auth_members as m join pg_roles as g on g.oid = m.roleid"
                "            where m.member = r.oid and g.rolname not like 'chargeback\\_%%')"
                " or pg_has_role(rolname, %s, 'MEMBER')"
                " from pg_roles as r where rolname = %s", (warehouse.pipeline_role()[0], role)):
            raise AccessError(f"role {role} exists and is not a reader's: it is a superuser, may create roles or"
                              " bypass row security, or is (a member of) the owner, the pipeline or another role;"
                              " choose another name")
        if self.value("select rolcanlogin from pg_roles where rolname = %s", (role,)) != login:
            self.run(sql.SQL("alter role {} {}").format(sql.Identifier(role), sql.SQL("login" if login else "nologin")))
        if password:
            self.run(sql.SQL("alter role {} password {}").format(sql.Identifier(role), sql.Literal(password)))

    def member(self, role: str, group: str, wanted: bool = True) -> None:
        if bool(self.value("select 1 from pg_auth_members where roleid = %s::regrole and member = %s::regrole",
                           (group, role))) != wanted:
            self.run(sql.SQL("grant {} to {}" if wanted else "revoke {} from {}").format(
                sql.Identifier(group), sql.Identifier(role)))

    def groups(self, role: str, groups: Sequence[str]) -> None:
        """``role`` in exactly ``groups`` among the reader groups (a changed kind loses the old one)."""
        for group in _READER_GROUPS:
            self.member(role, group, group in groups)

    def settings(self, role: str, settings: Mapping[str, str]) -> None:
        have = self.value("select setconfig from pg_db_role_setting where setrole = %s::regrole and setdatabase = 0",
                          (role,)) or []
        for name, value in settings.items():
            if f"{name}={value}" not in have:
                self.run(sql.SQL("alter role {} set {} = {}").format(
                    sql.Identifier(role), sql.Identifier(name), sql.Literal(value)))


@contextlib.contextmanager
def _roles(settings: Settings | None) -> Iterator[_Roles]:
    with psycopg.connect(warehouse.admin_dsn(settings), autocommit=True) as conn:
        yield _Roles(conn)


def _set_scopes(conn: psycopg.Connection, role: str, scopes: Sequence[Scope]) -> None:
    conn.execute("delete from access.scopes where role_name = %s", (role,))
    for scope in scopes:
        conn.execute("insert into access.scopes (role_name, kind, value) values (%s, %s, %s)",
                     (role, scope.kind, scope.value))


def add_user(name: str, role: str, scopes: Sequence[Scope], password: str,
             settings: Settings | None = None) -> Viewer:
    """Create or update a dashboard user. Finance and engineers see every tenant unless scoped;
    a tenant user needs a scope. Returns the user."""
    if not _NAME.match(name):
        raise AccessError(f"user name {name!r}: lower-case letters, digits, '_', '.', '-'; 40 at most,"
                          " starting with a letter")
    if role not in ROLES:
        raise AccessError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    scopes = list(scopes) or ([Scope("all")] if role != "tenant" else [])
    if not scopes:
        raise AccessError("a tenant user needs --scope (org:NAME, bu:NAME, team:NAME or tenant:ID)")
    if role == "tenant" and any(s.kind == "all" for s in scopes):
        raise AccessError("a tenant user cannot have scope all")
    password_hash = hash_password(password)
    db_role = db_role_of(name)
    warehouse.ensure_schema(settings)
    with warehouse.connect(settings, admin=True) as conn:
        _check_scopes(conn, scopes)
    with _roles(settings) as roles:
        roles.ensure(db_role, login=False)
        roles.groups(db_role, (READERS, "chargeback_reviewer", *_GROUPS[role]))
        roles.member(DASHBOARD_ROLE, db_role)
        if dashboard_password := os.environ.get("CHARGEBACK_DASHBOARD_PASSWORD"):
            roles.run(sql.SQL("alter role {} password {}").format(
                sql.Identifier(DASHBOARD_ROLE), sql.Literal(dashboard_password)))
    with warehouse.connect(settings, admin=True) as conn:
        conn.execute(
            "insert into access.users (user_name, role, db_role, password_hash) values (%s, %s, %s, %s)"
            " on conflict (user_name) do update set role = excluded.role, password_hash = excluded.password_hash,"
            " disabled = false", (name, role, db_role, password_hash))
        _set_scopes(conn, db_role, scopes)
    return Viewer(name, role, db_role)


def remove_user(name: str, settings: Settings | None = None) -> bool:
    """Disable a user: its scopes and its groups are taken, and the dashboard may no longer become
    it (a session signed in as it finds no user at its next query)."""
    with warehouse.connect(settings, admin=True) as conn:
        row = conn.execute("update access.users set disabled = true where user_name = %s returning db_role",
                           (name,)).fetchone()
        if row:
            conn.execute("delete from access.scopes where role_name = %s", (row[0],))
    if row:
        with _roles(settings) as roles:
            roles.groups(row[0], ())
            roles.member(DASHBOARD_ROLE, row[0], wanted=False)
    return row is not None


def list_users(settings: Settings | None = None) -> list[tuple[str, str, str, bool]]:
    """(name, role, scopes, disabled) of every dashboard user."""
    with warehouse.connect(settings, admin=True) as conn:
        return conn.execute(
            "select u.user_name, u.role, coalesce(string_agg(case s.kind when 'all' then 'all'"
            " else s.kind || ':' || s.value end, ', ' order by s.kind, s.value), '-'), u.disabled"
            " from access.users as u left join access.scopes as s on s.role_name = u.db_role"
            " group by u.user_name, u.role, u.disabled order by u.user_name").fetchall()


def grant_bi(login: str, scopes: Sequence[Scope], password: str | None = None, *, personal_data: bool = False,
             settings: Settings | None = None) -> None:
    """A LOGIN role for a BI tool or psql that sees only ``scopes``; read-only, no TEMP, with
    statement and idle-in-transaction timeouts. ``personal_data``: it may read billing e-mails."""
    if not _LOGIN.match(login) or login.startswith(("chargeback_", "pg_")):
        raise AccessError(f"login {login!r}: lower-case letters, digits and '_', not starting with"
                          " chargeback_ or pg_")
    if not scopes:
        raise AccessError("a BI login needs --scope (all, org:NAME, bu:NAME, team:NAME or tenant:ID)")
    warehouse.ensure_schema(settings)
    with warehouse.connect(settings, admin=True) as conn:
        _check_scopes(conn, scopes)
        if conn.execute("select 1 from access.users where db_role = %s", (login,)).fetchone():
            raise AccessError(f"{login} is a dashboard user's role")
    with _roles(settings) as roles:
        roles.ensure(login, login=True, password=password)
        roles.groups(login, (READERS, *(("chargeback_personal",) if personal_data else ())))
        roles.settings(login, READER_TIMEOUTS)
    with warehouse.connect(settings, admin=True) as conn:
        _set_scopes(conn, login, scopes)


def revoke_bi(login: str, settings: Settings | None = None) -> bool:
    """Take a BI login's scopes in this database, its groups, and its LOGIN (roles are the cluster's:
    grant it again to use it in another database)."""
    with warehouse.connect(settings, admin=True) as conn:
        found = conn.execute("delete from access.scopes where role_name = %s", (login,)).rowcount > 0
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (login,)).fetchone()
    if exists:
        with _roles(settings) as roles:
            roles.groups(login, ())
            roles.ensure(login, login=False)
    return found


def dashboard_dsn(settings: Settings | None = None) -> str:
    """DSN of the warehouse as ``chargeback_dashboard``: ``CHARGEBACK_DASHBOARD_DSN`` where set (a
    deployment: the dashboard then holds no other credentials), else the owner's server and database
    with the dashboard's user (the embedded default; ``CHARGEBACK_DASHBOARD_PASSWORD`` where the
    server asks for one, set on the role by :func:`add_user`)."""
    if given := os.environ.get("CHARGEBACK_DASHBOARD_DSN"):
        return given
    params = {k: v for k, v in conninfo.conninfo_to_dict(warehouse.admin_dsn(settings)).items()
              if k not in ("user", "password")}
    params.update(user=DASHBOARD_ROLE, application_name="chargeback-dashboard")
    if password := os.environ.get("CHARGEBACK_DASHBOARD_PASSWORD"):
        params["password"] = password
    return conninfo.make_conninfo("", **params)


@functools.cache
def _decoy() -> str:
    """A hash to check a password against when the user name is unknown: the same work either way."""
    return hash_password(secrets.token_urlsafe(16))


def authenticate(conn: psycopg.Connection, name: str, password: str) -> Viewer | None:
    """The user ``name`` if ``password`` is its password and it is enabled; else None. Runs as the
    dashboard's login (which may read names and hashes, and nothing else)."""
    row = conn.execute("select role, db_role, password_hash from access.users where user_name = %s"
                       " and not disabled", (name,)).fetchone()
    if row is None:
        verify_password(password, _decoy())  # one scrypt, as for a known name
        return None
    role, db_role, stored = row
    return Viewer(name, role, db_role) if verify_password(password, stored) else None


@contextlib.contextmanager
def viewer_session(conn: psycopg.Connection, viewer: Viewer) -> Iterator[psycopg.Connection]:
    """A transaction on ``conn`` (the dashboard's login) as ``viewer``'s role: every row it reads
    passes that role's policies; the role ends with the transaction."""
    with conn.transaction():
        try:
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(viewer.db_role)))
        except psycopg.errors.InsufficientPrivilege as exc:  # removed: the dashboard may not become it
            raise PermissionError(f"{viewer.name} is no longer a dashboard user") from exc
        if conn.execute("select user_name from access.me").fetchone() != (viewer.name,):
            raise PermissionError(f"{viewer.name} is no longer a dashboard user")
        yield conn
