"""Every test runs against a real PostgreSQL: the embedded server by default, or the
server ``WAREHOUSE_DSN`` names. The session gets a database of its own
(``CHARGEBACK_TEST_DATABASE``, default ``chargeback_test``), dropped and created
anew, so a run never sees a previous run's rows. Environment variables are set
here, not passed around, so subprocesses (dbt, Airflow) see the same warehouse.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The DAG integrity tests parse dags/ in this process: cosmos must read these before it
# is first imported (see chargeback.orchestration.runner.cosmos_env).
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_DAG_VERSIONING", "False")


@pytest.fixture(scope="session", autouse=True)
def test_warehouse(tmp_path_factory: pytest.TempPathFactory):
    """A clean warehouse database with the shipped configuration applied, and the dbt
    manifest usage_hourly's dbt tasks are rendered from."""
    from chargeback.engine import configuration, transform
    from chargeback.platform import warehouse

    transform.parse()

    name = os.environ.get("CHARGEBACK_TEST_DATABASE", "chargeback_test")
    scratch = tmp_path_factory.mktemp("chargeback")
    os.environ["CHARGEBACK_DATABASE"] = name
    os.environ["CHARGEBACK_LANDING"] = str(scratch / "landing")
    os.environ["CHARGEBACK_REPORTS_OUT"] = str(scratch / "reports-out")
    os.environ["CHARGEBACK_GX_DIR"] = str(scratch / "gx")
    warehouse.drop_database(name)
    warehouse.ensure_schema()
    configuration.load()
    return warehouse.dsn()


@contextlib.contextmanager
def database_of_its_own(suffix: str) -> Iterator[str]:
    """Switch to a fresh database ``<session database>_<suffix>`` with the shipped
    configuration applied, for a module whose tests must not see other modules' rows."""
    from chargeback.engine import configuration
    from chargeback.platform import warehouse

    session_db = os.environ["CHARGEBACK_DATABASE"]
    name = f"{session_db}_{suffix}"
    warehouse.drop_database(name)
    os.environ["CHARGEBACK_DATABASE"] = name
    try:
        warehouse.ensure_schema()
        configuration.load()
        yield name
    finally:
        os.environ["CHARGEBACK_DATABASE"] = session_db


@pytest.fixture
def settings():
    from chargeback.platform.settings import get_settings

    return get_settings()


@pytest.fixture
def landing(settings) -> Path:
    """An empty landing directory for the test."""
    path = Path(settings.landing)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
