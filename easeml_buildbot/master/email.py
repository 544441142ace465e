"""Email reports: verdicts to owners, the allowed part to PR authors, test-set and operator mail.

Under adaptivity ``none`` email is the only place a verdict is shown, so the mail is a
first-class report, built on Buildbot's reporter machinery: ``EasemlMailNotifier`` is a
``MailNotifier`` (SMTP, STARTTLS/SMTPS, user and password rendered from Buildbot secrets)
fed by ``EasemlMailGenerator``, which reacts to finished builds.

The module has two halves:

* a pure half (``plan_mails`` and the ``*_mail`` composers) that turns the facts of one
  build plus the ledger into ready ``EmailMessage`` objects with their recipients. It runs
  in a thread (ledger reads, matplotlib) and is tested without Buildbot;
* a Buildbot half (generator + notifier) that gathers the facts from the build's
  properties, and puts every mail in the outbox (``master.outbox``, a table in the ledger's
  database) before the first attempt; the notifier service drains it, retrying with backoff
  until the mail is delivered or expires, across restarts. An SMTP outage is logged and
  never breaks a build or the master; owners are recorded as ``notified`` on delivery.

Who may receive what:

* recipients come only from the base branch's ``.easeml.yml`` (``email:``, passed by the
  build as the ``easeml_email`` property, or recorded in the ledger), filtered by the
  operator's ``allowed_email_domains``; a pull request cannot add anyone;
* owners get the full verdict (estimates, intervals, chart, uses left);
* the PR author (when enabled) gets only what ``custody.policy.developer_may_see`` allows:
  the pass/fail outcome, never estimates or intervals;
* the operator gets service-side failures; data scientists get a short note about them.

Mails never contain labels, predictions, per-sample data or key material: only the
aggregate numbers of the verdict, which are rendered field by field (never a JSON dump).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from io import BytesIO
from typing import Any

import jinja2
from buildbot.reporters.mail import MailNotifier
from buildbot.secrets.providers.base import SecretProviderBase
from twisted.internet import defer
from twisted.python import log as twlog

from easeml_buildbot.custody.policy import developer_may_see
from easeml_buildbot.master import chart as chart_module
from easeml_buildbot.master import ledger_for, metrics
from easeml_buildbot.master.status import build_properties

logger = logging.getLogger(__name__)


def _warn(fmt: str, *args: Any) -> None:
    """Python logging; in the master it lands in twistd.log like Buildbot's own messages."""
    logger.warning(fmt, *args)

SUBJECT_PREFIX = "[easeml]"
DEFAULT_DATASET = "data/test.csv.gpg"
DEFAULT_PUBLIC_KEY = "easeml_pub.asc"
#: easeml_status values (set by the master's build, see TEAM.md) that mean "no verdict,
#: the data scientists' side": a short note to owners (and author) naming the cause.
NO_VERDICT_STATUSES = ("config_error", "model_error", "missing_dataset", "protected_changed")
STATUS_TITLES = {
    "config_error": "configuration error",
    "model_error": "the model failed",
    "missing_dataset": "no test set",
    "protected_changed": "protected files changed",
    "infra_error": "service-side failure",
    "exhausted": "test set exhausted",
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MailPolicy:
    """What the operator decided about mail (from ``Settings``; see ``from_settings``)."""

    sender: str = "easeml-ci@localhost"
    operator: str | None = None
    allowed_domains: tuple[str, ...] = ()
    ledger_url: str | None = None
    notify_author: bool = True
    public_key: str = DEFAULT_PUBLIC_KEY
    buildbot_url: str | None = None
    web_url: str = "https://github.com"

    @classmethod
    def from_settings(cls, settings: Any) -> MailPolicy:
        smtp = _get(settings, "smtp", {}) or {}
        domains = _get(settings, "allowed_email_domains", ()) or ()
        if isinstance(domains, str):
            domains = [d for d in re.split(r"[\s,]+", domains) if d]
        return cls(
            sender=str(_get(smtp, "from_addr", None) or cls.sender),
            operator=_get(settings, "operator_email", None) or None,
            allowed_domains=tuple(str(d).lower().lstrip("@") for d in domains),
            ledger_url=_get(settings, "ledger_url", None),
            notify_author=bool(_get(settings, "email_pr_author", True)),
            buildbot_url=_get(settings, "buildbot_url", None),
            web_url=_web_url(settings),
        )


@dataclass(frozen=True)
class SmtpTransport:
    """SMTP delivery. ``password`` may be a Buildbot ``Secret`` (rendered by the service)."""

    host: str = "localhost"
    port: int = 25
    tls: str = "none"  # 'none' | 'starttls' | 'ssl'
    user: Any = None
    password: Any = None
    timeout: float = 30.0
    attempts: int = 4
    backoff: float = 2.0  # first delay in seconds; doubles each attempt
    ca_file: str | None = None  # PEM of a private CA that signs the relay's certificate
    outbox_expiry: float = 3 * 24 * 3600.0  # seconds a queued mail is retried before it is dropped
    outbox_max_backoff: float = 600.0  # longest delay between two attempts of one queued mail

    @classmethod
    def from_settings(cls, settings: Any) -> SmtpTransport:
        """From ``Settings.smtp`` (``EASEML_SMTP_*`` overrides already applied): ``tls`` true
        means STARTTLS, or SMTPS on port 465; ``"starttls"``/``"ssl"``/``"none"`` too."""
        from easeml_buildbot.master.settings import tls_mode

        smtp = _get(settings, "smtp", {}) or {}
        port = int(_get(smtp, "port", 25) or 25)
        return cls(
            host=str(_get(smtp, "host", cls.host)),
            port=port,
            tls=tls_mode(_get(smtp, "tls", False), port, _get(settings, "source", "settings")),
            user=_get(smtp, "user", None) or None,
            password=_get(smtp, "password", None) or None,
            timeout=float(_get(smtp, "timeout", None) or cls.timeout),
            attempts=max(1, int(_get(smtp, "attempts", None) or cls.attempts)),
            backoff=float(_get(smtp, "backoff", None) or cls.backoff),
            ca_file=_get(smtp, "ca_file", None) or None,
            outbox_expiry=float(_get(smtp, "outbox_expiry", None) or cls.outbox_expiry),
            outbox_max_backoff=float(_get(smtp, "outbox_max_backoff", None) or cls.outbox_max_backoff),
        )

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return (f"SmtpTransport(host={self.host!r}, port={self.port}, tls={self.tls!r}, "
                f"user={self.user!r}, password={'***' if self.password else None})")


def _web_url(settings: Any) -> str:
    """github.com for api.github.com; ``https://host`` for GitHub Enterprise's ``/api/v3``."""
    api = str(_get(_get(settings, "github", None), "api_url", "") or "")
    m = re.match(r"(https?://)([^/]+)(/api/v3)?/?$", api)
    if not m or m.group(2) == "api.github.com":
        return "https://github.com"
    return m.group(1) + m.group(2)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


# --------------------------------------------------------------------------- recipients


def address_allowed(address: str, allowed_domains: Sequence[str]) -> bool:
    """True when the address's domain is an allowed domain or a subdomain of one.

    ``"*"`` allows every domain; an empty allow-list allows none (fail closed).
    """
    _, addr = parseaddr(address)
    if "@" not in addr or addr.count("@") != 1:
        return False
    domain = addr.rsplit("@", 1)[1].lower().rstrip(".")
    if not domain or not re.fullmatch(r"[a-z0-9.-]+", domain):
        return False
    for allowed in allowed_domains:
        allowed = allowed.lower().lstrip("@").rstrip(".")
        if allowed == "*" or domain == allowed or domain.endswith("." + allowed):
            return True
    return False


def filter_recipients(addresses: Iterable[str], allowed_domains: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: bare, de-duplicated addresses, in first-seen order."""
    kept: list[str] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for _, addr in getaddresses([a for a in addresses if isinstance(a, str)]):
        addr = addr.strip()
        if not addr or addr.lower() in seen:
            continue
        seen.add(addr.lower())
        (kept if address_allowed(addr, allowed_domains) else dropped).append(addr)
    return kept, dropped


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class BuildFacts:
    """What a finished build tells the mailer (all non-secret build properties)."""

    repo: str
    sha: str = ""
    status: str | None = None  # easeml_status
    results: int | None = None  # Buildbot results code
    pr_number: int | None = None
    pr_url: str | None = None
    branch: str | None = None
    build_url: str | None = None
    dataset_id: str | None = None
    use_id: Any = None
    cause: str | None = None
    kind: str | None = None  # the typed outcome's cause kind (master/outcome.py)
    owners: tuple[str, ...] = ()
    author: str | None = None
    worker: str | None = None
    builder: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    failed_step: str | None = None  # operator mail: the step that broke and its log's tail
    log_tail: str | None = None

    @property
    def short_sha(self) -> str:
        return self.sha[:7] if self.sha else "unknown"


@dataclass(frozen=True)
class Evaluation:
    """The owner-visible facts of one scored use (from the ledger)."""

    outcome: str
    raw: str | None
    condition: str | None
    mode: str | None
    reliability: float | None
    adaptivity: str | None
    steps: int | None
    estimates: Mapping[str, float | None]
    intervals: Mapping[str, tuple[float, float] | None]
    samples_used: int | None
    use_number: int | None
    budget: int | None
    uses_left: int | None
    retired: bool = False
    retired_reason: str | None = None
    dataset: str = DEFAULT_DATASET
    samples_needed: int | None = None  # labelled samples the condition needs (next test set)


@dataclass(frozen=True)
class OutgoingMail:
    kind: str  # 'evaluation' | 'author' | 'exhaustion' | 'operator' | 'note'
    recipients: tuple[str, ...]
    message: EmailMessage


# --------------------------------------------------------------------------- templates

_HTML = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                           undefined=jinja2.StrictUndefined)
_TEXT = jinja2.Environment(autoescape=False, trim_blocks=True, lstrip_blocks=True,
                           undefined=jinja2.StrictUndefined, keep_trailing_newline=True)

_STYLE = ("font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:14px;"
          "color:#1f2328;max-width:680px")
_BADGE = {"pass": "#1a7f37", "fail": "#cf222e"}

_HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="{{ style }}">
"""
_HTML_LINKS = """<p>
{% if f.pr_url %}<a href="{{ f.pr_url }}">Pull request{% if f.pr_number %} #{{ f.pr_number }}{% endif %}</a>{% endif %}
{% if f.pr_url and f.build_url %} &middot; {% endif %}
{% if f.build_url %}<a href="{{ f.build_url }}">Buildbot build</a>{% endif %}
</p>
"""

_TEXT_LINKS = """{% if f.pr_url %}Pull request: {{ f.pr_url }}
{% endif %}
{% if f.build_url %}Build:        {{ f.build_url }}
{% endif %}
"""

EVALUATION_HTML = _HTML_HEAD + """<h2 style="margin:0 0 8px 0">{{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %}
 <span style="font-family:monospace">{{ f.short_sha }}</span>:
<span style="color:#fff;background:{{ badge }};padding:2px 8px;border-radius:4px">{{ e.outcome|upper }}</span></h2>
{% if e.raw == 'unknown' %}
<p>The estimate was within the tolerance of the threshold (raw verdict: unknown); mode
<code>{{ e.mode }}</code> resolves it to <b>{{ e.outcome }}</b>.</p>
{% endif %}
<table cellpadding="4" style="border-collapse:collapse">
<tr><td>Condition</td><td><code>{{ e.condition or 'unknown' }}</code></td></tr>
<tr><td>Mode</td><td>{{ e.mode or 'unknown' }}</td></tr>
<tr><td>Reliability</td><td>{{ fmt_rel(e.reliability) }}</td></tr>
<tr><td>Adaptivity</td><td>{{ e.adaptivity or 'unknown' }}{% if e.steps %} (H = {{ e.steps }} uses){% endif %}</td></tr>
<tr><td>Samples used</td><td>{{ e.samples_used if e.samples_used is not none else 'unknown' }}</td></tr>
<tr><td>Use of the test set</td><td>{{ uses_text }}</td></tr>
</table>
<h3 style="margin:16px 0 4px 0">Estimates</h3>
<table cellpadding="4" style="border-collapse:collapse;border:1px solid #d0d7de">
<tr style="background:#f6f8fa"><th align="left">variable</th><th align="right">estimate</th><th align="left">interval</th></tr>
{% for name, label, est, ivl in rows %}
<tr><td><code>{{ name }}</code> ({{ label }})</td><td align="right">{{ est }}</td><td>{{ ivl }}</td></tr>
{% endfor %}
</table>
{% if cid %}
<p><img src="cid:{{ cid }}" alt="Estimates of n, o, d over the uses of this test set, with intervals and the threshold" width="640" style="max-width:100%"></p>
{% endif %}
""" + _HTML_LINKS + """{% if e.retired or e.uses_left == 0 %}
<p><b>This test set is now {{ 'retired' if e.retired else 'exhausted' }}.</b> A separate mail explains how to provide a new one.</p>
{% endif %}
<p style="color:#656d76;font-size:12px">You receive this because your address is in <code>email:</code> of
<code>.easeml.yml</code> on the base branch of {{ f.repo }}. Estimates are for the repository owners:
under adaptivity <code>{{ e.adaptivity }}</code> do not share them with the pull request's author.</p>
</body></html>
"""

EVALUATION_TEXT = """{{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %} {{ f.short_sha }}: {{ e.outcome|upper }}
{% if e.raw == 'unknown' %}
(raw verdict unknown: the estimate was within the tolerance; mode {{ e.mode }} resolves it to {{ e.outcome }})
{% endif %}

Condition:      {{ e.condition or 'unknown' }}
Mode:           {{ e.mode or 'unknown' }}
Reliability:    {{ fmt_rel(e.reliability) }}
Adaptivity:     {{ e.adaptivity or 'unknown' }}{% if e.steps %} (H = {{ e.steps }} uses){% endif %}

Samples used:   {{ e.samples_used if e.samples_used is not none else 'unknown' }}
Test set use:   {{ uses_text }}

Estimates:
{% for name, label, est, ivl in rows %}
  {{ name }} = {{ est }}  interval {{ ivl }}  ({{ label }})
{% endfor %}

""" + _TEXT_LINKS + """{% if e.retired or e.uses_left == 0 %}

This test set is now {{ 'retired' if e.retired else 'exhausted' }}. A separate mail explains how to provide a new one.
{% endif %}

-- 
You receive this because your address is in email: of .easeml.yml on the base branch of {{ f.repo }}.
Estimates are for the repository owners: under adaptivity {{ e.adaptivity }} do not share them
with the pull request's author.
"""

AUTHOR_HTML = _HTML_HEAD + """<h2 style="margin:0 0 8px 0">{{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %}
 <span style="font-family:monospace">{{ f.short_sha }}</span>:
<span style="color:#fff;background:{{ badge }};padding:2px 8px;border-radius:4px">{{ outcome|upper }}</span></h2>
<p>Your change was evaluated against the repository's condition
<code>{{ condition or 'unknown' }}</code> on its hidden test set: <b>{{ outcome }}</b>.</p>
<p>Only the outcome is shared with authors: estimates stay with the repository owners so the
test set can be reused without overfitting to it.</p>
""" + _HTML_LINKS + """</body></html>
"""

AUTHOR_TEXT = """{{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %} {{ f.short_sha }}: {{ outcome|upper }}

Your change was evaluated against the repository's condition
  {{ condition or 'unknown' }}
on its hidden test set: {{ outcome }}.

Only the outcome is shared with authors: estimates stay with the repository owners so the
test set can be reused without overfitting to it.

""" + _TEXT_LINKS

EXHAUSTION_HTML = _HTML_HEAD + """<h2 style="margin:0 0 8px 0">{{ f.repo }}: {{ 'there is no test set yet' if state == 'missing' else 'the test set is ' + state + ', a new one is needed' }}</h2>
<p>{{ why }}</p>
<p>Pull requests are not evaluated until a new test set is on the base branch.
For the current condition <code>{{ condition or 'unknown' }}</code> (reliability {{ fmt_rel(reliability) }},
adaptivity {{ adaptivity or 'unknown' }}{% if steps %}, H = {{ steps }}{% endif %}) the new test set needs
<b>{{ samples if samples is not none else 'an unknown number of' }} labelled samples</b>{% if samples_note %} ({{ samples_note }}){% endif %}.</p>
<p>Encrypt it with the service's public key and commit it to the base branch:</p>
<pre style="background:#f6f8fa;padding:8px;border-radius:4px">{{ commands }}</pre>
<p>Keep the plain file <code>{{ plain }}</code> out of the repository. The service decrypts the
test set only on its workers; models never see the labels.</p>
""" + _HTML_LINKS + """</body></html>
"""

EXHAUSTION_TEXT = """{{ f.repo }}: {{ 'there is no test set yet' if state == 'missing' else 'the test set is ' + state + ', a new one is needed' }}

{{ why }}

Pull requests are not evaluated until a new test set is on the base branch.
For the current condition {{ condition or 'unknown' }} (reliability {{ fmt_rel(reliability) }},
adaptivity {{ adaptivity or 'unknown' }}{% if steps %}, H = {{ steps }}{% endif %}) the new test set needs
{{ samples if samples is not none else 'an unknown number of' }} labelled samples{% if samples_note %} ({{ samples_note }}){% endif %}.

Encrypt it with the service's public key and commit it to the base branch:

{{ commands }}

Keep the plain file {{ plain }} out of the repository. The service decrypts the test set
only on its workers; models never see the labels.

""" + _TEXT_LINKS

OPERATOR_HTML = _HTML_HEAD + """<h2 style="margin:0 0 8px 0">Service-side failure: {{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %} {{ f.short_sha }}</h2>
<table cellpadding="4" style="border-collapse:collapse">
<tr><td>Status</td><td>{{ f.status or 'none' }} (Buildbot result: {{ result_name }})</td></tr>
<tr><td>Cause</td><td>{{ f.cause or 'not recorded; see the build log' }}</td></tr>
<tr><td>Builder</td><td>{{ f.builder or 'unknown' }}</td></tr>
<tr><td>Worker</td><td>{{ f.worker or 'unknown' }}</td></tr>
<tr><td>Test set</td><td><code>{{ f.dataset_id or 'unknown' }}</code></td></tr>
{% if f.failed_step %}<tr><td>Failed step</td><td>{{ f.failed_step }}</td></tr>{% endif %}
</table>
{% if f.log_tail %}
<p>End of its log:</p>
<pre style="background:#f6f8fa;padding:8px;border-radius:4px;white-space:pre-wrap">{{ f.log_tail }}</pre>
{% endif %}
<p>The data scientists were told that the evaluation could not run and that you were notified.</p>
""" + _HTML_LINKS + """</body></html>
"""

OPERATOR_TEXT = """Service-side failure: {{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %} {{ f.short_sha }}

Status:   {{ f.status or 'none' }} (Buildbot result: {{ result_name }})
Cause:    {{ f.cause or 'not recorded; see the build log' }}
Builder:  {{ f.builder or 'unknown' }}
Worker:   {{ f.worker or 'unknown' }}
Test set: {{ f.dataset_id or 'unknown' }}
{% if f.failed_step %}Failed step: {{ f.failed_step }}
{% endif %}
{% if f.log_tail %}

End of its log:
{{ f.log_tail }}
{% endif %}

The data scientists were told that the evaluation could not run and that you were notified.

""" + _TEXT_LINKS

NOTE_HTML = _HTML_HEAD + """<h2 style="margin:0 0 8px 0">{{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %}
 <span style="font-family:monospace">{{ f.short_sha }}</span>: not evaluated ({{ title }})</h2>
<p>{{ text }}</p>
""" + _HTML_LINKS + """</body></html>
"""

NOTE_TEXT = """{{ f.repo }}{% if f.pr_number %} #{{ f.pr_number }}{% endif %} {{ f.short_sha }}: not evaluated ({{ title }})

{{ text }}

""" + _TEXT_LINKS


def _fmt_rel(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:.6g} (failure probability {1 - value:.2g})"


def _fmt_num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _fmt_interval(value: Sequence[float] | None) -> str:
    if not value:
        return "n/a"
    return f"[{value[0]:.4f}, {value[1]:.4f}]"


def _render(env: jinja2.Environment, template: str, **ctx: Any) -> str:
    ctx.setdefault("fmt_rel", _fmt_rel)
    ctx.setdefault("style", _STYLE)
    return env.from_string(template).render(**ctx)


def _subject(facts: BuildFacts, what: str) -> str:
    where = facts.repo + (f" PR #{facts.pr_number}" if facts.pr_number else "")
    subject = f"{SUBJECT_PREFIX} {where} {facts.short_sha}: {what}"
    return re.sub(r"[\r\n]+", " ", subject)


def _message(subject: str, text: str, html: str, *, images: Sequence[tuple[str, bytes]] = ()) -> EmailMessage:
    """multipart/alternative (text, then HTML); images go inline in a multipart/related."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    if images:
        html_part = msg.get_payload()[1]
        for cid, png in images:
            html_part.add_related(png, maintype="image", subtype="png", cid=f"<{cid}>",
                                  filename="easeml-chart.png", disposition="inline")
    return msg


# --------------------------------------------------------------------------- composers

VARIABLE_LABELS = {"n": "new model accuracy", "o": "old model accuracy", "d": "predictions that differ"}


def evaluation_mail(facts: BuildFacts, ev: Evaluation, *, chart_png: bytes | None = None,
                    cid: str | None = None) -> EmailMessage:
    """The owners' mail: verdict, its parameters, estimates with intervals, chart, links."""
    if chart_png and not cid:
        cid = make_msgid(idstring="chart", domain="easeml")[1:-1]
    rows = []
    for name in ("n", "o", "d"):
        if name in ev.estimates or name in ev.intervals:
            rows.append((name, VARIABLE_LABELS[name], _fmt_num(ev.estimates.get(name)),
                         _fmt_interval(ev.intervals.get(name))))
    if ev.use_number is not None and ev.budget:
        uses_text = f"use {ev.use_number} of {ev.budget}, {ev.uses_left} left"
    elif ev.uses_left is not None:
        uses_text = f"{ev.uses_left} uses left"
    else:
        uses_text = "unknown"
    if ev.retired:
        uses_text += " (test set retired)"
    subject = _subject(facts, ev.outcome)
    ctx = dict(f=facts, e=ev, rows=rows, uses_text=uses_text, cid=cid if chart_png else None,
               badge=_BADGE.get(ev.outcome, "#6e7781"), subject=subject)
    return _message(subject, _render(_TEXT, EVALUATION_TEXT, **ctx),
                    _render(_HTML, EVALUATION_HTML, **ctx),
                    images=[(cid, chart_png)] if chart_png and cid else [])


def author_mail(facts: BuildFacts, outcome: str, condition: str | None) -> EmailMessage:
    """The PR author's mail: the outcome only (what ``developer_may_see`` allows)."""
    subject = _subject(facts, outcome)
    ctx = dict(f=facts, outcome=outcome, condition=condition, subject=subject,
               badge=_BADGE.get(outcome, "#6e7781"))
    return _message(subject, _render(_TEXT, AUTHOR_TEXT, **ctx), _render(_HTML, AUTHOR_HTML, **ctx))


def encrypt_commands(dataset: str = DEFAULT_DATASET, public_key: str = DEFAULT_PUBLIC_KEY,
                     plain: str = "test.csv") -> str:
    """The exact shell commands that encrypt a new test set and commit it."""
    return "\n".join([
        f"easeml dataset encrypt --key {public_key} {plain} {dataset}",
        f"git add {dataset}",
        'git commit -m "easeml: new test set"',
        "git push",
    ])


def exhaustion_mail(facts: BuildFacts, *, state: str, why: str, samples: int | None,
                    condition: str | None, reliability: float | None, adaptivity: str | None,
                    steps: int | None, dataset: str = DEFAULT_DATASET,
                    public_key: str = DEFAULT_PUBLIC_KEY, samples_note: str | None = None) -> EmailMessage:
    """Asks the owners for a new test set, with its size and the commands to commit it."""
    suffix = {".gpg": "", ".asc": ""}
    plain = dataset.rsplit("/", 1)[-1]
    for ext in suffix:
        if plain.endswith(ext):
            plain = plain[: -len(ext)]
    count = samples if samples is not None else "?"
    subject = (f"{SUBJECT_PREFIX} {facts.repo}: no test set yet, one with {count} samples is needed"
               if state == "missing" else
               f"{SUBJECT_PREFIX} {facts.repo}: test set {state}, a new one with {count} samples is needed")
    subject = re.sub(r"[\r\n]+", " ", subject)
    ctx = dict(f=facts, state=state, why=why, samples=samples, condition=condition,
               reliability=reliability, adaptivity=adaptivity, steps=steps, subject=subject,
               commands=encrypt_commands(dataset, public_key, plain), plain=plain,
               samples_note=samples_note)
    return _message(subject, _render(_TEXT, EXHAUSTION_TEXT, **ctx), _render(_HTML, EXHAUSTION_HTML, **ctx))


def operator_mail(facts: BuildFacts) -> EmailMessage:
    """Tells the operator a build broke on the service side (key, worker, ledger)."""
    from buildbot.process.results import statusToString

    result_name = statusToString(facts.results) if facts.results is not None else "unknown"
    subject = _subject(facts, f"service-side failure ({facts.cause or result_name})"[:160])
    ctx = dict(f=facts, result_name=result_name, subject=subject)
    return _message(subject, _render(_TEXT, OPERATOR_TEXT, **ctx), _render(_HTML, OPERATOR_HTML, **ctx))


def note_mail(facts: BuildFacts, title: str, text: str) -> EmailMessage:
    """A short 'not evaluated' note to data scientists."""
    subject = _subject(facts, f"not evaluated ({title})")
    ctx = dict(f=facts, title=title, text=text, subject=subject)
    return _message(subject, _render(_TEXT, NOTE_TEXT, **ctx), _render(_HTML, NOTE_HTML, **ctx))


# --------------------------------------------------------------------------- ledger


def _as_dict(record: Any) -> dict[str, Any]:
    """A ledger ``UseRecord``/``LedgerEntry`` (frozen dataclasses; None: no state) as a dict."""
    if record is None:
        return {}
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _result_of(use: Mapping[str, Any]) -> Mapping[str, Any]:
    """The use's ``result`` JSON (the ledger's JSON column gives a dict), or {} when none."""
    result = use.get("result")
    return result if isinstance(result, Mapping) else {}


def _lookup(key: str, *sources: Mapping[str, Any] | None) -> Any:
    for src in sources:
        if isinstance(src, Mapping) and src.get(key) is not None:
            return src[key]
    return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def read_ledger(ledger_url: str, repo: str, dataset_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The test set's uses (oldest first, as dicts with ``result`` parsed) and its state."""
    led = ledger_for(ledger_url)  # the master's own: no engine and schema check per mail
    uses = [_as_dict(u) for u in led.uses(repo, dataset_id)]
    for u in uses:
        u["result"] = _result_of(u)
    return uses, _as_dict(led.state(repo, dataset_id))


def evaluation_from(use: Mapping[str, Any], state: Mapping[str, Any],
                    config: Mapping[str, Any] | None = None) -> Evaluation:
    """Owner-visible facts of one ledger use: only named aggregate fields are read."""
    result = _result_of(use)
    verdict = chart_module.verdict_of(result)
    cfg = result.get("config") if isinstance(result.get("config"), Mapping) else {}
    sources = (verdict, result, cfg, config or {}, use, state)
    estimates = {k: _float(v) for k, v in (verdict.get("estimates") or {}).items()}
    intervals = {}
    for k, v in (verdict.get("intervals") or {}).items():
        try:
            intervals[k] = (float(v[0]), float(v[1]))
        except (TypeError, ValueError, IndexError):
            intervals[k] = None
    budget = _int(_lookup("budget", state, use) or _lookup("steps", *sources))
    use_number = _int(_lookup("use_number", use, result))
    left = _int(_lookup("remaining", use))
    if left is None and budget is not None and use_number is not None:
        left = max(0, budget - use_number)
    if left is None:
        left = _int(state.get("remaining"))
    outcome = str(_lookup("outcome", verdict) or use.get("verdict") or "unknown")
    condition = _lookup("condition_text", *sources) or _lookup("condition", *sources)
    return Evaluation(
        outcome=outcome,
        raw=_lookup("raw", verdict),
        condition=None if condition is None else str(condition),
        mode=_lookup("mode", *sources),
        reliability=_float(_lookup("reliability", *sources)),
        adaptivity=_lookup("adaptivity", *sources),
        steps=_int(_lookup("steps", *sources)),
        estimates=estimates,
        intervals=intervals,
        samples_used=_int(_lookup("samples_used", verdict, result, use)),
        use_number=use_number,
        budget=budget,
        uses_left=left,
        retired=bool(state.get("retired")),
        retired_reason=state.get("retired_reason"),
        dataset=str(_lookup("dataset", cfg, config or {}) or DEFAULT_DATASET),
        samples_needed=_int(_lookup("samples_needed", verdict, state, config or {})),
    )


def samples_needed(condition: str | None, reliability: float | None, adaptivity: str | None,
                   steps: int | None) -> int | None:
    """Labelled samples a new test set needs for the current condition (estimator)."""
    if not condition or reliability is None or not adaptivity or not steps:
        return None
    try:
        from easeml_buildbot.estimator.condition import parse_condition
        from easeml_buildbot.estimator.samples import sample_size

        s = sample_size(parse_condition(condition), reliability=reliability,
                        adaptivity=adaptivity, steps=steps)
        return int(s.labels)
    except Exception as exc:  # noqa: BLE001  (a mail must not fail over a hint)
        _warn("easeml email: cannot compute the sample size: %s", exc)
        return None


# --------------------------------------------------------------------------- planning


def _exhaustion(facts: BuildFacts, ev: Evaluation | None, policy: MailPolicy, owners: Sequence[str],
                config: Mapping[str, Any], *, missing: bool = False) -> OutgoingMail | None:
    if not owners:
        return None
    condition = (ev.condition if ev else None) or config.get("condition") or config.get("condition_text")
    reliability = (ev.reliability if ev else None) or _float(config.get("reliability"))
    adaptivity = (ev.adaptivity if ev else None) or config.get("adaptivity")
    steps = (ev.steps if ev else None) or _int(config.get("steps"))
    dataset = (ev.dataset if ev else None) or config.get("dataset") or DEFAULT_DATASET
    samples = (ev.samples_needed if ev else None) or _int(config.get("samples_needed"))
    if samples is None:
        samples = samples_needed(condition, reliability, adaptivity, steps)
    first_pass = bool(ev and adaptivity == "firstChange" and ev.outcome == "pass")
    spent = ev is None or ev.uses_left == 0
    if missing:
        state = "missing"
        why = (f"There is no encrypted test set at {dataset} on the base branch"
               f"{' (' + facts.cause + ')' if facts.cause else ''}, so pull requests cannot be evaluated.")
    elif first_pass or (ev is not None and ev.retired and not spent):
        state = "retired"
        why = ("Under adaptivity firstChange a test set is retired after its first pass: the "
               "pass was reported, so the same data cannot be trusted for the next change."
               if first_pass else
               f"The test set was retired ({ev.retired_reason or 'by the service policy'}).")
    else:
        state = "exhausted"
        used = f"all {ev.budget} uses" if ev and ev.budget else "all its uses"
        why = (f"The test set {('(' + facts.dataset_id[:12] + ') ') if facts.dataset_id else ''}"
               f"has spent {used}: more evaluations would void the reliability guarantee.")
    msg = exhaustion_mail(facts, state=state, why=why, samples=samples, condition=condition,
                          reliability=reliability, adaptivity=adaptivity, steps=steps,
                          dataset=str(dataset), public_key=policy.public_key)
    return OutgoingMail("exhaustion", tuple(owners), msg)


def plan_mails(facts: BuildFacts, policy: MailPolicy, *, ledger: Any = None) -> list[OutgoingMail]:
    """Every mail one finished build causes, with its recipients (blocking: run in a thread).

    ``ledger`` is ``(uses, state)`` when already read (tests); otherwise the ledger at
    ``policy.ledger_url`` is read for the build's ``easeml_use_id``.
    """
    from buildbot.process.results import CANCELLED, SKIPPED

    owners, dropped = filter_recipients(facts.owners, policy.allowed_domains)
    if dropped:
        _warn("easeml email: %d address(es) of %r not in the allowed domains, not mailed: %s",
                       len(dropped), facts.repo, ", ".join(dropped))
    config = dict(facts.config or {})
    mails: list[OutgoingMail] = []
    status = facts.status

    infra = _is_infra(facts)
    if facts.results in (CANCELLED, SKIPPED) and not infra:
        return []
    if infra:
        if policy.operator:
            mails.append(OutgoingMail("operator", (policy.operator,), operator_mail(facts)))
        if owners:
            text = ("The evaluation could not run because of a problem on the service side, not in "
                    "your change. The operator has been notified; push again or re-run the build "
                    "once it is fixed.")
            mails.append(OutgoingMail("note", tuple(owners),
                                      note_mail(facts, "service-side failure", text)))
        return mails

    if status in NO_VERDICT_STATUSES:
        cause = facts.cause or STATUS_TITLES[status]
        to = list(owners)
        title = STATUS_TITLES[status]
        if status == "missing_dataset":
            if _is_key_problem(facts):
                # the file is there but could not be decrypted or read: a wrong or missing
                # service key is the operator's problem, a wrong recipient key the owners'
                if policy.operator:
                    mails.append(OutgoingMail("operator", (policy.operator,), operator_mail(facts)))
                title = "the test set could not be read"
                cause = ("Either it was not encrypted to the service's public key, or the service's "
                         "key is unavailable on the worker (the operator has been notified). "
                         "Details: " + _WORKER_PATH.sub("<path on the worker>", cause))
            else:
                request = _exhaustion(facts, None, policy, owners, config, missing=True)
                if request:
                    mails.append(request)
                to = []
        if policy.notify_author and facts.author:
            kept, _ = filter_recipients([facts.author], policy.allowed_domains)
            to += [a for a in kept if a not in to]
        if to:
            mails.append(OutgoingMail("note", tuple(to), note_mail(facts, title, cause)))
        return mails

    if status == "exhausted":
        ev = None
        if policy.ledger_url and facts.dataset_id and ledger is None:
            try:
                uses, state = read_ledger(policy.ledger_url, facts.repo, facts.dataset_id)
                if uses:
                    ev = evaluation_from(uses[-1], state, config)
            except Exception as exc:  # noqa: BLE001
                _warn("easeml email: ledger unavailable for %r: %s", facts.repo, exc)
        mail = _exhaustion(facts, ev, policy, owners, config)
        return [mail] if mail else []

    if status != "evaluated":
        return []

    if ledger is None:
        if not policy.ledger_url or not facts.dataset_id:
            _warn("easeml email: no ledger or dataset id for %r, cannot report", facts.repo)
            return []
        try:
            ledger = read_ledger(policy.ledger_url, facts.repo, facts.dataset_id)
        except Exception as exc:  # noqa: BLE001  (logged; the build is long finished)
            _warn("easeml email: ledger unavailable for %r, no result mail: %s", facts.repo, exc)
            return []
    uses, state = ledger
    use = next((u for u in uses if str(u.get("use_id", u.get("id"))) == str(facts.use_id)), None)
    if use is None:
        _warn("easeml email: use %s of %r not in the ledger", facts.use_id, facts.repo)
        return []
    if not owners:
        # recipients recorded with the use (base-branch config at evaluation time)
        owners, _ = filter_recipients(use.get("notified") or (), policy.allowed_domains)
    ev = evaluation_from(use, state, config)
    if owners:
        # the history up to this use (a late report must not show later uses)
        scored = [u for u in uses if _result_of(u)
                  and (ev.use_number is None or (_int(u.get("use_number")) or 0) <= ev.use_number)]
        try:
            thresholds = chart_module.thresholds_from_condition(ev.condition) if ev.condition else ()
        except Exception as exc:  # noqa: BLE001  (a chart without threshold beats no chart)
            _warn("easeml email: cannot parse condition for the chart: %s", exc)
            thresholds = ()
        png = chart_module.render_chart(scored, thresholds, highlight=ev.use_number,
                                        title=f"{facts.repo}: test set {(facts.dataset_id or '')[:12]}")
        mails.append(OutgoingMail("evaluation", tuple(owners), evaluation_mail(facts, ev, chart_png=png)))
    if policy.notify_author and facts.author and ev.outcome in ("pass", "fail"):
        kept, _ = filter_recipients([facts.author], policy.allowed_domains)
        kept = [a for a in kept if a not in owners]
        if kept and developer_may_see(ev.adaptivity, ev.outcome):
            mails.append(OutgoingMail("author", tuple(kept), author_mail(facts, ev.outcome, ev.condition)))
    if ev.retired or ev.uses_left == 0:
        mail = _exhaustion(facts, ev, policy, owners, config)
        if mail:
            mails.append(mail)
    return mails


# --------------------------------------------------------------------------- Buildbot

_PR_REF = re.compile(r"refs/pull/(\d+)/")


def _prop(props: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in props and props[name] not in (None, ""):
            return props[name]
    return None


def facts_from_build(build: Mapping[str, Any], build_url: str | None, users: Sequence[str],
                     policy: MailPolicy) -> BuildFacts:
    """Read the easeml_* properties (and Buildbot's own) of a finished build."""
    props = build_properties(build)
    ss = ((build.get("buildset") or {}).get("sourcestamps") or [{}])[0] or {}
    branch = _prop(props, "branch") or ss.get("branch")
    pr = _prop(props, "easeml_pr")
    if pr is None and branch:
        m = _PR_REF.search(str(branch))
        pr = m.group(1) if m else None
    repo = str(_prop(props, "easeml_repo", "project") or ss.get("project") or "unknown")
    pr_number = _int(pr)
    pr_url = f"{policy.web_url}/{repo}/pull/{pr_number}" if pr_number is not None and "/" in repo else None
    owners = _prop(props, "easeml_email") or ()
    if isinstance(owners, str):
        owners = [a for a in re.split(r"[\s,;]+", owners) if a]
    author = _prop(props, "easeml_author_email")
    if author is None:
        emails = [u for u in users if isinstance(u, str) and "@" in parseaddr(u)[1]]
        author = emails[0] if emails else None
    config: dict[str, Any] = {}
    for prop, key in (("easeml_condition", "condition"), ("easeml_adaptivity", "adaptivity"),
                      ("easeml_reliability", "reliability"), ("easeml_steps", "steps"),
                      ("easeml_mode", "mode"), ("easeml_dataset_path", "dataset"),
                      ("easeml_samples_needed", "samples_needed"),
                      ("easeml_uses_left", "uses_left"), ("easeml_retired", "retired")):
        if props.get(prop) is not None:
            config[key] = props[prop]
    return BuildFacts(
        repo=repo,
        sha=str(_prop(props, "easeml_head_sha", "got_revision", "revision") or ss.get("revision") or ""),
        status=_prop(props, "easeml_status"),
        results=build.get("results"),
        pr_number=pr_number,
        pr_url=pr_url,
        branch=branch,
        build_url=build_url,
        dataset_id=_prop(props, "easeml_dataset_id"),
        use_id=_prop(props, "easeml_use_id"),
        cause=_prop(props, "easeml_cause"),
        kind=(props.get("easeml_outcome") or {}).get("kind") if isinstance(props.get("easeml_outcome"), dict) else None,
        owners=tuple(str(o) for o in owners),
        author=author,
        worker=_prop(props, "workername"),
        builder=(build.get("builder") or {}).get("name"),
        config=config,
    )


_PRIVATE_LINE = re.compile(r"-----(BEGIN|END) |(passphrase|password|secret)\s*[:=]", re.IGNORECASE)


@defer.inlineCallbacks
def failed_step_tail(master, buildid: int, lines: int = 20):
    """``(step name, last lines of its stdio)`` of a build's first failed step, for operators.

    Step logs are already visible in the Buildbot UI; lines that look like key material or
    credentials are dropped anyway.
    """
    from buildbot.process.results import SKIPPED, SUCCESS, WARNINGS

    steps = yield master.data.get(("builds", buildid, "steps"))
    failed = [s for s in steps or () if s.get("results") not in (None, SUCCESS, SKIPPED, WARNINGS)]
    if not failed:
        return None, None
    step = failed[0]
    logs = yield master.data.get(("steps", step["stepid"], "logs"))
    log = next((lg for lg in logs or () if lg.get("name") == "stdio"), None)
    if log is None:
        return step.get("name"), None
    content = yield master.data.get(("logs", log["logid"], "contents"))
    text = (content or {}).get("content") or ""
    out = []
    for line in text.splitlines()[-lines:]:
        if log.get("type") == "s" and line[:1] in ("o", "e", "h"):
            line = line[1:]
        if not _PRIVATE_LINE.search(line):
            out.append(line[:300])
    return step.get("name"), "\n".join(out) or None


_WORKER_PATH = re.compile(r"(?<![\w.:])/[^\s:'\"]+")


def _is_key_problem(facts: BuildFacts) -> bool:
    """The test set is there but could not be decrypted or read (service key, or wrong recipient)."""
    return facts.status == "missing_dataset" and facts.kind == "key"


def _is_infra(facts: BuildFacts) -> bool:
    from buildbot.process.results import EXCEPTION, RETRY

    return facts.status == "infra_error" or (facts.status is None and facts.results in (EXCEPTION, RETRY))


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

        if self.builders is not None and not all(isinstance(b, str) for b in self.builders):
            config.error("EasemlMailGenerator: builders must be a list of names")

    def generate_name(self) -> str:
        return "EasemlMailGenerator" + ("_" + "+".join(self.builders) if self.builders else "")

    @defer.inlineCallbacks
    def generate(self, master, reporter, key, build):
        from twisted.internet import threads

        from buildbot.reporters import utils

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
        if _is_infra(facts) or _is_key_problem(facts):
            try:
                step, tail = yield failed_step_tail(master, build["buildid"])
                facts = dataclasses.replace(facts, failed_step=step, log_tail=tail)
            except Exception as exc:  # noqa: BLE001  (the mail goes out without the tail)
                _warn("easeml email: cannot read the failed step's log: %s", exc)
        mails = yield threads.deferToThreadPool(
            master.reactor, master.reactor.getThreadPool(), plan_mails, facts, self.policy)
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

    With ``outbox_url`` (the ledger's URL; ``make_email_reporters`` passes it) each mail is
    stored in the outbox and sent by the service's drain loop (``master.outbox``): retried
    with doubling delays from ``backoff`` up to ``outbox_max_backoff`` until delivered or
    ``outbox_expiry`` seconds old, across master restarts. Without it, ``deliver`` sends
    directly with ``attempts`` bounded retries (tests, tools).

    The SMTP password is a Buildbot secret (``secrets`` below): it is rendered when the
    service is configured and never written to a log or a mail.
    """

    name = "EasemlMailNotifier"

    def checkConfig(self, fromaddr, *, attempts=4, backoff=2.0, timeout=30.0, ca_file=None,
                    outbox_url=None, outbox_expiry=3 * 24 * 3600.0, outbox_max_backoff=600.0,
                    **kwargs):
        from buildbot import config

        if outbox_url is not None and not (float(outbox_expiry) > 0 and float(outbox_max_backoff) > 0):
            config.error("EasemlMailNotifier: smtp.outbox_expiry and smtp.outbox_max_backoff must "
                         "be positive numbers of seconds")
        super().checkConfig(fromaddr, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(self, fromaddr, *, attempts=4, backoff=2.0, timeout=30.0, ca_file=None,
                        outbox_url=None, outbox_expiry=3 * 24 * 3600.0, outbox_max_backoff=600.0,
                        **kwargs):
        yield self._stop_outbox()
        self.ca_file = ca_file
        self.attempts = max(1, int(attempts))
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.delivered: list[tuple[str, tuple[str, ...]]] = []
        self.failed: list[tuple[str, tuple[str, ...], str]] = []
        yield super().reconfigService(fromaddr, **kwargs)
        self.outbox = None
        if outbox_url:
            from twisted.internet import threads

            from easeml_buildbot.master import outbox as ob

            def open_outbox():
                return ob.Outbox(ledger_for(outbox_url), expiry=outbox_expiry, backoff=self.backoff,
                                 max_backoff=outbox_max_backoff, lease=4 * self.timeout + 60)

            reactor = self.master.reactor
            self.outbox = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), open_outbox)
            self._drainer = ob.OutboxDrainer(
                self.outbox, self._send_queued, reactor=reactor,
                interval=min(max(self.backoff, 0.05), 5.0), log=twlog.msg,
                safe_reason=lambda exc: _safe_reason(exc, self.smtpPassword))
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
            mail_id = yield threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), lambda m=m, mail=mail, notify=notify, key=key:
                self.outbox.enqueue(mail.kind, mail.recipients, m.as_string(), key=key,
                                    use_id=use_id, notify=notify))
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
                reason = _safe_reason(exc, self.smtpPassword)
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
        """Like ``MailNotifier.sendMail`` but with a timeout and no hidden retries.

        ``m`` is an ``EmailMessage`` or the message's text (as stored in the outbox)."""
        from twisted.internet import reactor
        from twisted.mail.smtp import ESMTPSenderFactory

        from buildbot.util import unicode2bytes

        text = m if isinstance(m, str) else m.as_string()
        if self.dumpMailsToLog:  # pragma: no cover
            twlog.msg(f"mail data:\n{text}")
        result = defer.Deferred()
        use_auth = bool(self.smtpUser and self.smtpPassword)
        data = unicode2bytes(text)
        tls = self._tls_options()  # reads ca_file: once per mail, for STARTTLS and SMTPS alike
        factory = ESMTPSenderFactory(
            unicode2bytes(self.smtpUser) if self.smtpUser else None,
            unicode2bytes(self.smtpPassword) if self.smtpPassword else None,
            parseaddr(self.fromaddr)[1],
            [parseaddr(r)[1] for r in recipients],
            BytesIO(data),
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



def _safe_reason(exc: BaseException, password: Any) -> str:
    text = f"{type(exc).__name__}: {exc}"
    text = text.replace("\n", " ")[:300]
    if isinstance(password, (str, bytes)) and password:
        secret = password.decode() if isinstance(password, bytes) else password
        text = text.replace(secret, "***")
    return text


SMTP_PASSWORD_SECRET = "easeml_smtp_password"


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
    password = _get(_get(settings, "smtp", None), "password", None)
    if not password:
        return []
    return [EasemlSettingsSecrets(values={SMTP_PASSWORD_SECRET: str(password)})]


def make_email_reporters(settings: Any, c: dict | None = None, *,
                         builders: Sequence[str] | None = None) -> list:
    """The Buildbot reporters for easeml mail (added to ``c['services']`` by ``configure``).

    Empty when mail is disabled (``email_enabled = false`` or ``smtp.enabled = false``) or
    no SMTP host is set; a build never depends on mail. When ``c`` (the BuildmasterConfig
    being filled) is given, the SMTP password is registered as a Buildbot secret there
    (``make_secrets_providers``) and handed to the notifier as ``util.Secret``; otherwise
    the notifier holds it directly (it is still never logged or mailed).
    """
    smtp_section = _get(settings, "smtp", None)
    if not smtp_section or not _get(smtp_section, "host", None):
        return []
    if _get(smtp_section, "enabled", True) is False or _get(settings, "email_enabled", True) is False:
        return []
    policy = MailPolicy.from_settings(settings)
    if not policy.allowed_domains:
        _warn("easeml email: allowed_email_domains is empty, no data scientist will get mail "
                       "(set it, or '*' to allow every domain)")
    smtp = SmtpTransport.from_settings(settings)
    password = smtp.password
    if password and c is not None:
        from buildbot.plugins import util

        providers = c.setdefault("secretsProviders", [])
        if not any(getattr(p, "name", None) == "EasemlSettingsSecrets" for p in providers):
            providers.extend(make_secrets_providers(settings))
        password = util.Secret(SMTP_PASSWORD_SECRET)
    return [EasemlMailNotifier(
        fromaddr=policy.sender,
        relayhost=smtp.host,
        smtpPort=smtp.port,
        useTls=smtp.tls == "starttls",
        useSmtps=smtp.tls == "ssl",
        smtpUser=smtp.user,
        smtpPassword=password,
        sendToInterestedUsers=False,
        generators=[EasemlMailGenerator(policy, builders)],
        attempts=smtp.attempts,
        backoff=smtp.backoff,
        timeout=smtp.timeout,
        ca_file=smtp.ca_file,
        outbox_url=policy.ledger_url,
        outbox_expiry=smtp.outbox_expiry,
        outbox_max_backoff=smtp.outbox_max_backoff,
    )]


# --------------------------------------------------------------------------- docs example

EXAMPLE_HTML = "email-example.html"
EXAMPLE_CHART = "email-example-chart.png"


def example_mails() -> list[OutgoingMail]:
    """The owners' mail for a made-up repository's 6th use of an 8-use test set.

    Fixed numbers (not a run of the estimator), so docs/email-example.html only changes
    when the mail's rendering does; ``tests/email/test_docs_example.py`` checks that.
    """
    cond, half = "n - o > 0.02 +/- 0.01", 0.0152
    uses = []
    for i, (n, o, d) in enumerate([(0.861, 0.858, 0.031), (0.874, 0.858, 0.042), (0.869, 0.858, 0.037),
                                   (0.889, 0.858, 0.061), (0.884, 0.858, 0.055), (0.902, 0.874, 0.058)],
                                  start=1):
        diff = n - o
        outcome = "pass" if diff - 0.0061 > 0.02 - 0.01 else "fail"
        verdict = {
            "outcome": outcome, "raw": outcome, "mode": "fp-free", "condition": cond,
            "estimates": {"n": n, "o": o, "d": d},
            "intervals": {"n": [n - half, n + half], "o": [o - half, o + half],
                          "d": [max(0.0, d - 0.0098), d + 0.0098]},
            "samples_used": 11_800, "samples_needed": 11_800, "reliability": 0.9999,
            "adaptivity": "full", "steps": 8,
            "clauses": [{"index": 0, "clause": cond, "estimate": diff,
                         "interval": [diff - 0.0061, diff + 0.0061], "outcome": outcome,
                         "technique": "bennett", "samples": 11_800}],
        }
        uses.append({"id": 40 + i, "use_number": i, "verdict": outcome,
                     "result": {"status": "scored", "verdict": verdict, "samples_used": 11_800}})
    state = {"budget": 8, "remaining": 2, "retired": False, "retired_reason": None}
    facts = BuildFacts(repo="acme/churn-model", sha="4f2c9e1b7d0a35c68e9f1a2b3c4d5e6f70819a2b",
                       status="evaluated", results=0, pr_number=128,
                       pr_url="https://github.com/acme/churn-model/pull/128",
                       build_url="https://ci.example.com/#/builders/1/builds/311",
                       dataset_id="9b1de3" + "0" * 58, use_id=46,
                       owners=("ml-leads@example.com",), author="dev@example.com")
    policy = MailPolicy(sender="easeml-ci@example.com", allowed_domains=("example.com",))
    return plan_mails(facts, policy, ledger=(uses, state))


def write_example(directory: str) -> tuple[str, str]:
    """Write the owners' example mail as HTML (chart as a file next to it) into ``directory``."""
    from pathlib import Path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    msg = example_mails()[0].message
    html = msg.get_body(("html",)).get_content()
    png_part = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    cid = png_part["Content-ID"].strip("<>")
    html = html.replace(f"cid:{cid}", EXAMPLE_CHART)
    (out / EXAMPLE_HTML).write_text(html)
    (out / EXAMPLE_CHART).write_bytes(png_part.get_content())
    return str(out / EXAMPLE_HTML), str(out / EXAMPLE_CHART)


if __name__ == "__main__":  # python -m easeml_buildbot.master.email docs/
    import sys

    for path in write_example(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(path)
