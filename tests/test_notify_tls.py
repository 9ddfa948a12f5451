"""Alert e-mail travels over verified TLS: against a real SMTP server (aiosmtpd) with a
certificate from a test CA — STARTTLS and SMTPS — and a server that offers no TLS.

Pure tier: ``notify.send`` reaches no warehouse; the servers listen on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chargeback.platform import notify

LINE = "chargeback task_failure: task usage_hourly.publish at run r1, try 3: WarehouseError: down — clear the task"


# --------------------------------------------------------------------------- a test CA and a server certificate

def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """``ca.pem`` (a CA no system trusts) and ``server.pem``/``server.key`` it signed, for
    ``localhost`` only (so connecting to 127.0.0.1 fails the host name check)."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Chargeback test CA")).issuer_name(_name("Chargeback test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=36500))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=36500))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    assert ipaddress.ip_address("127.0.0.1") not in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    return paths


# --------------------------------------------------------------------------- a real SMTP server (aiosmtpd)

class _Mailbox:
    """aiosmtpd handler and authenticator: keeps messages, logins and whether each was over TLS."""

    def __init__(self) -> None:
        self.messages: list = []
        self.logins: list[tuple[str, bool]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        self.messages.append((envelope.rcpt_tos, message, _over_tls(server, session)))
        return "250 OK"

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.logins.append((auth_data.login.decode(), _over_tls(server, session)))
        return AuthResult(success=auth_data.password == b"s3cret")


def _over_tls(server, session) -> bool:
    """STARTTLS sets ``session.ssl``; an SMTPS connection is TLS in its transport."""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_context(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    return context


@pytest.fixture
def serve() -> Iterator:
    """Start aiosmtpd on 127.0.0.1: ``serve(mode, pki)`` with mode ``starttls``, ``ssl`` or ``plain``."""
    controllers: list[Controller] = []

    def start(mode: str, pki: dict[str, Path] | None = None) -> tuple[_Mailbox, int]:
        box, port = _Mailbox(), _free_port()
        # aiosmtpd only counts STARTTLS as TLS for AUTH; SMTPS is TLS from the first byte
        kwargs = {"authenticator": box, "auth_require_tls": mode == "starttls"}
        if mode == "starttls":
            kwargs.update(tls_context=_server_context(pki), require_starttls=True)
        elif mode == "ssl":
            kwargs.update(ssl_context=_server_context(pki))
        controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
        if mode == "ssl":  # the controller's own readiness probe must trust the test CA
            controller.ssl_context.load_verify_locations(pki["ca"])
        controller.start()
        controllers.append(controller)
        return box, port

    yield start
    for controller in controllers:
        controller.stop()


def _channels(port: int, host: str = "localhost", **env: str) -> notify.Channels:
    return notify.Channels.from_env({
        "CHARGEBACK_SMTP_HOST": host, "CHARGEBACK_SMTP_PORT": str(port),
        "CHARGEBACK_SMTP_TO": "data-eng@example.com", **env})


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chargeback.platform.notify"]


# --------------------------------------------------------------------------- the tests

def test_starttls_is_the_default_and_verifies_the_servers_certificate(serve, pki, caplog):
    """A server whose certificate no trusted CA signed is refused — nothing sent, no login —
    unless CHARGEBACK_SMTP_CA_FILE names its CA; then the login and the mail go over TLS."""
    caplog.set_level(logging.WARNING, "chargeback.platform.notify")
    box, port = serve("starttls", pki)
    login = {"CHARGEBACK_SMTP_USER": "alerts", "CHARGEBACK_SMTP_PASSWORD": "s3cret"}
    assert _channels(port).smtp_tls == "starttls"

    notify.send(LINE, _channels(port, **login))
    assert box.messages == []
    assert box.logins == []
    assert "CERTIFICATE_VERIFY_FAILED" in _warnings(caplog)[0]

    notify.send(LINE, _channels(port, CHARGEBACK_SMTP_CA_FILE=str(pki["ca"]), **login))
    assert box.logins == [("alerts", True)]
    [(to, message, over_tls)] = box.messages
    assert (to, over_tls, message["Subject"]) == (["data-eng@example.com"], True, LINE)
    assert message.get_content_type() == "text/plain"


def test_the_host_name_is_verified(serve, pki, caplog):
    box, port = serve("starttls", pki)
    notify.send(LINE, _channels(port, host="127.0.0.1", CHARGEBACK_SMTP_CA_FILE=str(pki["ca"])))
    assert box.messages == []
    assert "CERTIFICATE_VERIFY_FAILED" in _warnings(caplog)[0]
    assert "127.0.0.1" in _warnings(caplog)[0]


def test_smtps_with_the_ca_configured_delivers(serve, pki, caplog):
    box, port = serve("ssl", pki)
    notify.send(LINE, _channels(port, CHARGEBACK_SMTP_TLS="ssl"))
    assert box.messages == []
    assert "CERTIFICATE_VERIFY_FAILED" in _warnings(caplog)[0]

    notify.send(LINE, _channels(port, CHARGEBACK_SMTP_TLS="ssl", CHARGEBACK_SMTP_CA_FILE=str(pki["ca"]),
                                CHARGEBACK_SMTP_USER="alerts", CHARGEBACK_SMTP_PASSWORD="s3cret"))
    assert box.logins == [("alerts", True)]
    assert [(m["Subject"], tls) for _, m, tls in box.messages] == [(LINE, True)]


def test_a_login_over_plain_text_is_refused(serve, caplog):
    """A server that offers no TLS (and would accept AUTH in clear) gets no password: with the
    default STARTTLS the connection stops at the missing STARTTLS; with TLS turned off a login
    is refused before connecting. Without a login, TLS off delivers."""
    box, port = serve("plain")
    login = {"CHARGEBACK_SMTP_USER": "alerts", "CHARGEBACK_SMTP_PASSWORD": "s3cret"}

    notify.send(LINE, _channels(port, host="127.0.0.1", **login))
    notify.send(LINE, _channels(port, host="127.0.0.1", CHARGEBACK_SMTP_TLS="none", **login))
    assert box.logins == []
    assert box.messages == []
    first, second = _warnings(caplog)
    assert "does not offer STARTTLS" in first
    assert (f"refused to log in to 127.0.0.1:{port} as alerts without TLS (CHARGEBACK_SMTP_TLS=none): the password"
            " would travel in clear") in second

    notify.send(LINE, _channels(port, host="127.0.0.1", CHARGEBACK_SMTP_TLS="none"))
    assert [(m["Subject"], tls) for _, m, tls in box.messages] == [(LINE, False)]


def test_tls_settings_from_the_environment(caplog):
    assert _channels(25).smtp_tls == "starttls"
    assert _channels(25, CHARGEBACK_SMTP_STARTTLS="false").smtp_tls == "none"  # the older switch, said explicitly
    assert _channels(25, CHARGEBACK_SMTP_TLS="SSL").smtp_tls == "ssl"
    bad = _channels(_free_port(), CHARGEBACK_SMTP_TLS="maybe")
    notify.send(LINE, bad)  # never raises: logged
    assert "CHARGEBACK_SMTP_TLS must be one of starttls, ssl, none, got 'maybe'" in _warnings(caplog)[0]
