"""What happens when an Airflow task or a whole DAG run fails: one line, kept and sent.

:class:`FailureNotifier` is an Airflow notifier (``airflow.sdk.BaseNotifier``). Every
task's ``on_failure_callback`` (``chargeback.orchestration.dag_defaults.default_args``) and every
DAG's ``on_failure_callback`` (a failed DAG run) is one. It:

* always records one line with ``chargeback.platform.events.record`` — in the log (the task log,
  or the DAG processor's log for a DAG run) and in ``pipeline.events`` with the DAG,
  task, run and try, so data engineers query failures beside the runs;
* when configured, sends the same line by e-mail (``CHARGEBACK_SMTP_HOST``/``PORT``/
  ``FROM``/``TO``, optional ``USER``/``PASSWORD``, ``TLS``, ``CA_FILE``) and/or POSTs it as
  JSON ``{"text": line}`` to ``CHARGEBACK_ALERT_WEBHOOK`` (Slack, Mattermost and Teams
  incoming webhooks read ``text``).

What is sent is :meth:`chargeback.platform.events.Event.bounded_line` — each part cut at
200 characters, control characters escaped — and, for the webhook, ``&``, ``<`` and ``>``
HTML-escaped (Slack reads ``<…>`` as links and mentions); the e-mail is text/plain only.
Mail goes over TLS with certificate and host name verification (``ssl.create_default_context``,
or the CA bundle ``CHARGEBACK_SMTP_CA_FILE`` of an internal relay): STARTTLS by default,
``CHARGEBACK_SMTP_TLS=ssl`` for SMTPS, ``none`` only for a relay without TLS — and then
no login is ever attempted (:class:`InsecureLoginRefused`).

Notifying never raises: a broken mail server must not hide the failure it reports,
and Airflow would only log the notifier's error instead of the task's.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import smtplib
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import Any

from airflow.sdk import BaseNotifier

from chargeback.platform import events

log = logging.getLogger("chargeback.platform.notify")

TIMEOUT_SECONDS = 10
LINE_LIMIT = 1000
"""Characters of any line sent (its parts are already bounded; this bounds every caller of :func:`send`)."""
TLS_MODES = ("starttls", "ssl", "none")


class InsecureLoginRefused(RuntimeError):
    """A login was configured over a connection that is not TLS: the password would travel in clear."""


@dataclass(frozen=True)
class Channels:
    """Where failure lines go besides the log and pipeline.events (read from the environment)."""

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str | None = None
    smtp_to: tuple[str, ...] = ()
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_tls: str = "starttls"
    """``starttls`` (default), ``ssl`` (SMTPS, implicit TLS) or ``none`` (no login allowed)."""
    smtp_ca_file: str | None = None
    """PEM bundle of the CA(s) to trust instead of the system's (an internal relay's CA)."""
    webhook: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Channels:
        env = os.environ if environ is None else environ
        port = env.get("CHARGEBACK_SMTP_PORT") or "25"
        return cls(
            smtp_host=env.get("CHARGEBACK_SMTP_HOST") or None,
            smtp_port=int(port) if port.isdigit() else 25,
            smtp_from=env.get("CHARGEBACK_SMTP_FROM") or None,
            smtp_to=tuple(a.strip() for a in (env.get("CHARGEBACK_SMTP_TO") or "").split(",") if a.strip()),
            smtp_user=env.get("CHARGEBACK_SMTP_USER") or None,
            smtp_password=env.get("CHARGEBACK_SMTP_PASSWORD") or None,
            smtp_tls=_tls_mode(env),
            smtp_ca_file=env.get("CHARGEBACK_SMTP_CA_FILE") or None,
            webhook=env.get("CHARGEBACK_ALERT_WEBHOOK") or None,
        )

    @property
    def smtp(self) -> bool:
        return bool(self.smtp_host and self.smtp_to)


def _tls_mode(env: Mapping[str, str]) -> str:
    """``CHARGEBACK_SMTP_TLS``; else the older ``CHARGEBACK_SMTP_STARTTLS`` (false: ``none``); else
    ``starttls``. An unknown value is kept as is: :func:`send_mail` refuses it (``from_env`` never raises)."""
    mode = (env.get("CHARGEBACK_SMTP_TLS") or "").strip().lower()
    if mode:
        return mode
    legacy = (env.get("CHARGEBACK_SMTP_STARTTLS") or "").strip().lower()
    return "none" if legacy in ("0", "false", "no") else "starttls"


class FailureNotifier(BaseNotifier):
    """``on_failure_callback`` of every task (``kind='task_failure'``) and DAG (``'dag_failure'``)."""

    def __init__(self, kind: str = "task_failure") -> None:
        super().__init__()
        if kind not in ("task_failure", "dag_failure"):
            raise ValueError(f"kind must be 'task_failure' or 'dag_failure', got {kind!r}")
        self.kind = kind

    def render_template_fields(self, context: Mapping[str, Any], jinja_env: Any = None) -> None:
        """Nothing to template: the line is built from the context. (Airflow 3.3's
        ``dags test`` also hands DAG callbacks a serialized DAG that cannot build a
        Jinja environment, which the default would fail on.)"""

    def notify(self, context: Mapping[str, Any]) -> None:
        notify_failure(context, self.kind)


def notify_failure(context: Mapping[str, Any], kind: str = "task_failure",
                   channels: Channels | None = None) -> str | None:
    """Record and send the failure line of an Airflow callback ``context``; return the line.

    Never raises (returns ``None`` if even the line could not be built).
    """
    try:
        event, where = failure_event(context, kind)
        line = events.record(event, context=where)
    except Exception:
        log.exception("chargeback: could not report an Airflow failure")
        return None
    send(event.bounded_line(), channels or Channels.from_env())
    return line


def failure_event(context: Mapping[str, Any], kind: str) -> tuple[events.Event, dict[str, Any]]:
    """The event of a failed task or DAG run, and the DAG/task/run it is attributed to."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None) or "?"
    task_id = getattr(ti, "task_id", None)
    run_id = getattr(ti, "run_id", None) or context.get("run_id")
    dag_run = context.get("dag_run")
    run_id = run_id or getattr(dag_run, "run_id", None)
    try_number = getattr(ti, "try_number", None)
    if kind == "dag_failure":
        reason = context.get("reason") or "a task failed"
        last = f" (last task to fail: {task_id})" if task_id else ""
        event = events.Event(
            "dag_failure",
            f"DAG run {dag_id} {run_id}",
            f"the run failed: {reason}{last}",
            "open the failed task's log in Airflow (its failure is recorded beside this line),"
            " fix the cause and clear the failed task to run it again",
        )
        return event, {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "try_number": None}
    error = context.get("exception")
    event = events.Event(
        "task_failure",
        f"task {dag_id}.{task_id}",
        _first_line(error) if error is not None else "the task failed (no exception recorded)",
        "read the task log in Airflow, fix the cause and clear the task to run it again"
        " (its retries are used up)",
        where=f"run {run_id}, try {try_number}" if try_number else f"run {run_id}",
    )
    return event, {"dag_id": dag_id, "task_id": task_id, "run_id": run_id,
                   "try_number": try_number if isinstance(try_number, int) else None}


def send(line: str, channels: Channels) -> None:
    """E-mail and/or POST ``line`` where configured; log, never raise, when that fails.

    ``line`` is :func:`events.clean`-ed and cut at ``LINE_LIMIT`` characters first.
    """
    line = events.clean(line, LINE_LIMIT)
    if channels.smtp:
        try:
            send_mail(line, channels)
        except Exception as exc:  # noqa: BLE001
            log.warning("chargeback: could not e-mail the failure via %s:%s (%s): %s",
                        channels.smtp_host, channels.smtp_port, " ".join(str(exc).split()), line)
    if channels.webhook:
        try:
            post_webhook(line, channels.webhook)
        except Exception as exc:  # noqa: BLE001
            log.warning("chargeback: could not post the failure to the webhook (%s): %s",
                        " ".join(str(exc).split()), line)


def send_mail(line: str, channels: Channels) -> None:
    """Send ``line`` (already clean) as a text/plain e-mail, over verified TLS unless ``smtp_tls`` is ``none``."""
    mode = channels.smtp_tls
    if mode not in TLS_MODES:
        raise ValueError(f"CHARGEBACK_SMTP_TLS must be one of {', '.join(TLS_MODES)}, got {mode!r}")
    where = f"{channels.smtp_host}:{channels.smtp_port}"
    if channels.smtp_user and mode == "none":
        raise InsecureLoginRefused(
            f"refused to log in to {where} as {channels.smtp_user} without TLS (CHARGEBACK_SMTP_TLS=none):"
            " the password would travel in clear — use CHARGEBACK_SMTP_TLS=starttls or ssl, or drop the login")
    message = EmailMessage()
    message["Subject"] = line if len(line) <= 150 else line[:147] + "..."
    message["From"] = channels.smtp_from or "chargeback@localhost"
    message["To"] = ", ".join(channels.smtp_to)
    message.set_content(line + "\n\nThe same line is kept in pipeline.events.\n")
    context = ssl.create_default_context(cafile=channels.smtp_ca_file) if mode != "none" else None
    if mode == "ssl":
        smtp = smtplib.SMTP_SSL(channels.smtp_host, channels.smtp_port, timeout=TIMEOUT_SECONDS, context=context)
    else:
        smtp = smtplib.SMTP(channels.smtp_host, channels.smtp_port, timeout=TIMEOUT_SECONDS)
    with smtp:
        if mode == "starttls":
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError(
                    f"{where} does not offer STARTTLS — set CHARGEBACK_SMTP_TLS=ssl for SMTPS, or none for a"
                    " relay without TLS (then no login)")
            smtp.starttls(context=context)
        if channels.smtp_user:
            if not isinstance(smtp.sock, ssl.SSLSocket):  # never reached: kept as the last guard
                raise InsecureLoginRefused(f"refused to log in to {where}: the connection is not TLS")
            smtp.login(channels.smtp_user, channels.smtp_password or "")
        smtp.send_message(message)


def post_webhook(line: str, url: str) -> None:
    """POST ``{"text": line}`` with ``&``, ``<``, ``>`` HTML-escaped, as Slack's incoming webhooks expect
    (an unescaped ``<!channel>`` or ``<https://…|text>`` from tenant text would notify or link)."""
    body = json.dumps({"text": html.escape(line, quote=False)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - operator-configured
        response.read()


def send_to(channel: str, line: str, channels: Channels, email_to: list[str] | None,
            env: Mapping[str, str]) -> None:
    """Send ``line`` to one channel — ``email`` (to ``email_to``, else the notifier's recipients) or
    ``webhook:<name>`` (``default``: ``CHARGEBACK_ALERT_WEBHOOK``, else ``CHARGEBACK_ALERT_WEBHOOK_<NAME>``)
    — raising on failure (unlike :func:`send`, which only logs): the caller keeps it pending."""
    line = events.clean(line, LINE_LIMIT)
    if channel == "email":
        to = tuple(email_to) if email_to is not None else channels.smtp_to
        if not channels.smtp_host or not to:
            raise RuntimeError("no mail server (CHARGEBACK_SMTP_HOST) or no recipients")
        send_mail(line, replace(channels, smtp_to=to))
        return
    name = channel.removeprefix("webhook:")
    variable = "CHARGEBACK_ALERT_WEBHOOK" if name == "default" else f"CHARGEBACK_ALERT_WEBHOOK_{name.upper()}"
    url = channels.webhook if name == "default" else env.get(variable)
    if not url:
        raise RuntimeError(f"{variable} is not set")
    post_webhook(line, url)


def send_pending(pending: list[str] | tuple[str, ...], line: str, channels: Channels, email_to: list[str] | None,
                 env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """:func:`send_to` each of ``pending``; returns the channels still pending and why each failed
    (one ``channel: reason`` each, URLs left out), for the caller to keep on its row and retry."""
    left, errors = [], []
    for channel in pending:
        try:
            send_to(channel, line, channels, email_to, env)
        except Exception as exc:  # noqa: BLE001 - kept by the caller, tried again later
            left.append(channel)
            errors.append(f"{channel}: {error_text(exc)}")
    return left, errors


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+|\b[\w.-]+\.[a-z]{2,}/\S*")


def error_text(exc: BaseException) -> str:
    """Why a channel failed, for the alert row and the events line, with any URL left out: a webhook's
    URL is a secret (it is in the environment, not in budgets.yml), and the row is readable by BI."""
    text = _URL.sub("<url>", " ".join(str(exc).split()))
    return text or type(exc).__name__


def _first_line(error: object) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    name = type(error).__name__
    return f"{name}: {first}" if first and not first.startswith("chargeback ") else (first or name)
