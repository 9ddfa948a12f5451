"""Serving the dashboard: ``chargeback dashboard`` (in the foreground) and :func:`start` (in the
background, for the demo, the browser tests and the bench)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

APP = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501


def command(port: int = DEFAULT_PORT, address: str = "127.0.0.1") -> list[str]:
    """The Streamlit command line: headless, no usage statistics, no file watcher, no developer menu."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.port", str(port), "--server.address", address, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer", "--theme.base", "light"]


def url(port: int = DEFAULT_PORT, address: str = "127.0.0.1") -> str:
    host = "localhost" if address in ("127.0.0.1", "0.0.0.0") else address  # noqa: S104 (a name, not a bind)
    return f"http://{host}:{port}/"


def serve(port: int = DEFAULT_PORT, address: str = "127.0.0.1") -> int:
    """Run the dashboard until interrupted; returns Streamlit's exit status."""
    _prepare()
    return subprocess.call(command(port, address))


def _prepare() -> None:
    """The schema applied, by the owner — except in a deployment (``CHARGEBACK_DASHBOARD_DSN``), where
    the dashboard holds only its own credentials and the owner migrates (``chargeback warehouse migrate``)."""
    if not os.environ.get("CHARGEBACK_DASHBOARD_DSN"):
        from chargeback.platform import warehouse

        warehouse.ensure_schema()


def wait_until_up(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not answer on port {port} within {timeout:.0f} s")
        time.sleep(0.3)


@contextlib.contextmanager
def running(port: int, env: Mapping[str, str] | None = None, log: Path | None = None) -> Iterator[str]:
    """The dashboard served in the background on ``port`` for the duration; yields its URL."""
    _prepare()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command(port), env={**os.environ, **(env or {})}, stdout=out,
                               stderr=subprocess.STDOUT)
    try:
        wait_until_up(port)
        yield url(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()
