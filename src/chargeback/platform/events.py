"""What the user sees when Chargeback refuses, rejects or quarantines something: one line.

Every refusal (a month that cannot close, an invoice that cannot change), rejection (a
file that cannot be parsed), quarantine summary and task failure is reported the same
way, by :func:`record`:

* one line in the log — in an Airflow task, that is the task log the data engineer
  opens from the UI — shaped ``chargeback <kind>: <what> [at <where>]: <why> — <action>``;
* one row in ``pipeline.events`` with the same parts in columns, plus the Airflow DAG,
  task, run and try the line came from (read from Airflow's ``AIRFLOW_CTX_*``
  variables when it runs in a task).

Recording never raises: when the warehouse itself is what failed, the log line is
still written and the problem with the record is logged beside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("chargeback.platform.events")

KINDS = ("quarantine", "rejected_file", "refusal", "task_failure", "dag_failure", "notice")
SEVERITIES = ("info", "warning", "error")
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True)
class Event:
    """One thing the user must know about, in four parts."""

    kind: str
    what: str
    """The subject: ``load 12``, ``invoices of 2026-10``, ``3 rows of 2 files``."""
    why: str
    """The reason, in the user's terms."""
    action: str | None = None
    """What to do about it."""
    where: str | None = None
    """``file:line``, an invoice number, a period."""
    severity: str = "error"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"event kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"event severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")

    @property
    def line(self) -> str:
        """The one line: ``chargeback <kind>: <what> [at <where>]: <why> [— <action>]``."""
        where = f" at {self.where}" if self.where else ""
        action = f" — {self.action}" if self.action else ""
        why = " ".join(self.why.split())
        return f"chargeback {self.kind}: {self.what}{where}: {why}{action}"


def airflow_context() -> dict[str, Any]:
    """The Airflow task this process runs (empty outside a task)."""
    env = os.environ
    try_number = env.get("AIRFLOW_CTX_TRY_NUMBER")
    return {
        "dag_id": env.get("AIRFLOW_CTX_DAG_ID"),
        "task_id": env.get("AIRFLOW_CTX_TASK_ID"),
        "run_id": env.get("AIRFLOW_CTX_DAG_RUN_ID"),
        "try_number": int(try_number) if try_number and try_number.isdigit() else None,
    }


def record(event: Event, *, details: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
           conn: psycopg.Connection | None = None, settings=None) -> str:
    """Log ``event.line`` and keep it in ``pipeline.events``; return the line.

    ``conn``: record inside the caller's transaction (it commits or rolls back with the
    caller's work); default: a connection of its own, committed at once — use that for
    refusals, which are followed by an exception that rolls the caller's work back.
    ``context`` overrides the Airflow task the event is attributed to.
    """
    line = event.line
    log.log(_LOG_LEVEL[event.severity], line)
    where = {**airflow_context(), **(context or {})}
    row = (event.kind, event.severity, event.what, event.where, event.why, event.action, line,
           where.get("dag_id"), where.get("task_id"), where.get("run_id"), where.get("try_number"),
           Jsonb(dict(details)) if details else None)
    statement = (
        "insert into pipeline.events (kind, severity, subject, location, reason, action, line,"
        " dag_id, task_id, run_id, try_number, details)"
        " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    try:
        if conn is not None:
            conn.execute(statement, row)
        else:
            from chargeback.platform import warehouse

            with warehouse.connect(settings) as own:
                own.execute(statement, row)
    except Exception as exc:
        if conn is not None:
            raise
        log.warning("chargeback: could not keep this line in pipeline.events (%s): %s",
                    " ".join(str(exc).split()), line)
    return line


def refuse(what: str, why: str, action: str, where: str | None = None, **kwargs: Any) -> str:
    """Record a refusal and return its line, for the exception the caller raises next."""
    return record(Event("refusal", what, why, action, where), **kwargs)
