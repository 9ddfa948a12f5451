"""A failed task or DAG run notifies: one line in the log and pipeline.events, and by
e-mail and webhook when configured — against a real SMTP server and a real HTTP server
on localhost, and one real failing Airflow run."""

from __future__ import annotations

import email
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from email import policy
from types import SimpleNamespace

import pytest

from chargeback.orchestration import runner
from chargeback.platform import notify, warehouse

pytestmark = pytest.mark.warehouse

RUN = "manual__2026-11-28T00:00:00+00:00"
LINE = (f"chargeback task_failure: task usage_hourly.publish at run {RUN}, try 3: WarehouseError: cannot connect"
        " to the warehouse — read the task log in Airflow, fix the cause and clear the task to run it again"
        " (its retries are used up)")


def _context(error: Exception | None = None) -> dict:
    ti = SimpleNamespace(dag_id="usage_hourly", task_id="publish", run_id=RUN, try_number=3)
    return {"ti": ti, "exception": error or _WarehouseError("cannot connect to the warehouse\nserver closed")}


class _WarehouseError(RuntimeError):
    pass


_WarehouseError.__name__ = "WarehouseError"


def _events(run_id: str) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.execute(
            "select kind, dag_id, task_id, run_id, try_number, subject, location, reason, line from pipeline.events"
            " where run_id = %s order by event_id", (run_id,)).fetchall()


# --------------------------------------------------------------------------- a real SMTP server (stdlib)

class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, MAIL, RCPT, DATA, QUIT."""

    def handle(self) -> None:
        self.wfile.write(b"220 localhost test SMTP\r\n")
        envelope = {"to": []}
        while line := self.rfile.readline():
            verb = line.decode().strip().split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250 localhost\r\n")
            elif verb == "MAIL":
                envelope["from"] = line.decode().split(":", 1)[1].strip()
                self.wfile.write(b"250 OK\r\n")
            elif verb == "RCPT":
                envelope["to"].append(line.decode().split(":", 1)[1].strip())
                self.wfile.write(b"250 OK\r\n")
            elif verb == "DATA":
                self.wfile.write(b"354 end with .\r\n")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                self.server.messages.append((envelope, email.message_from_bytes(data, policy=policy.default)))
                self.wfile.write(b"250 queued\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


@pytest.fixture
def smtp_server() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.messages = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_channels(monkeypatch):
    for name in list(os.environ):
        if name.startswith("CHARGEBACK_SMTP_") or name == "CHARGEBACK_ALERT_WEBHOOK":
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------- the tests

def test_a_failed_task_is_one_line_in_the_log_and_in_pipeline_events(no_channels, caplog):
    notify.FailureNotifier("task_failure")(_context())

    assert [r.getMessage() for r in caplog.records if r.name == "chargeback.platform.events"] == [LINE]
    assert _events(RUN) == [("task_failure", "usage_hourly", "publish", RUN, 3, "task usage_hourly.publish",
                             f"run {RUN}, try 3", "WarehouseError: cannot connect to the warehouse", LINE)]


def test_a_failed_task_is_emailed_when_smtp_is_configured(smtp_server, monkeypatch, no_channels):
    monkeypatch.setenv("CHARGEBACK_SMTP_TLS", "none")  # this test server has no TLS (TLS: test_notify_tls.py)
    monkeypatch.setenv("CHARGEBACK_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("CHARGEBACK_SMTP_PORT", str(smtp_server.server_address[1]))
    monkeypatch.setenv("CHARGEBACK_SMTP_FROM", "chargeback@example.com")
    monkeypatch.setenv("CHARGEBACK_SMTP_TO", "data-eng@example.com, finance@example.com")
    run = RUN + "-smtp"

    ti = SimpleNamespace(dag_id="usage_hourly", task_id="publish", run_id=run, try_number=3)
    notify.FailureNotifier()({"ti": ti, "exception": _WarehouseError("cannot connect to the warehouse")})

    line = LINE.replace(RUN, run)
    assert len(smtp_server.messages) == 1
    envelope, message = smtp_server.messages[0]
    assert envelope == {"from": "<chargeback@example.com>", "to": ["<data-eng@example.com>", "<finance@example.com>"]}
    assert message["To"] == "data-eng@example.com, finance@example.com"
    assert message["Subject"] == line[:147] + "..."
    assert message.get_content().splitlines()[0] == line
    assert [row[-1] for row in _events(run)] == [line]


def test_a_failed_dag_run_is_posted_to_the_webhook_when_configured(webhook_server, monkeypatch, no_channels):
    monkeypatch.setenv("CHARGEBACK_ALERT_WEBHOOK", f"http://127.0.0.1:{webhook_server.server_address[1]}/hooks/abc")
    run = RUN + "-webhook"
    ti = SimpleNamespace(dag_id="billing_monthly", task_id="render_invoices", run_id=run, try_number=3)

    notify.FailureNotifier("dag_failure")({"ti": ti, "reason": "task_failure", "run_id": run})

    line = (f"chargeback dag_failure: DAG run billing_monthly {run}: the run failed: task_failure (last task to"
            " fail: render_invoices) — open the failed task's log in Airflow (its failure is recorded beside this"
            " line), fix the cause and clear the failed task to run it again")
    assert webhook_server.posts == [("/hooks/abc", "application/json", {"text": line})]
    assert [(row[0], row[1], row[2], row[4], row[-1]) for row in _events(run)] == [
        ("dag_failure", "billing_monthly", "render_invoices", None, line)]


def test_an_unreachable_mail_server_or_webhook_never_hides_the_failure(monkeypatch, no_channels, caplog):
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("CHARGEBACK_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("CHARGEBACK_SMTP_PORT", str(port))
    monkeypatch.setenv("CHARGEBACK_SMTP_TO", "data-eng@example.com")
    monkeypatch.setenv("CHARGEBACK_ALERT_WEBHOOK", f"http://127.0.0.1:{port}/")
    run = RUN + "-unreachable"
    ti = SimpleNamespace(dag_id="usage_hourly", task_id="publish", run_id=run, try_number=3)

    notify.FailureNotifier()({"ti": ti, "exception": _WarehouseError("cannot connect to the warehouse")})

    assert [row[-1] for row in _events(run)] == [LINE.replace(RUN, run)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "chargeback.platform.notify"]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"chargeback: could not e-mail the failure via 127.0.0.1:{port} (")
    assert warnings[1].startswith("chargeback: could not post the failure to the webhook (")


@pytest.mark.airflow
def test_a_failed_dag_run_notifies_with_its_dag_task_and_run(tmp_path, monkeypatch, no_channels):
    """A real usage_hourly run whose window ends before it starts: its first task fails
    every try, the task's and the DAG run's failures are each one line in pipeline.events."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("CHARGEBACK_RETRY_DELAY_SECONDS", "1")
    conf = {"start": "2026-07-02T00:00:00Z", "end": "2026-07-01T00:00:00Z", "source": "files"}
    with warehouse.connect() as conn:
        before = conn.execute("select coalesce(max(event_id), 0) from pipeline.events").fetchone()[0]

    with pytest.raises(runner.AirflowRunFailed):
        runner.run_dag("usage_hourly", conf, quiet=True)

    with warehouse.connect() as conn:
        rows = conn.execute(
            "select kind, dag_id, task_id, run_id, try_number, reason, line from pipeline.events"
            " where event_id > %s and kind in ('task_failure', 'dag_failure') order by event_id", (before,)).fetchall()
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("task_failure", "usage_hourly", "resolve_window", 3),
        ("dag_failure", "usage_hourly", "resolve_window", None),
    ]
    run_id = rows[0][3]
    assert run_id.startswith("manual__")
    assert rows[1][3] == run_id
    assert rows[0][5] == ("ValueError: empty window: start 2026-07-02T00:00:00+00:00 is not before end"
                          " 2026-07-01T00:00:00+00:00")
    assert rows[0][6].startswith(f"chargeback task_failure: task usage_hourly.resolve_window at run {run_id},"
                                 " try 3: ValueError: empty window")


def test_tenant_text_reaches_mail_and_webhook_bounded_and_escaped(smtp_server, webhook_server, monkeypatch,
                                                                  no_channels):
    """A failure whose text carries 100 KB of a raw record — control characters, a forged
    header, ``<script>``, a Slack mention and link — is e-mailed and posted with every part
    cut at 200 characters, control characters escaped and the webhook's ``<``/``>`` escaped;
    the log and pipeline.events keep the whole line."""
    monkeypatch.setenv("CHARGEBACK_SMTP_TLS", "none")
    monkeypatch.setenv("CHARGEBACK_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("CHARGEBACK_SMTP_PORT", str(smtp_server.server_address[1]))
    monkeypatch.setenv("CHARGEBACK_SMTP_TO", "data-eng@example.com")
    monkeypatch.setenv("CHARGEBACK_ALERT_WEBHOOK", f"http://127.0.0.1:{webhook_server.server_address[1]}/hook")
    run = RUN + "-hostile"
    record = ("tenant \x1b[31mt001\x00\u202e <script>alert(1)</script> <!channel> <https://evil.example|fix it> "
              + "x" * 100_000)
    ti = SimpleNamespace(dag_id="usage_hourly", task_id="gate\x07\r\nX-Injected: 1", run_id=run, try_number=3)
    error = _WarehouseError(record)

    line = notify.notify_failure({"ti": ti, "exception": error})

    assert len(line) > 100_000  # kept whole in the log and pipeline.events, control characters escaped
    assert "usage_hourly.gate\\x07 X-Injected: 1 at run" in line
    assert "\x00" not in line
    assert [row[-1] for row in _events(run)] == [line]
    [(envelope, message)] = smtp_server.messages
    [(_, _, posted)] = webhook_server.posts
    mailed, subject, sent = message.get_content().splitlines()[0], message["Subject"], posted["text"]
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert message["X-Injected"] is None
    assert message["Bcc"] is None
    assert envelope["to"] == ["<data-eng@example.com>"]
    for text in (mailed, subject, sent):
        assert len(text) < 1000
        assert not any(ord(c) < 32 or ord(c) == 0x7F or c == "\u202e" for c in text)
        assert "\\x1b[31mt001\\x00\\u202e" in text or len(text) <= 150  # escaped, visibly (subject: cut short)
    assert mailed.startswith("chargeback task_failure: task usage_hourly.gate\\x07 X-Injected: 1 at run ")
    assert "<script>alert(1)</script> <!channel>" in mailed  # plain text: shown as is, never rendered
    reason = mailed.split(", try 3: ", 1)[1].split(" — ")[0]
    assert reason.endswith("xx…")
    assert len(reason) == 200
    assert sent == mailed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;!channel&gt; &lt;https://evil.example|fix it&gt;" in sent
    assert "<" not in sent
    assert ">" not in sent
