"""The completed check run's text, as a Buildbot message formatter an operator can replace.

``CheckRunFormatter`` is a ``buildbot.reporters.message.MessageFormatter``: its Jinja
``template`` renders the check run's ``output.text`` (Markdown) and its ``subject`` the
title. Conclusion, title and summary come from ``status.outcome_for`` (the typed outcome
the build's last step wrote), so the security decisions stay in one reviewed place; the
template only arranges what the context offers. An operator overrides it in master.cfg::

    from easeml_buildbot.master.check_text import CheckRunFormatter
    c["services"].append(CheckRunReporter(end_formatter=CheckRunFormatter(template=MINE)))

Context added to Buildbot's own (``build``, ``build_url``, ``buildbot_url``, ...):

``outcome``      the developer view of the typed outcome (``master/outcome.py``)
``check``        ``status.Outcome`` (conclusion, title, summary)
``guarantee``    the guarantee in plain words (``easeml check-config``'s paragraph)
``decided``      what was decided, as far as the adaptivity lets the developer see it
``step_log_url`` the evaluate step's log in the Buildbot UI
``stderr_tail``  a failed model's stderr tail, only when the worker put it in that log
                 (it does so only where the adaptivity allows: runner/evaluate.py)

Nothing here reads the ledger or result.json: what a developer may read is exactly what the
build's public properties and the public step log already hold.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from buildbot.reporters.message import MessageFormatter

from easeml_buildbot.master.outcome import condition_text

#: the line easeml worker evaluate prints before a failed model's stderr tail
TAIL_MARK = "the last lines of its stderr"
TAIL_MAX = 3000

DEFAULT_TEMPLATE = """\
{% if guarantee %}**What this check guarantees.** {{ guarantee }}

{% endif %}\
{% if decided %}**Decided:** {{ decided }}

{% endif %}\
{% if outcome.kind == "model" %}\
{% if stderr_tail %}**The model's stderr (last lines):**

```
{{ stderr_tail }}
```

{% endif %}\
Reproduce it on your machine with `easeml run-local` (add `--docker` to run it in the \
service's sandbox image); the step log has the image build output.

{% endif %}\
{% if step_log_url %}[Evaluate step log]({{ step_log_url }}) · {% endif %}[Build]({{ build_url }})
"""

DEFAULT_SUBJECT = "{{ check.title }}"


class CheckRunFormatter(MessageFormatter):
    """``body``: ``{"phase": "completed", "conclusion", "title", "summary", "text"}``."""

    def __init__(self, template: str | None = None, subject: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("want_properties", True)
        kwargs.setdefault("want_steps", True)
        kwargs.setdefault("want_logs", True)
        super().__init__(template=template or DEFAULT_TEMPLATE, subject=subject or DEFAULT_SUBJECT,
                         template_type="plain", **kwargs)

    @defer.inlineCallbacks
    def buildAdditionalContext(self, master: Any, ctx: dict[str, Any]):
        from easeml_buildbot.master.status import build_properties, evaluation_of, outcome_for

        build = ctx["build"]
        props = build_properties(build)
        ev = evaluation_of(build).developer_view()
        ctx["outcome"] = ev
        ctx["check"] = outcome_for(build)
        ctx["guarantee"] = guarantee(props)
        ctx["decided"] = decided(ev)
        step = next((s for s in build.get("steps") or () if s.get("name") == "evaluate"), None)
        ctx["step_log_url"] = None
        ctx["stderr_tail"] = None
        if step is not None and step.get("results") not in (None, 3):  # 3: SKIPPED
            ctx["step_log_url"] = (f"{ctx['build_url']}/steps/{step['number']}/logs/stdio"
                                   if ctx.get("build_url") else None)
            if ev.kind == "model":
                log = next((lg for lg in step.get("logs") or () if lg.get("slug") == "stdio"), None)
                if log is not None:
                    content = yield master.data.get(("logs", log["logid"], "contents"))
                    ctx["stderr_tail"] = stderr_tail((content or {}).get("content") or "")

    @defer.inlineCallbacks
    def render_message_dict(self, master: Any, context: dict[str, Any]):
        msg = yield super().render_message_dict(master, context)
        check = context["check"]
        msg["body"] = {"phase": "completed", "conclusion": check.conclusion,
                       "title": (msg.get("subject") or check.title)[:255], "summary": check.summary[:65000],
                       "text": (msg.get("body") or "")[:65000]}
        msg["type"] = "json"
        return msg


def guarantee(props: dict[str, Any]) -> str | None:
    """check-config's guarantee paragraph from the build's configuration properties."""
    from easeml_buildbot.config import guarantee_text

    condition = props.get("easeml_condition")
    if not condition or props.get("easeml_reliability") is None:
        return None
    try:
        text = guarantee_text(condition, steps=int(props.get("easeml_steps") or 1),
                              dataset=str(props.get("easeml_dataset_path") or "data/test.csv.gpg"),
                              reliability=float(props["easeml_reliability"]),
                              adaptivity=str(props.get("easeml_adaptivity") or "none"),
                              mode=props.get("easeml_mode"))
    except (TypeError, ValueError):
        return None
    return text[:1].upper() + text[1:]


def decided(ev: Any) -> str | None:
    """``n > 0.85 ± 0.05: fail (use 2 of 8; 6 left)`` -- the verdict only where the developer
    may see it; estimates and intervals never (one bit per use at most; they go to the owners)."""
    if ev.status != "evaluated" or not ev.condition:
        return None
    what = ev.shown_verdict or "decided; the verdict went to the repository's owners only"
    use = f" ({ev.budget_text().replace(' · ', '; ')})" if ev.budget_text() else ""
    return (f"`{condition_text(ev.condition)}`: **{what}**{use}. The estimates and their intervals "
            "go to the owners only: the pull request may show at most one bit per use of the test set.")


def stderr_tail(log_text: str) -> str | None:
    """The stderr tail the worker printed in the evaluate step's log (Buildbot's log content
    prefixes every line with its stream: ``o`` stdout, ``e`` stderr, ``h`` header)."""
    lines = []
    for raw in log_text.splitlines():
        if raw[:1] in ("o", "e", "h") and len(raw) >= 1:
            lines.append(raw[1:])
        else:
            lines.append(raw)
    text = "\n".join(lines)
    if TAIL_MARK not in text:
        return None
    tail = text.split(TAIL_MARK, 1)[1].split("\n", 1)[-1]
    tail = tail.split("\nstatus: ", 1)[0].strip("\n")
    return tail[-TAIL_MAX:] or None
