"""What happens when an Airflow task fails: one clear log line and a warehouse record.

``on_task_failure`` is every DAG's ``on_failure_callback``. It logs the DAG, task, run
and error on one line (visible in the task log) and records them in
``pipeline.task_failures`` so data engineers can query failures beside the runs. When
``CHARGEBACK_ALERT_WEBHOOK`` is set, it also POSTs the same line as JSON there.
Notifying never raises: a broken notifier must not hide the original failure.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request

log = logging.getLogger("chargeback.notify")


def failure_line(dag_id: str, task_id: str, run_id: str | None, error: object) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"chargeback: {dag_id}.{task_id} failed (run {run_id}): {first}"


def on_task_failure(context: dict) -> None:
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or "?"
    task_id = getattr(ti, "task_id", None) or "?"
    run_id = getattr(ti, "run_id", None)
    try_number = getattr(ti, "try_number", None)
    error = context.get("exception") or "unknown error"
    line = failure_line(dag_id, task_id, run_id, error)
    log.error(line)
    try:
        from chargeback import warehouse

        with warehouse.connect() as conn:
            conn.execute(
                "insert into pipeline.task_failures (dag_id, task_id, run_id, try_number, error)"
                " values (%s, %s, %s, %s, %s)",
                (dag_id, task_id, run_id, try_number, str(error)),
            )
    except Exception as exc:  # noqa: BLE001 - the notifier must not mask the task's own error
        log.warning("could not record the failure in the warehouse: %s", exc)
    url = os.environ.get("CHARGEBACK_ALERT_WEBHOOK")
    if url:
        try:
            body = json.dumps({"text": line}).encode()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
            urllib.request.urlopen(req, timeout=10).close()  # noqa: S310 - operator-configured URL
        except Exception as exc:  # noqa: BLE001
            log.warning("could not post the failure to the webhook: %s", exc)
