"""A real SMTP server (aiosmtpd) on loopback that keeps every message it receives.

Tests can make it refuse mail (a 4xx/5xx reply to DATA), take it down (the port is
closed, connections are refused) and bring it back on the same port, require AUTH, and
speak STARTTLS or implicit TLS with a throw-away self-signed certificate.

    from support.smtp import smtp_server   # fixture; or SmtpServer() directly

Twisted mail code runs on the global reactor in a daemon thread (``reactor_thread()``), and
``start_notifier_in(reactor, notifier)`` configures a notifier service the way Buildbot
does (the email tests' fixtures and benchmarks/fault_smtp_outage.py use both).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from support.buildbot_harness import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage = field(repr=False)
    authenticated_as: str | None = None


def self_signed_cert(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A certificate for ``host`` and 127.0.0.1 (``cert.pem``, ``key.pem``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Handler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_DATA(self, smtp_server, session, envelope):
        srv = self.server
        with srv._lock:
            srv.attempts += 1
            if srv.refuse_with:
                return srv.refuse_with
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            login = getattr(session, "auth_data", None)
            srv.messages.append(Received(
                envelope.mail_from, list(envelope.rcpt_tos), envelope.content, msg,
                login if isinstance(login, str) else None))
            srv._arrived.notify_all()
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1; ``messages`` holds what it accepted, parsed with policy.default."""

    def __init__(self, *, user: str | None = None, password: str | None = None,
                 tls: str = "none", port: int | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user, self.password, self.tls = user, password, tls
        self.messages: list[Received] = []
        self.auth_attempts: list[str] = []
        self.attempts = 0
        self.refuse_with: str | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._controller: Controller | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="easeml-smtp-")
        self.cert_path: Path | None = None
        if tls != "none":
            self.cert_path, self.key_path = self_signed_cert(Path(self._dir.name))

    # -- lifecycle
    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
        self.auth_attempts.append(f"{mechanism}:{login}")
        ok = (isinstance(auth_data, LoginPassword) and login == self.user
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def start(self) -> SmtpServer:
        kwargs: dict = {}
        if self.user:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.tls != "none",
                          auth_required=True)
        if self.tls != "none":
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert_path, self.key_path)
            if self.tls == "starttls":
                kwargs.update(tls_context=ctx, require_starttls=True)
            else:
                kwargs.update(ssl_context=ctx)
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                      server_hostname="localhost", **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def down(self) -> None:
        """Close the port: clients get 'connection refused'."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        if self._controller is None:
            self.start()

    def refuse(self, reply: str | None = "451 4.3.0 Try again later") -> None:
        """Answer DATA with ``reply`` (None: accept again)."""
        self.refuse_with = reply

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    # -- inspection
    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until ``count`` messages arrived (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} mails, got {len(self.messages)} in {timeout}s")
                self._arrived.wait(left)
            return list(self.messages)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def reactor_thread():
    """The global Twisted reactor, running in a daemon thread (started on first call)."""
    from twisted.internet import reactor as r

    if not r.running:
        threading.Thread(target=r.run, kwargs={"installSignalHandlers": False},
                         daemon=True, name="twisted-reactor").start()
        deadline = time.monotonic() + 10
        while not r.running and time.monotonic() < deadline:
            time.sleep(0.01)
    assert r.running, "the Twisted reactor did not start"
    return r


class _Consumer:
    def stopConsuming(self):
        from twisted.internet import defer

        return defer.succeed(None)


class LoopbackMaster:
    """What ``ReporterBase.reconfigService`` needs of a master: a reactor, an mq to subscribe
    to and, with ``settings``, the master's EasemlService (its ledger holds the outbox)."""

    def __init__(self, reactor, settings=None):
        from types import SimpleNamespace

        from easeml_buildbot.master.service import EasemlService

        self.reactor = reactor
        self.mq = self
        self.master = self  # services find their master through their parent
        self.service_manager = SimpleNamespace(
            namedServices={"easeml": EasemlService(settings)} if settings is not None else {})

    def startConsuming(self, callback, key):
        from twisted.internet import defer

        return defer.succeed(_Consumer())


def start_notifier_in(reactor, notifier, settings=None):
    """Configure a notifier service (``make_email_reporters``) in ``reactor`` as Buildbot
    would, on a master whose settings (and ledger) are ``settings``."""
    from twisted.internet.threads import blockingCallFromThread

    notifier.parent = LoopbackMaster(reactor, settings)
    blockingCallFromThread(reactor, notifier.reconfigService,
                           *notifier._config_args, **notifier._config_kwargs)
    return notifier


@pytest.fixture
def smtp_server():
    """A started ``SmtpServer`` (plain SMTP, no auth); stopped after the test."""
    with SmtpServer() as server:
        yield server
