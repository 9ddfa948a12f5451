"""The dashboard's link to the warehouse and to its viewer: sign-in, connections, cached queries.

Every query runs on a connection of the dashboard's login (``chargeback_dashboard``, which reads
nothing itself) inside :func:`chargeback.platform.access.viewer_session` — ``SET LOCAL ROLE`` to
the signed-in user's role — so the database decides which rows come back, whatever the URL or
the filters say. Results are cached per viewer role (the role is part of the key: one viewer's
rows are never served to another) for :data:`TTL` seconds; a write clears the cache.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import streamlit as st

from chargeback.dashboard import queries
from chargeback.platform import access

TTL = int(os.environ.get("CHARGEBACK_DASHBOARD_CACHE_SECONDS", "60"))
_POOL_SIZE = 4


class _Pool:
    """A few connections of the dashboard's login, shared by the sessions' script threads."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.idle: list[psycopg.Connection] = []
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is None or conn.closed:
            conn = psycopg.connect(self.dsn)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self.lock:
            if len(self.idle) < _POOL_SIZE:
                self.idle.append(conn)
                return
        conn.close()


@st.cache_resource
def _pool() -> _Pool:
    return _Pool(access.dashboard_dsn())


_FAILURES = 5
_LOCKOUT = 300
_failed: dict[str, list[float]] = {}
_failed_lock = threading.Lock()


def _throttled(name: str) -> bool:
    """Whether ``name`` failed :data:`_FAILURES` sign-ins in the last :data:`_LOCKOUT` seconds (this
    process: one dashboard server; an authenticating proxy does this for a deployment)."""
    now = time.monotonic()
    with _failed_lock:
        recent = [t for t in _failed.get(name, []) if now - t < _LOCKOUT]
        _failed[name] = recent
        return len(recent) >= _FAILURES


def _count(name: str, *, failed: bool) -> None:
    with _failed_lock:
        if failed:
            _failed.setdefault(name, []).append(time.monotonic())
        else:
            _failed.pop(name, None)


def viewer() -> access.Viewer | None:
    return st.session_state.get("viewer")


def sign_in_form() -> None:
    """The sign-in page: a user of ``chargeback users add``. Stops the script until signed in."""
    st.title("Chargeback")
    st.caption("Sign in with the user name and password your administrator gave you (`chargeback users add`).")
    with st.form("sign-in"):
        name = st.text_input("User name", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        name = name.strip()
        if _throttled(name):
            st.error(f"Too many failed sign-ins for this name: try again in {_LOCKOUT // 60} minutes.")
            st.stop()
        with _pool().connection() as conn:
            user = access.authenticate(conn, name, password)
            conn.rollback()
        _count(name, failed=user is None)
        if user is None:
            st.error("Unknown user name or wrong password.")
        else:
            st.session_state["viewer"] = user
            st.rerun()
    st.stop()


def sign_out() -> None:
    st.session_state.pop("viewer", None)
    st.rerun()


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=5000)
def _cached(user: access.Viewer, name: str, args: tuple) -> Any:
    with _pool().connection() as conn, access.viewer_session(conn, user):
        return getattr(queries, name)(conn, *args)


def read(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(conn, *args)`` (a function of :mod:`chargeback.dashboard.queries`) as the viewer, cached."""
    user = viewer()
    if user is None:
        raise RuntimeError("no viewer signed in")
    try:
        return _cached(user, fn.__name__, args)
    except PermissionError as exc:  # the user was removed while signed in: the session ends here
        st.session_state.pop("viewer", None)
        st.error(f"{exc}: sign in again.")
        st.stop()


def write(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(conn, *args)`` as the viewer, committed; the cache is cleared so every page sees it."""
    user = viewer()
    if user is None:
        raise RuntimeError("no viewer signed in")
    with _pool().connection() as conn, access.viewer_session(conn, user):
        result = fn(conn, *args)
    st.cache_data.clear()
    return result


def whatif(period: str, tenant_id: str, changes: list[str]):
    """The tenant's month re-priced with ``changes`` (:func:`chargeback.insights.whatif.whatif`).

    The pricing engine reads the price book and terms (``config``), which readers may not, so it
    runs as the pipeline — only after the database, asked as the viewer, says the tenant is in the
    viewer's scope."""
    from chargeback.insights import whatif as repricer
    from chargeback.platform import warehouse

    if not read(queries.in_scope, tenant_id):
        raise PermissionError(f"{tenant_id} is not in your scope")
    if any(repricer.parse_change(c).kind == "price_book" for c in changes) and not read(queries.sees_all):
        # the price books are the platform's: naming or trying them is for those who see every tenant
        raise PermissionError("a change of price book is re-priced by finance (chargeback whatif)")
    with warehouse.connect() as conn:
        return repricer.whatif(conn, period, tenant_id, changes)


def stored_pdf(document_id: int) -> tuple[str, bytes | None, str]:
    """(file name, the PDF's bytes if its sha256 is the one recorded when it was stored, a message).

    The document is looked up as the viewer (another tenant's is not found); the file is read from
    the configured storage (any fsspec URL) and checked against ``pipeline.invoices.pdf_sha256``."""
    import hashlib

    import fsspec

    row = read(queries.invoice, document_id)
    if row is None:
        return "", None, f"document {document_id} is not one of yours"
    _, tenant, number, uri, expected, status = row
    name = f"{number or f'draft-{tenant}-{document_id}'}.pdf"
    try:
        with fsspec.open(uri, "rb") as f:
            pdf = f.read()
    except FileNotFoundError:
        return name, None, f"its PDF {uri} is missing from the storage"
    actual = hashlib.sha256(pdf).hexdigest()
    if actual != expected:
        return name, None, f"its PDF has sha256 {actual}, not the {expected} recorded: not offered"
    return name, pdf, f"sha256 {actual} checked against the record ({status})"
