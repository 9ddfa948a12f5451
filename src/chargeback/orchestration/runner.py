"""Run the DAGs through Airflow from the CLI, tests and the demo.

``airflow dags test`` executes a real DAG run in-process: the scheduler's dependency
logic, XComs, retries and task logs, with metadata in a SQLite database under
``airflow_home/``. The same DAG files run unchanged under ``airflow standalone``
(``make airflow``) or a real deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from chargeback.platform.settings import Settings, get_settings


class AirflowRunFailed(RuntimeError):
    """A DAG run did not succeed; the message says which DAG and where its log is."""


def airflow_env(settings: Settings | None = None, *, warehouse: bool = True) -> dict[str, str]:
    """The environment Airflow runs in: Chargeback's DAGs and, with ``warehouse``, the
    ``CHARGEBACK_PG_*`` connection dbt's profile reads (starting the embedded server if
    it is the warehouse)."""
    settings = settings or get_settings()
    home = Path(os.environ.get("AIRFLOW_HOME", settings.root / "airflow_home"))
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": env.get("AIRFLOW__CORE__UNIT_TEST_MODE", "False"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env.get(
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "GX_ANALYTICS_ENABLED": "false",
        "NO_COLOR": "1",
        # airflow standalone starts its components as `airflow …` subprocesses
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    })
    if warehouse:
        from chargeback.platform import warehouse as wh

        env.update(wh.dbt_env(settings))
    home.mkdir(parents=True, exist_ok=True)
    return env


def _airflow(args: list[str], env: dict[str, str], *, capture: bool) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("airflow")
    cmd = [str(exe) if exe.exists() else "airflow", *args]
    return subprocess.run(cmd, env=env, text=True, capture_output=capture, check=False)


def ensure_metadata_db(settings: Settings | None = None) -> None:
    env = airflow_env(settings, warehouse=False)
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists():
        return
    proc = _airflow(["db", "migrate"], env, capture=True)
    if proc.returncode != 0:
        raise AirflowRunFailed(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    marker.touch()


def run_dag(dag_id: str, conf: dict, *, settings: Settings | None = None, quiet: bool = False) -> str:
    """Run ``dag_id`` once with ``conf`` via ``airflow dags test``; return its output."""
    ensure_metadata_db(settings)
    env = airflow_env(settings)
    proc = _airflow(["dags", "test", dag_id, "--conf", json.dumps(conf)], env, capture=True)
    output = proc.stdout + proc.stderr
    if not quiet:
        sys.stdout.write(output)
    failed = proc.returncode != 0 or "state=failed" in output or "DagRunState.FAILED" in output
    if failed:
        tail = "\n".join(output.strip().splitlines()[-40:])
        raise AirflowRunFailed(f"DAG {dag_id} run failed (conf {json.dumps(conf)}); last lines:\n{tail}")
    return output


def standalone(settings: Settings | None = None) -> int:
    """``airflow standalone`` (scheduler, API server and web UI on :8080) with Chargeback's DAGs and warehouse."""
    from chargeback.platform import warehouse

    warehouse.ensure_schema(settings)  # starts the embedded warehouse so tasks find it running
    ensure_metadata_db(settings)
    env = airflow_env(settings)
    print(f"Airflow home: {env['AIRFLOW_HOME']} — the admin password is printed below and kept in "
          f"{env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated", flush=True)
    return _airflow(["standalone"], env, capture=False).returncode


if __name__ == "__main__":
    if sys.argv[1:] == ["standalone"]:
        sys.exit(standalone())
    sys.exit("usage: python -m chargeback.orchestration.runner standalone")
