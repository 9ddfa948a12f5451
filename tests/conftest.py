"""Two tiers. Unmarked tests are pure logic: no PostgreSQL is started or reachable for
them (``make test-unit`` runs only these, in seconds). Tests marked ``warehouse`` (SQL
against a real PostgreSQL) or ``airflow`` (real DAG runs) get the session's warehouse:
the embedded server by default, or the server ``WAREHOUSE_DSN`` names.

The session gets a database of its own (``CHARGEBACK_TEST_DATABASE``, default
``chargeback_test``; with pytest-xdist one per worker, ``<name>_gw0`` ...), dropped and
created anew, so a run never sees a previous run's rows, and dbt artifacts of its own.
The environment is changed through pytest's ``MonkeyPatch`` (undone at the end), not
passed around, so subprocesses (dbt, Airflow) see the same warehouse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
WAREHOUSE_MARKERS = ("warehouse", "airflow")


def _worker() -> str:
    """The pytest-xdist worker this process is (``gw0`` ...), or '' without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(scope="session")
def session_env() -> Iterator[pytest.MonkeyPatch]:
    """Environment changes for the whole session, undone when it ends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DO_NOT_TRACK", "1")  # dbt's and Airflow's usage tracking
        yield patch


@pytest.fixture(scope="session", autouse=True)
def _a_development_installation(session_env) -> None:
    """The suite is a development installation: the simulator may write synthetic usage.
    (Under the default ``CHARGEBACK_ENV=production`` it is refused: tests/test_operational_safety.py.)"""
    session_env.setenv("CHARGEBACK_ENV", "dev")


@pytest.fixture(scope="session")
def dbt_manifest(session_env, tmp_path_factory) -> Path:
    """The dbt project parsed for this session (its manifest; a partial parse for the builds).

    Each xdist worker has dbt artifacts of its own (``CHARGEBACK_DBT_ARTIFACTS``): two
    dbt processes must not share a target directory.
    """
    from chargeback.engine import transform

    if _worker():
        session_env.setenv("CHARGEBACK_DBT_ARTIFACTS", str(tmp_path_factory.mktemp("dbt")))
    return transform.parse()


@pytest.fixture(scope="session")
def test_warehouse(session_env, dbt_manifest, tmp_path_factory) -> str:
    """A clean warehouse database with the shipped configuration applied."""
    from chargeback.engine import configuration
    from chargeback.platform import warehouse

    name = os.environ.get("CHARGEBACK_TEST_DATABASE", "chargeback_test")
    if _worker():
        name = f"{name}_{_worker()}"
    scratch = tmp_path_factory.mktemp("chargeback")
    session_env.setenv("CHARGEBACK_DATABASE", name)
    session_env.setenv("CHARGEBACK_LANDING", str(scratch / "landing"))
    session_env.setenv("CHARGEBACK_REPORTS_OUT", str(scratch / "reports-out"))
    session_env.setenv("CHARGEBACK_GX_DIR", str(scratch / "gx"))
    warehouse.drop_database(name)
    warehouse.ensure_schema()
    configuration.load()
    return warehouse.dsn()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A marked test asks for the warehouse before any of its fixtures, so that module
    fixtures building data run against the session's database, never a default one.

    Modules holding real Airflow runs (the longest, a minute or two each) are collected first,
    so pytest-xdist (``--dist loadfile`` hands out modules in this order) starts them early
    instead of leaving one worker alone with one of them at the end of the run."""
    for item in items:
        if _needs_warehouse(item) and "test_warehouse" not in item.fixturenames:
            item.fixturenames.insert(0, "test_warehouse")
    with_airflow = {item.path for item in items if item.get_closest_marker("airflow")}
    items.sort(key=lambda item: item.path not in with_airflow)  # stable: file order otherwise


def _needs_warehouse(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in WAREHOUSE_MARKERS)


@pytest.fixture(autouse=True)
def _no_warehouse_for_unit_tests(request, monkeypatch):
    """An unmarked test is pure logic: reaching for a warehouse fails at once, naming the
    marker it lacks."""
    if _needs_warehouse(request.node):
        return
    from chargeback.platform import warehouse

    def refuse(*_args, **_kwargs):
        raise RuntimeError(f"{request.node.nodeid} reached for the warehouse: mark it @pytest.mark.warehouse")

    monkeypatch.setattr(warehouse, "server_dsn", refuse)
    monkeypatch.setattr(warehouse, "dsn", refuse)


@contextlib.contextmanager
def database_of_its_own(suffix: str) -> Iterator[str]:
    """Switch to a fresh database ``<session database>_<suffix>`` with the shipped
    configuration applied, for a module whose tests must not see other modules' rows."""
    from chargeback.engine import configuration
    from chargeback.platform import warehouse

    name = f"{os.environ['CHARGEBACK_DATABASE']}_{suffix}"
    warehouse.drop_database(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEBACK_DATABASE", name)
        warehouse.ensure_schema()
        configuration.load()
        yield name


@pytest.fixture
def settings():
    from chargeback.platform.settings import get_settings

    return get_settings()


@pytest.fixture
def empty_raw() -> None:
    """No published, staged or quarantined usage and no load accounting: the test starts from nothing."""
    from chargeback.platform import warehouse

    with warehouse.connect() as conn:
        conn.execute("truncate raw.usage_snapshots, raw.usage_staging, raw.usage_quarantine, pipeline.load_files")


@pytest.fixture
def landing(settings) -> Path:
    """An empty landing directory for the test."""
    path = Path(settings.landing)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- real servers for alerts

class _Mailbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.original_content, policy=policy.default)))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[_Mailbox, int]]:
    box = _Mailbox()
    with socket.socket() as s:  # a free port (aiosmtpd probes the port it is given)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def alert_environ(smtp: tuple[_Mailbox, int] | None = None, webhook: ThreadingHTTPServer | None = None,
             **extra: str) -> dict[str, str]:
    env = {"CHARGEBACK_SMTP_TLS": "none", "CHARGEBACK_SMTP_FROM": "chargeback@example.com", **extra}
    if smtp:
        env.update(CHARGEBACK_SMTP_HOST="127.0.0.1", CHARGEBACK_SMTP_PORT=str(smtp[1]),
                   CHARGEBACK_SMTP_TO="finops@example.com")
    if webhook:
        env["CHARGEBACK_ALERT_WEBHOOK"] = f"http://127.0.0.1:{webhook.server_address[1]}/default"
    return env
