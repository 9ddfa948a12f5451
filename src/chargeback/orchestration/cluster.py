"""Airflow on Celery: the deployment's shape on one machine (``make airflow-celery``, docs/SCALE.md).

The scheduler, the API server (the UI, and the execution API the workers' tasks report
to), the DAG processor, the triggerer and ``workers`` Celery workers, each its own process
as in production:

- **metadata database**: PostgreSQL, ``<warehouse database>_airflow`` on the warehouse's
  server (SQLite cannot serve several processes; the embedded server is the zero-install
  default, ``WAREHOUSE_DSN``'s server otherwise);
- **broker**: Redis, ``CHARGEBACK_CELERY_BROKER`` (default ``redis://127.0.0.1:6379/0``), with a
  queue of the warehouse database's own, so two clusters on one Redis never take each
  other's tasks; Celery's results go to the metadata database;
- **workers**: ``worker-1`` … each with ``CHARGEBACK_CELERY_WORKER`` set to its name and
  ``concurrency`` task slots. A task instance's recorded hostname is
  ``<host>/<worker name>`` (:func:`worker_hostname`), so where each task ran is on record.

Tasks exchange data through the warehouse and ``reports_out`` only, so a worker on
another machine runs them the same way: billing_monthly's render batches read their
invoices from the issuing plan and stage PDFs in ``reports_out``
(:mod:`chargeback.billing.issuing`).

:func:`serve` runs a cluster in the foreground; tests use :func:`started` and
:meth:`Cluster.run_dag`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import conninfo

from chargeback.orchestration.runner import AirflowRunFailed, airflow_env
from chargeback.platform import warehouse
from chargeback.platform.settings import Settings, get_settings

WORKER_VARIABLE = "CHARGEBACK_CELERY_WORKER"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the cluster: the host and, in a Celery worker, the worker's name."""
    return f"{socket.getfqdn()}/{os.environ.get(WORKER_VARIABLE) or 'main'}"


@dataclasses.dataclass(frozen=True)
class TaskRun:
    """One task instance of a finished DAG run, as the metadata database recorded it."""

    task_id: str
    map_index: int
    state: str | None
    hostname: str | None

    @property
    def worker(self) -> str | None:
        """The Celery worker that ran it (``None``: not a worker of the cluster)."""
        name = (self.hostname or "").rpartition("/")[2]
        return name if name.startswith("worker-") else None


@dataclasses.dataclass
class Cluster:
    """A running cluster: its environment (the ``airflow`` CLI's too) and component processes."""

    env: dict[str, str]
    home: Path
    metadata_dsn: str
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return self.env["AIRFLOW__API__BASE_URL"]

    def airflow(self, *args: str) -> str:
        """Run an ``airflow`` CLI command against the cluster's metadata database; its output."""
        proc = subprocess.run([_airflow_exe(), *args], env=self.env, text=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise AirflowRunFailed(f"airflow {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return proc.stdout

    def run_dag(self, dag_id: str, conf: dict, *, timeout: float = 900) -> list[TaskRun]:
        """Trigger ``dag_id`` with ``conf``, wait for the scheduler and workers to finish it; its task
        instances. Raises :class:`AirflowRunFailed` naming the failed tasks and their logs."""
        self._wait_for_dag(dag_id, timeout=120)
        self.airflow("dags", "unpause", dag_id)
        run_id = f"cluster__{time.strftime('%Y%m%dT%H%M%S')}__{secrets.token_hex(3)}"
        self.airflow("dags", "trigger", dag_id, "--conf", json.dumps(conf), "--run-id", run_id)
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.query("select state from dag_run where dag_id = %s and run_id = %s", dag_id, run_id)
            if state and state[0][0] in ("success", "failed"):
                break
            time.sleep(2)
        tasks = [TaskRun(*row) for row in self.query(
            "select task_id, map_index, state, hostname from task_instance where dag_id = %s and run_id = %s"
            " order by task_id, map_index", dag_id, run_id)]
        if not state or state[0][0] != "success":
            failed = [f"{t.task_id}[{t.map_index}]={t.state}" for t in tasks if t.state not in ("success", "skipped")]
            raise AirflowRunFailed(f"DAG {dag_id} run {run_id} (conf {json.dumps(conf)}) "
                                   f"{'ended ' + state[0][0] if state else f'did not finish in {timeout:.0f} s'}: "
                                   f"{', '.join(failed) or 'no task failed'}; logs under {self.home / 'logs'}")
        return tasks

    def _wait_for_dag(self, dag_id: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.query("select 1 from dag where dag_id = %s and not is_stale", dag_id):
            self._check_alive()
            if time.monotonic() > deadline:
                raise AirflowRunFailed(f"the DAG processor did not parse {dag_id} in {timeout:.0f} s: see "
                                       f"{self.home / 'logs'}")
            time.sleep(1)

    def query(self, statement: str, *params: object) -> list[tuple]:
        """Rows of ``statement`` on the cluster's metadata database."""
        with psycopg.connect(self.metadata_dsn) as conn:
            return conn.execute(statement, params).fetchall()

    def _check_alive(self) -> None:
        dead = {name: proc.returncode for name, proc in self.processes.items() if proc.poll() is not None}
        if dead:
            raise AirflowRunFailed(f"cluster components exited: {dead}; their logs: {self.home / 'logs'}")

    def stop(self) -> None:
        """Stop every component and what it started (each runs in a process group of its own:
        uvicorn's and Celery's children too, even when the component's main process is gone)."""
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their component


def metadata_dsn(settings: Settings | None = None) -> str:
    """The metadata database's libpq DSN (created if missing) on the warehouse's server, as its owner."""
    settings = settings or get_settings()
    name = f"{settings.database or 'chargeback'}_airflow"
    server = warehouse.server_dsn(settings)
    warehouse.create_database(server, name)
    return conninfo.make_conninfo(server, dbname=name)


def _sqlalchemy(dsn: str, driver: str) -> str:
    p = conninfo.conninfo_to_dict(dsn)
    auth = quote(str(p.get("user") or os.environ.get("PGUSER") or "postgres"))
    if p.get("password"):
        auth += ":" + quote(str(p["password"]))
    host, port, name = str(p.get("host") or "localhost"), str(p.get("port") or 5432), str(p["dbname"])
    if host.startswith("/"):
        return f"{driver}://{auth}@/{name}?host={quote(host)}&port={port}"
    return f"{driver}://{auth}@{host}:{port}/{name}"


def cluster_env(settings: Settings | None = None, *, home: Path, api_port: int, concurrency: int,
                dsn: str | None = None) -> dict[str, str]:
    """The environment every component (and the ``airflow`` CLI) of a cluster runs in; ``dsn``: the
    metadata database's (default :func:`metadata_dsn`)."""
    settings = settings or get_settings()
    dsn = dsn or metadata_dsn(settings)
    env = airflow_env(settings)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _sqlalchemy(dsn, "postgresql+psycopg2"),
        "AIRFLOW__CELERY__BROKER_URL": os.environ.get("CHARGEBACK_CELERY_BROKER") or DEFAULT_BROKER,
        "AIRFLOW__CELERY__RESULT_BACKEND": _sqlalchemy(dsn, "db+postgresql"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"chargeback-{settings.database or 'chargeback'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_urlsafe(32),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
    })
    return env


def _airflow_exe() -> str:
    exe = Path(sys.executable).with_name("airflow")
    return str(exe) if exe.exists() else "airflow"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started(settings: Settings | None = None, *, home: Path, workers: int = 2, concurrency: int = 1,
            api_port: int | None = None) -> Iterator[Cluster]:
    """A cluster of ``workers`` Celery workers, its metadata database migrated; stopped on exit."""
    settings = settings or get_settings()
    warehouse.ensure_schema(settings)  # the embedded server runs before any component reaches it
    home.mkdir(parents=True, exist_ok=True)
    if api_port and not _port_free(api_port):
        raise AirflowRunFailed(f"port {api_port} is taken (another Airflow, `make airflow`?): the cluster's API"
                               " server needs it")
    dsn = metadata_dsn(settings)
    env = cluster_env(settings, home=home, api_port=api_port or _free_port(), concurrency=concurrency, dsn=dsn)
    cluster = Cluster(env, home, dsn)
    cluster.airflow("db", "migrate")
    queue = env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    commands = {
        "scheduler": ["scheduler"],
        "api-server": ["api-server"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer"],
        **{f"worker-{n}": ["celery", "worker", "--celery-hostname", f"worker-{n}@%h", "--queues", queue,
                           "--concurrency", str(concurrency), "--skip-serve-logs", "--without-gossip",
                           "--without-mingle"] for n in range(1, workers + 1)},
    }
    (home / "logs").mkdir(parents=True, exist_ok=True)
    try:
        for name, args in commands.items():
            component_env = {**env, WORKER_VARIABLE: name} if name.startswith("worker-") else env
            with (home / "logs" / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
                cluster.processes[name] = subprocess.Popen([_airflow_exe(), *args], env=component_env, stdout=log,
                                                           stderr=subprocess.STDOUT, start_new_session=True)
        yield cluster
    finally:
        cluster.stop()


def serve(settings: Settings | None = None, *, workers: int = 2, concurrency: int = 1, api_port: int = 8080) -> int:
    """``make airflow-celery``: a cluster in the foreground until interrupted."""
    settings = settings or get_settings()
    home = Path(os.environ.get("AIRFLOW_HOME", settings.root / "airflow_home")) / "celery"
    with started(settings, home=home, workers=workers, concurrency=concurrency, api_port=api_port) as cluster:
        print(f"Airflow on Celery: {workers} workers on {cluster.env['AIRFLOW__CELERY__BROKER_URL']}, queue "
              f"{cluster.env['AIRFLOW__OPERATORS__DEFAULT_QUEUE']}; UI {cluster.api_url} (the admin password is in "
              f"{home}/simple_auth_manager_passwords.json.generated); logs in {home / 'logs'}. Ctrl-C stops it.",
              flush=True)
        def stop(signum, _frame):  # a closed terminal or a supervisor's SIGTERM stops the components too
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        try:
            while True:
                cluster._check_alive()
                time.sleep(5)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 or not all(arg.isdigit() and int(arg) > 0 for arg in sys.argv[1:]):
        sys.exit("usage: python -m chargeback.orchestration.cluster [WORKERS]")
    sys.exit(serve(workers=int(sys.argv[1]) if len(sys.argv) == 2 else 2))
