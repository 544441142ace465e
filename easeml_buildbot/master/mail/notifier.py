"""The Buildbot half of mail: a report generator and the notifier service (a ``MailNotifier``).

``EasemlMailGenerator`` reacts to finished builds, reads their facts (``mail.facts``) and
plans the mails in a thread (``mail.plan``). ``EasemlMailNotifier`` stores each mail in the
outbox (``master.outbox``, a table in the ledger's database) before the first attempt; its
drain loop retries with backoff until the mail is delivered or expires, across restarts. An
SMTP outage is logged and never breaks a build or the master.

``sendMail`` is Buildbot's, changed where Buildbot 4.3's is unsafe for us: it verifies the
relay's certificate (Buildbot's SMTPS uses ``ClientContextFactory``, which verifies nothing),
honours ``timeout`` and makes no hidden retries (the outbox retries).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from io import BytesIO
from typing import Any

from buildbot.reporters.mail import MailNotifier
from buildbot.secrets.providers.base import SecretProviderBase
from twisted.internet import defer
from twisted.python import log as twlog

from easeml_buildbot.master import metrics
from easeml_buildbot.master.mail.facts import OutgoingMail, facts_from_build, failed_step_tail
from easeml_buildbot.master.mail.plan import plan_mails
from easeml_buildbot.master.mail.policy import MailPolicy, filter_recipients
from easeml_buildbot.master.settings import is_address

logger = logging.getLogger(__name__)

SMTP_PASSWORD_SECRET = "easeml_smtp_password"


DEFAULTS = dict(attempts=4, backoff=2.0, timeout=30.0, outbox_expiry=3 * 24 * 3600.0, outbox_max_backoff=600.0)


class EasemlMailGenerator:
    """Report generator: one finished build -> the planned easeml mails (``IReportGenerator``)."""

    wanted_event_keys = [("builds", None, "finished")]

    def __init__(self, policy: MailPolicy, builders: Sequence[str] | None = None):
        self.policy = policy
        self.builders = list(builders) if builders else None

    def __eq__(self, other: object) -> bool:  # Buildbot compares services on reconfig
        return type(other) is type(self) and (other.policy, other.builders) == (self.policy, self.builders)

    def __hash__(self) -> int:
        return hash((self.policy, tuple(self.builders or ())))

    def check(self) -> None:
        from buildbot import config

        if not isinstance(self.policy, MailPolicy):
            config.error(f"EasemlMailGenerator: policy must be a MailPolicy, not {type(self.policy).__name__}")
            return
        if self.builders is not None and not all(isinstance(b, str) for b in self.builders):
            config.error("EasemlMailGenerator: builders must be a list of names")
        if self.policy.operator and not is_address(self.policy.operator):
            config.error(f"operator_email: {self.policy.operator!r} is not an email address")
        if not is_address(self.policy.sender):
            config.error(f"smtp.from_addr: {self.policy.sender!r} is not an email address")

    def generate_name(self) -> str:
        return "EasemlMailGenerator" + ("_" + "+".join(self.builders) if self.builders else "")

    @defer.inlineCallbacks
    def generate(self, master, reporter, key, build):
        from buildbot.reporters import utils
        from twisted.internet import threads

        yield utils.getDetailsForBuild(master, build, want_properties=True)
        props = build.get("properties") or {}
        name = (build.get("builder") or {}).get("name")
        if self.builders is not None:
            if name not in self.builders:
                return None
        elif not any(k.startswith("easeml_") for k in props):
            return None  # not an easeml build
        users = yield reporter.getResponsibleUsersForBuild(master, build["buildid"])
        url = utils.getURLForBuild(master, build["builder"]["builderid"], build["number"])
        facts = facts_from_build(build, url, users, self.policy)
        if facts.infra or facts.key_problem:
            try:
                step, tail = yield failed_step_tail(master, build["buildid"])
                facts = dataclasses.replace(facts, failed_step=step, log_tail=tail)
            except Exception as exc:  # noqa: BLE001  (the mail goes out without the tail)
                logger.warning("easeml email: cannot read the failed step's log: %s", exc)
        from easeml_buildbot.master.service import easeml_service

        svc = easeml_service(master)
        mails = yield threads.deferToThreadPool(
            master.reactor, master.reactor.getThreadPool(),
            lambda: plan_mails(facts, self.policy, led=svc.ledger() if self.policy.ledger_url else None))
        if not mails:
            return None
        owners, _ = filter_recipients(facts.owners, self.policy.allowed_domains)
        return {
            "body": "", "subject": mails[0].message["Subject"], "type": "html",
            "results": build["results"], "builds": [build], "buildset": build.get("buildset"),
            "users": [], "patches": [], "logs": [], "worker": None,
            "easeml_mails": mails,
            # the outbox records these as the use's ``notified`` once a mail to them is delivered
            "easeml_use_id": facts.use_id, "easeml_owners": owners,
        }


class EasemlMailNotifier(MailNotifier):
    """``MailNotifier`` that sends each planned mail on its own.

    With ``outbox`` (``make_email_reporters`` sets it when there is a ledger) each mail is
    stored in the outbox, a table in the master's ledger (``EasemlService.ledger``), and
    sent by the service's drain loop (``master.outbox``): retried with doubling delays from
    ``backoff`` up to ``outbox_max_backoff`` until delivered or ``outbox_expiry`` seconds old,
    across master restarts. Without it, ``deliver`` sends directly with ``attempts`` bounded
    retries (tests, tools).

    The SMTP password is a Buildbot secret (``secrets`` below): it is rendered when the
    service is configured and never written to a log or a mail.
    """

    name = "EasemlMailNotifier"

    def checkConfig(self, fromaddr, *, attempts=DEFAULTS["attempts"], backoff=DEFAULTS["backoff"],
                    timeout=DEFAULTS["timeout"], ca_file=None, outbox=False,
                    outbox_expiry=DEFAULTS["outbox_expiry"], outbox_max_backoff=DEFAULTS["outbox_max_backoff"],
                    **kwargs):
        """Every problem through ``config.error`` (``buildbot checkconfig`` lists them all),
        named by the ``[smtp]`` key of ``easeml.toml`` it comes from."""
        from buildbot import config

        def number(key, value, *, integer=False, minimum=0.0, strict=True):
            try:
                x = int(value) if integer else float(value)
            except (TypeError, ValueError):
                config.error(f"smtp.{key}: must be {'an integer' if integer else 'a number of seconds'}, "
                             f"not {value!r}")
                return
            if (x <= minimum) if strict else (x < minimum):
                config.error(f"smtp.{key}: must be {'>' if strict else '>='} {minimum:g}, not {value!r}")

        if not is_address(fromaddr):
            config.error(f"smtp.from_addr: {fromaddr!r} is not an email address")
        number("attempts", attempts, integer=True, minimum=1, strict=False)
        number("backoff", backoff, strict=False)
        number("timeout", timeout)
        if outbox:
            number("outbox_expiry", outbox_expiry)
            number("outbox_max_backoff", outbox_max_backoff)
        if ca_file:
            try:
                ssl.create_default_context(cafile=ca_file)
            except FileNotFoundError:
                config.error(f"smtp.ca_file: {ca_file}: no such file")
            except ssl.SSLError as exc:  # an OSError too: first
                config.error(f"smtp.ca_file: {ca_file}: not a PEM file of CA certificates ({exc.reason or exc})")
            except OSError as exc:
                config.error(f"smtp.ca_file: cannot read {ca_file}: {exc.strerror or exc}")
        super().checkConfig(fromaddr, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(self, fromaddr, *, attempts=DEFAULTS["attempts"], backoff=DEFAULTS["backoff"],
                        timeout=DEFAULTS["timeout"], ca_file=None, outbox=False,
                        outbox_expiry=DEFAULTS["outbox_expiry"],
                        outbox_max_backoff=DEFAULTS["outbox_max_backoff"], **kwargs):
        yield self._stop_outbox()
        self.ca_file = ca_file
        self.attempts = max(1, int(attempts))
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.delivered: list[tuple[str, tuple[str, ...]]] = []
        self.failed: list[tuple[str, tuple[str, ...], str]] = []
        yield super().reconfigService(fromaddr, **kwargs)
        self.outbox = None
        if outbox:
            from twisted.internet import threads

            from easeml_buildbot.master import outbox as ob
            from easeml_buildbot.master.service import easeml_service

            svc = easeml_service(self.master)

            def open_outbox():
                return ob.Outbox(svc.ledger(), expiry=outbox_expiry, backoff=self.backoff,
                                 max_backoff=outbox_max_backoff, lease=4 * self.timeout + 60)

            reactor = self.master.reactor
            self.outbox = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), open_outbox)
            self._drainer = ob.OutboxDrainer(
                self.outbox, self._send_queued, reactor=reactor,
                interval=min(max(self.backoff, 0.05), 5.0), log=twlog.msg,
                safe_reason=lambda exc: safe_reason(exc, self.smtpPassword))
            self._drainer.start()

    def _stop_outbox(self):
        drainer, self._drainer = getattr(self, "_drainer", None), None
        return drainer.stop() if drainer is not None else defer.succeed(None)

    @defer.inlineCallbacks
    def stopService(self):
        yield self._stop_outbox()
        yield super().stopService()

    @defer.inlineCallbacks
    def sendMessage(self, reports):
        for report in reports:
            mails = report.get("easeml_mails") or ()
            if getattr(self, "outbox", None) is not None:
                yield self.enqueue(report, mails)
                continue
            for mail in mails:
                yield self.deliver(mail)

    @defer.inlineCallbacks
    def enqueue(self, report, mails):
        """Store the report's mails in the outbox (before any attempt), then kick the drain."""
        from twisted.internet import threads

        builds = report.get("builds") or [{}]
        buildid = (builds[0] or {}).get("buildid")
        use_id = report.get("easeml_use_id")
        owners = {a.lower() for a in report.get("easeml_owners") or ()}
        reactor = self.master.reactor
        for i, mail in enumerate(mails):
            m = self._stamp(mail)
            notify = [r for r in mail.recipients if r.lower() in owners] if use_id is not None else []
            key = f"build:{buildid}:{i}:{mail.kind}" if buildid is not None else None
            try:
                mail_id = yield threads.deferToThreadPool(
                    reactor, reactor.getThreadPool(), lambda m=m, mail=mail, notify=notify, key=key:
                    self.outbox.enqueue(mail.kind, mail.recipients, m.as_string(), key=key,
                                        use_id=use_id, notify=notify))
            except Exception as exc:
                # the outbox lives in the ledger's database: when that is what broke (deleted,
                # down), the mail about it must still go out; sent now, retried in memory
                twlog.msg(f"easeml email: the outbox cannot store {mail.kind} mail '{m['Subject']}' "
                          f"({exc.__class__.__name__}); sending it directly")
                yield self.deliver(mail)
                continue
            if mail_id is not None:
                twlog.msg(f"easeml email: queued {mail.kind} mail #{mail_id} '{m['Subject']}' to "
                          f"{', '.join(mail.recipients)}")
        if self._drainer is not None:
            self._drainer.kick()

    def _send_queued(self, mail):
        """One SMTP attempt for an outbox mail (``OutboxDrainer``'s ``send``)."""
        return self.sendMail(mail.message, list(mail.recipients))

    def _stamp(self, mail: OutgoingMail) -> EmailMessage:
        m = mail.message
        for header in ("From", "To", "Date", "Message-ID"):
            del m[header]
        m["From"] = self.fromaddr
        m["To"] = ", ".join(mail.recipients)
        m["Date"] = formatdate(localtime=False)
        m["Message-ID"] = make_msgid(domain="easeml")
        return m

    @defer.inlineCallbacks
    def deliver(self, mail: OutgoingMail):
        """Send one mail; on failure retry with doubling delays, then log and give up."""
        from twisted.internet import task

        m = self._stamp(mail)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                yield self.sendMail(m, list(mail.recipients))
                twlog.msg(f"easeml email: sent {mail.kind} mail '{m['Subject']}' to "
                          f"{', '.join(mail.recipients)}")
                self.delivered.append((mail.kind, mail.recipients))
                return True
            except Exception as exc:  # noqa: BLE001  (SMTP errors of every kind)
                reason = safe_reason(exc, self.smtpPassword)
                metrics.SMTP_ERRORS.inc()
                if attempt < self.attempts:
                    metrics.SMTP_RETRIES.inc()
                    twlog.msg(f"easeml email: attempt {attempt}/{self.attempts} to send "
                              f"{mail.kind} mail failed ({reason}); retrying in {delay:g}s")
                    yield task.deferLater(self.master.reactor, delay, lambda: None)
                    delay *= 2
                else:
                    twlog.msg(f"easeml email: giving up on {mail.kind} mail "
                              f"'{m['Subject']}' to {', '.join(mail.recipients)} after "
                              f"{self.attempts} attempts: {reason}")
                    self.failed.append((mail.kind, mail.recipients, reason))
        return False

    def _tls_options(self):
        """Verify the relay's certificate against the system CAs, or ``ca_file``."""
        if not (self.useTls or self.useSmtps):
            return None
        from twisted.internet import ssl as tssl

        if self.ca_file:
            with open(self.ca_file, "rb") as fh:
                root = tssl.Certificate.loadPEM(fh.read())
            return tssl.optionsForClientTLS(self.relayhost, trustRoot=root)
        return tssl.optionsForClientTLS(self.relayhost)

    def sendMail(self, m, recipients):
        """``MailNotifier.sendMail`` with a verified certificate, a timeout and no hidden retries.

        ``m`` is an ``EmailMessage`` or the message's text (as stored in the outbox)."""
        from buildbot.util import unicode2bytes
        from twisted.internet import reactor
        from twisted.mail.smtp import ESMTPSenderFactory

        text = m if isinstance(m, str) else m.as_string()
        if self.dumpMailsToLog:  # pragma: no cover
            twlog.msg(f"mail data:\n{text}")
        result = defer.Deferred()
        use_auth = bool(self.smtpUser and self.smtpPassword)
        tls = self._tls_options()  # reads ca_file: once per mail, for STARTTLS and SMTPS alike
        factory = ESMTPSenderFactory(
            unicode2bytes(self.smtpUser) if self.smtpUser else None,
            unicode2bytes(self.smtpPassword) if self.smtpPassword else None,
            parseaddr(self.fromaddr)[1],
            [parseaddr(r)[1] for r in recipients],
            BytesIO(unicode2bytes(text)),
            result,
            retries=0,
            timeout=self.timeout,
            requireTransportSecurity=self.useTls,
            requireAuthentication=use_auth,
            hostname=self.relayhost if self.useTls or use_auth else None,
            contextFactory=tls,
        )
        r = getattr(self.master, "reactor", None) or reactor
        if self.useSmtps:
            r.connectSSL(self.relayhost, self.smtpPort, factory, tls)
        else:
            r.connectTCP(self.relayhost, self.smtpPort, factory, timeout=self.timeout)
        return result


def safe_reason(exc: BaseException, password: Any) -> str:
    """An exception as one log line, without the SMTP password."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    if isinstance(password, (str, bytes)) and password:
        secret = password.decode() if isinstance(password, bytes) else password
        text = text.replace(secret, "***")
    return text


class EasemlSettingsSecrets(SecretProviderBase):
    """Serves secrets read from the master's settings (the SMTP password) to Buildbot."""

    name = "EasemlSettingsSecrets"

    def checkConfig(self, values=None):
        pass

    def reconfigService(self, values=None):
        self._values = dict(values or {})

    def get(self, entry):
        return getattr(self, "_values", {}).get(entry)

    def __repr__(self) -> str:
        return "EasemlSettingsSecrets(***)"


def make_secrets_providers(settings: Any) -> list:
    """A Buildbot secrets provider serving the SMTP password as ``easeml_smtp_password``.

    ``configure`` adds it to ``c['secretsProviders']`` so the notifier receives the password
    the Buildbot way (``util.Secret``), rendered when the service starts and never logged.
    """
    if not settings.smtp.password:
        return []
    return [EasemlSettingsSecrets(values={SMTP_PASSWORD_SECRET: str(settings.smtp.password)})]


def make_email_reporters(settings: Any, c: dict | None = None, *,
                         builders: Sequence[str] | None = None) -> list:
    """The Buildbot reporters for easeml mail (added to ``c['services']`` by ``configure``).

    ``settings`` is the master's ``Settings`` (``[smtp]`` of ``easeml.toml``, validated there;
    unset tuning keys take the notifier's defaults). Empty when mail is disabled
    (``email_enabled = false`` or ``smtp.enabled = false``) or no SMTP host is set; a build
    never depends on mail. When ``c`` (the BuildmasterConfig being filled) is given, the SMTP
    password is registered as a Buildbot secret there and handed to the notifier as
    ``util.Secret``; otherwise the notifier holds it directly (it is still never logged).
    """
    smtp = settings.smtp
    if not smtp.host or not smtp.enabled or not settings.email_enabled:
        return []
    policy = MailPolicy.from_settings(settings)
    if not policy.allowed_domains:
        logger.warning("easeml email: allowed_email_domains is empty, no data scientist will get mail "
                       "(set it, or '*' to allow every domain)")
    password = smtp.password or None
    if password and c is not None:
        from buildbot.plugins import util

        providers = c.setdefault("secretsProviders", [])
        if not any(getattr(p, "name", None) == "EasemlSettingsSecrets" for p in providers):
            providers.extend(make_secrets_providers(settings))
        password = util.Secret(SMTP_PASSWORD_SECRET)
    tuning = {k: getattr(smtp, k) for k in DEFAULTS if getattr(smtp, k) is not None}
    return [EasemlMailNotifier(
        fromaddr=policy.sender,
        relayhost=smtp.host,
        smtpPort=smtp.port,
        useTls=smtp.tls == "starttls",
        useSmtps=smtp.tls == "ssl",
        smtpUser=smtp.user or None,
        smtpPassword=password,
        sendToInterestedUsers=False,
        generators=[EasemlMailGenerator(policy, builders)],
        ca_file=smtp.ca_file or None,
        outbox=bool(policy.ledger_url),
        **tuning,
    )]
