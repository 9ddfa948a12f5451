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

Lines that leave the system (alert e-mails, webhooks: :mod:`chargeback.platform.notify`)
are :meth:`Event.bounded_line`: every part passed through :func:`clean` — control
characters escaped, each part cut at ``FIELD_LIMIT`` characters with an ellipsis —
because parts may carry tenant-supplied text (tenant ids, file names, raw record text).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("chargeback.platform.events")

KINDS = ("quarantine", "rejected_file", "refusal", "task_failure", "dag_failure", "notice")
SEVERITIES = ("info", "warning", "error")
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FIELD_LIMIT = 200
"""Characters of each part of a line that leaves the system (:meth:`Event.bounded_line`)."""
ELLIPSIS = "…"


def clean(text: object, limit: int | None = FIELD_LIMIT) -> str:
    """``text`` safe to put in one line of an alert: whitespace runs (newlines included)
    become one space, other control and format characters (ESC, NUL, bidi overrides …)
    are escaped as ``\\x1b`` / ``\\u202e``, and the result is cut at ``limit`` characters,
    ending in an ellipsis when it was longer. ``limit=None``: not cut."""
    out: list[str] = []
    for char in " ".join(str(text).split()):
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
        if limit is not None and len(out) > limit:
            break
    result = "".join(out)
    if limit is not None and len(result) > limit:
        return result[: max(limit - 1, 0)] + ELLIPSIS
    return result


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
        """The one line: ``chargeback <kind>: <what> [at <where>]: <why> [— <action>]``, each part
        :func:`clean` but not cut (a newline or NUL in a part could forge log lines or lose the row)."""
        return self.bounded_line(None)

    def bounded_line(self, limit: int | None = FIELD_LIMIT) -> str:
        """:attr:`line` with every part :func:`clean` and cut at ``limit`` characters: what
        e-mails and webhooks carry (the whole line stays in the log and pipeline.events)."""
        where = f" at {clean(self.where, limit)}" if self.where else ""
        action = f" — {clean(self.action, limit)}" if self.action else ""
        return f"chargeback {self.kind}: {clean(self.what, limit)}{where}: {clean(self.why, limit)}{action}"


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
    parts = (clean(event.what, None), clean(event.where, None) if event.where else event.where,
             clean(event.why, None), clean(event.action, None) if event.action else event.action)
    row = (event.kind, event.severity, *parts, line,
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
