"""Mail rendering: the Jinja2 templates (package data, ``mail/templates/``) to ``EmailMessage``.

Every mail is ``multipart/alternative`` (plain text, then HTML); the owners' HTML part sits in
a ``multipart/related`` with the chart as an inline PNG referenced by ``cid:``. HTML templates
(``*.html``) are autoescaped; text templates (``*.txt``) are not. Undefined names are errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import jinja2
from markupsafe import Markup, escape

from easeml_buildbot.master import rotation
from easeml_buildbot.master.mail.facts import DEFAULT_DATASET, BuildFacts, Evaluation
from easeml_buildbot.master.mail.policy import DEFAULT_PUBLIC_KEY

SUBJECT_PREFIX = "[easeml]"
BADGE = {"pass": "#1a7f37", "fail": "#cf222e"}
CLAUSE_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "unknown": "#6e7781"}


def _rel(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:.6g} (failure probability {1 - value:.2g})"


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not estimated"
    return f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def _short(value: float) -> str:
    return f"{value:g}"


def _interval(value: Sequence[float] | None) -> str:
    if not value:
        return "none"
    return f"[{value[0]:.4f}, {value[1]:.4f}]"


def _count(value: int | None) -> str:
    return "unknown" if value is None else str(value)  # as `easeml samples` prints it


def _md_code(text: str) -> Markup:
    """Markdown backticks as <code> (the rotation text is Markdown), everything else escaped."""
    parts = str(text).split("`")
    return Markup("").join(escape(p) if i % 2 == 0 else Markup("<code>") + escape(p) + Markup("</code>")
                           for i, p in enumerate(parts))


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("easeml_buildbot.master.mail", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)
ENV.filters.update(rel=_rel, num=_num, signed=_signed, short=_short, interval=_interval, count=_count,
                   md_code=_md_code)
ENV.globals.update(colours=CLAUSE_COLOURS)


def render(name: str, **ctx: Any) -> tuple[str, str]:
    """``(text, html)`` of template ``name`` (``name.txt`` and ``name.html``)."""
    return ENV.get_template(f"{name}.txt").render(**ctx), ENV.get_template(f"{name}.html").render(**ctx)


def subject_for(facts: BuildFacts, what: str) -> str:
    where = facts.repo + (f" PR #{facts.pr_number}" if facts.pr_number else "")
    return re.sub(r"[\r\n]+", " ", f"{SUBJECT_PREFIX} {where} {facts.short_sha}: {what}")


def message(subject: str, text: str, html: str, *, images: Sequence[tuple[str, bytes]] = ()) -> EmailMessage:
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


def _rotation_ctx(dataset: str, public_key: str, samples: int | None) -> dict[str, Any]:
    return dict(rotation=rotation.rotation_steps(dataset, public_key=public_key, samples=samples),
                rotation_text=rotation.rotation_text(dataset, public_key=public_key, samples=samples,
                                                     markdown=False))


# --------------------------------------------------------------------------- the mails


def evaluation_mail(facts: BuildFacts, ev: Evaluation, *, chart_png: bytes | None = None,
                    cid: str | None = None, public_key: str = DEFAULT_PUBLIC_KEY) -> EmailMessage:
    """The owners' mail: verdict, the clause table, what it guarantees, estimates, chart, links."""
    if chart_png and not cid:
        cid = make_msgid(idstring="chart", domain="easeml")[1:-1]
    if ev.use_number is not None and ev.budget:
        uses_text = f"use {ev.use_number} of {ev.budget}, {ev.uses_left} left"
    elif ev.uses_left is not None:
        uses_text = f"{ev.uses_left} uses left"
    else:
        uses_text = "unknown"
    if ev.retired:
        uses_text += " (test set retired)"
    subject = subject_for(facts, ev.outcome)
    text, html = render("evaluation", f=facts, e=ev, uses_text=uses_text, cid=cid if chart_png else None,
                        badge=BADGE.get(ev.outcome, "#6e7781"), subject=subject,
                        **_rotation_ctx(ev.dataset, public_key, ev.samples_needed))
    return message(subject, text, html, images=[(cid, chart_png)] if chart_png and cid else [])


def author_mail(facts: BuildFacts, outcome: str, condition: str | None) -> EmailMessage:
    """The PR author's mail: the outcome only (what ``developer_may_see`` allows)."""
    subject = subject_for(facts, outcome)
    text, html = render("author", f=facts, outcome=outcome, condition=condition, subject=subject,
                        badge=BADGE.get(outcome, "#6e7781"))
    return message(subject, text, html)


def first_test_set_commands(dataset: str = DEFAULT_DATASET, public_key: str = DEFAULT_PUBLIC_KEY) -> str:
    """The shell commands that encrypt a repository's first test set and commit it."""
    plain = rotation.plain_name(dataset)
    return "\n".join([f"easeml dataset encrypt --key {public_key} {plain} {dataset}",
                      f"git add {dataset}", 'git commit -m "easeml: test set"', "git push"])


def exhaustion_mail(facts: BuildFacts, *, state: str, why: str, samples: int | None,
                    condition: str | None, reliability: float | None, adaptivity: str | None,
                    steps: int | None, dataset: str = DEFAULT_DATASET,
                    public_key: str = DEFAULT_PUBLIC_KEY) -> EmailMessage:
    """Asks the owners for a (new) test set: its size, and the first-set commands or the rotation."""
    count = samples if samples is not None else "?"
    subject = (f"{SUBJECT_PREFIX} {facts.repo}: no test set yet, one with {count} samples is needed"
               if state == "missing" else
               f"{SUBJECT_PREFIX} {facts.repo}: test set {state}, a new one with {count} samples is needed")
    subject = re.sub(r"[\r\n]+", " ", subject)
    text, html = render("exhaustion", f=facts, state=state, why=why, samples=samples, condition=condition,
                        reliability=reliability, adaptivity=adaptivity, steps=steps, subject=subject,
                        commands=first_test_set_commands(dataset, public_key),
                        plain=rotation.plain_name(dataset), **_rotation_ctx(dataset, public_key, samples))
    return message(subject, text, html)


def operator_mail(facts: BuildFacts) -> EmailMessage:
    """Tells the operator a build broke on the service side (key, worker, ledger)."""
    from buildbot.process.results import statusToString

    result_name = statusToString(facts.results) if facts.results is not None else "unknown"
    subject = subject_for(facts, f"service-side failure ({facts.cause or result_name})"[:160])
    text, html = render("operator", f=facts, result_name=result_name, subject=subject)
    return message(subject, text, html)


def note_mail(facts: BuildFacts, title: str, text: str) -> EmailMessage:
    """A short 'not evaluated' note to data scientists."""
    subject = subject_for(facts, f"not evaluated ({title})")
    body, html = render("note", f=facts, title=title, text=text, subject=subject)
    return message(subject, body, html)
