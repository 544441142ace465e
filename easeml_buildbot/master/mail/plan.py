"""Which mails a finished build causes: the status -> (recipients, template) table.

``ROUTES`` is the whole policy of who hears of what (docs/email.md shows it as a table);
``plan_mails`` looks the build up in it, gathers the facts once and renders each mail.
It is blocking (ledger reads, the chart): the notifier runs it in a thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from easeml_buildbot.master import chart as chart_module
from easeml_buildbot.master.mail import render
from easeml_buildbot.master.mail.facts import (DEFAULT_DATASET, BuildFacts, Evaluation, OutgoingMail,
                                               evaluation_from, read_ledger, result_of, samples_needed,
                                               to_float, to_int)
from easeml_buildbot.master.mail.policy import AUTHOR, OPERATOR, OWNERS, MailPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One mail of a build: to whom (audiences of ``mail.policy``), which template, and when."""

    to: tuple[str, ...]
    template: str  # evaluation | author | exhaustion | operator | note
    when: str = "always"  # always | spent (the use spent the last use or retired the set)


_NOTE = (Route((OWNERS, AUTHOR), "note"),)

#: route key (``route_key``) -> the mails, in order
ROUTES: Mapping[str, tuple[Route, ...]] = {
    "evaluated": (Route((OWNERS,), "evaluation"), Route((AUTHOR,), "author"),
                  Route((OWNERS,), "exhaustion", when="spent")),
    "exhausted": (Route((OWNERS,), "exhaustion"),),
    "missing_dataset": (Route((OWNERS,), "exhaustion"), Route((AUTHOR,), "note")),
    "missing_dataset:too_small": (Route((OWNERS,), "exhaustion"), Route((AUTHOR,), "note")),
    "missing_dataset:key": (Route((OPERATOR,), "operator"), Route((OWNERS, AUTHOR), "note")),
    "config_error": _NOTE,
    "model_error": _NOTE,
    "protected_changed": _NOTE,
    "infra_error": (Route((OPERATOR,), "operator"), Route((OWNERS,), "note")),
    "not_evaluated": (),  # a PR into an unlisted branch: nothing was looked at
    "cancelled": (),
}

STATUS_TITLES = {
    "config_error": "configuration error",
    "model_error": "the model failed",
    "missing_dataset": "no test set",
    "missing_dataset:too_small": "the test set is too small",
    "missing_dataset:key": "the test set could not be read",
    "protected_changed": "protected files changed",
    "infra_error": "service-side failure",
}

INFRA_NOTE = ("The evaluation could not run because of a problem on the service side, not in your change. "
              "The operator has been notified; push again or re-run the build once it is fixed.")


def route_key(facts: BuildFacts) -> str | None:
    from buildbot.process.results import CANCELLED, SKIPPED

    if facts.infra:
        return "infra_error"
    if facts.results in (CANCELLED, SKIPPED):
        return "cancelled"
    if facts.status == "missing_dataset":
        if facts.key_problem:
            return "missing_dataset:key"
        if facts.cause_kind == "dataset_too_small":
            return "missing_dataset:too_small"
    return facts.status if facts.status in ROUTES else None


class _Plan:
    """The facts of one build, gathered once, and the mails of its routes."""

    def __init__(self, facts: BuildFacts, policy: MailPolicy, ledger: Any, led: Any = None):
        self.facts, self.policy, self.ledger, self.led = facts, policy, ledger, led
        self.owners, dropped = _filter(facts.owners, policy)
        if dropped:
            logger.warning("easeml email: %d address(es) of %r not in the allowed domains, not mailed: %s",
                           len(dropped), facts.repo, ", ".join(dropped))
        self.config = dict(facts.config or {})
        self.ev: Evaluation | None = None
        self.use: dict[str, Any] = {}
        self.uses: list[dict[str, Any]] = []

    def recipients(self, route: Route, outcome: str | None) -> list[str]:
        out: list[str] = []
        for who in route.to:
            if who == OWNERS:
                out += self.owners
            elif who == OPERATOR:
                out += self.policy.operators()
            elif who == AUTHOR:
                adaptivity = self.ev.adaptivity if self.ev else None
                # an author who is an owner already gets the owners' (fuller) mail
                out += self.policy.author(self.facts.author, adaptivity, outcome, owners=self.owners)
        seen: set[str] = set()
        return [a for a in out if not (a.lower() in seen or seen.add(a.lower()))]

    # -- the ledger
    def load_evaluation(self) -> bool:
        f, policy = self.facts, self.policy
        if self.ledger is None:
            if not policy.ledger_url or not f.dataset_id:
                logger.warning("easeml email: no ledger or dataset id for %r, cannot report", f.repo)
                return False
            try:
                self.ledger = read_ledger(policy.ledger_url, f.repo, f.dataset_id, self.led)
            except Exception as exc:  # noqa: BLE001  (logged; the build is long finished)
                logger.warning("easeml email: ledger unavailable for %r, no result mail: %s", f.repo, exc)
                return False
        uses, state = self.ledger
        use = next((u for u in uses if str(u.get("use_id", u.get("id"))) == str(f.use_id)), None)
        if use is None:
            logger.warning("easeml email: use %s of %r not in the ledger", f.use_id, f.repo)
            return False
        if not self.owners:
            # recipients recorded with the use (default-branch config at evaluation time)
            self.owners, _ = _filter(use.get("notified") or (), policy)
        self.use = use
        self.ev = evaluation_from(use, state, self.config)
        # the history up to this use (a late report must not show later uses)
        self.uses = [u for u in uses if result_of(u)
                     and (self.ev.use_number is None or (to_int(u.get("use_number")) or 0) <= self.ev.use_number)]
        return True

    def last_evaluation(self) -> None:
        f = self.facts
        if self.policy.ledger_url and f.dataset_id and self.ledger is None:
            try:
                uses, state = read_ledger(self.policy.ledger_url, f.repo, f.dataset_id, self.led)
                if uses:
                    self.ev = evaluation_from(uses[-1], state, self.config)
            except Exception as exc:  # noqa: BLE001
                logger.warning("easeml email: ledger unavailable for %r: %s", f.repo, exc)

    # -- the templates
    def compose(self, key: str, route: Route) -> OutgoingMail | None:
        f, ev = self.facts, self.ev
        outcome = ev.outcome if ev and ev.outcome in ("pass", "fail") else None
        if route.template == "author" and outcome is None:
            return None
        to = self.recipients(route, outcome if route.template == "author" else None)
        if not to:
            return None
        if route.template == "evaluation":
            msg = render.evaluation_mail(f, ev, chart_png=self.chart(), public_key=self.policy.public_key)
        elif route.template == "author":
            msg = render.author_mail(f, outcome, ev.condition)
        elif route.template == "exhaustion":
            msg = self.exhaustion(key)
        elif route.template == "operator":
            msg = render.operator_mail(f)
        else:
            msg = self.note(key)
        return OutgoingMail(route.template, tuple(to), msg)

    def chart(self) -> bytes:
        ev = self.ev
        try:
            thresholds = chart_module.thresholds_from_condition(ev.condition) if ev.condition else ()
        except Exception as exc:  # noqa: BLE001  (a chart without threshold beats no chart)
            logger.warning("easeml email: cannot parse condition for the chart: %s", exc)
            thresholds = ()
        return chart_module.render_chart(self.uses, thresholds, highlight=ev.use_number,
                                         budget=ev.budget or ev.steps,
                                         title=f"{self.facts.repo}: test set {(self.facts.dataset_id or '')[:12]}")

    def note(self, key: str):
        f = self.facts
        if key == "infra_error":
            return render.note_mail(f, STATUS_TITLES[key], INFRA_NOTE)
        cause = f.cause or STATUS_TITLES[key]
        if key == "missing_dataset:key":
            cause = ("Either it was not encrypted to the service's public key, or the service's key is "
                     "unavailable on the worker (the operator has been notified). Details: "
                     + _WORKER_PATH.sub("<path on the worker>", cause))
        return render.note_mail(f, STATUS_TITLES.get(key, STATUS_TITLES.get(f.status or "", key)), cause)

    def exhaustion(self, key: str):
        f, ev, config = self.facts, self.ev, self.config
        condition = (ev.condition if ev else None) or config.get("condition") or config.get("condition_text")
        reliability = (ev.reliability if ev else None) or to_float(config.get("reliability"))
        adaptivity = (ev.adaptivity if ev else None) or config.get("adaptivity")
        steps = (ev.steps if ev else None) or to_int(config.get("steps"))
        dataset = (ev.dataset if ev else None) or config.get("dataset") or DEFAULT_DATASET
        samples = (ev.samples_needed if ev else None) or to_int(config.get("samples_needed"))
        if samples is None:
            samples = samples_needed(condition, reliability, adaptivity, steps)
        first_pass = bool(ev and adaptivity == "firstChange" and ev.outcome == "pass")
        spent = ev is None or ev.uses_left == 0
        if key == "missing_dataset":
            state = "missing"
            why = (f"There is no encrypted test set at {dataset} on the default branch"
                   f"{' (' + f.cause + ')' if f.cause else ''}, so pull requests cannot be evaluated.")
        elif key == "missing_dataset:too_small":
            state = "too small"
            why = (f"The test set at {dataset} has fewer samples than the condition needs"
                   f"{' (' + _WORKER_PATH.sub('<path on the worker>', f.cause) + ')' if f.cause else ''}, "
                   "so pull requests cannot be evaluated; no use of it was spent.")
        elif first_pass or (ev is not None and ev.retired and not spent):
            state = "retired"
            why = ("Under adaptivity firstChange a test set is retired after its first pass: the "
                   "pass was reported, so the same data cannot be trusted for the next change."
                   if first_pass else
                   f"The test set was retired ({ev.retired_reason or 'by the service policy'}).")
        else:
            state = "exhausted"
            used = f"all {ev.budget} uses" if ev and ev.budget else "all its uses"
            why = (f"The test set {('(' + f.dataset_id[:12] + ') ') if f.dataset_id else ''}"
                   f"has spent {used}: more evaluations would void the reliability guarantee.")
        return render.exhaustion_mail(f, state=state, why=why, samples=samples, condition=condition,
                                      reliability=reliability, adaptivity=adaptivity, steps=steps,
                                      dataset=str(dataset), public_key=self.policy.public_key)


def _filter(addresses: Sequence[str], policy: MailPolicy) -> tuple[list[str], list[str]]:
    from easeml_buildbot.master.mail.policy import filter_recipients

    return filter_recipients(addresses, policy.allowed_domains)


_WORKER_PATH = re.compile(r"(?<![\w.:])/[^\s:'\"]+")


def plan_mails(facts: BuildFacts, policy: MailPolicy, *, ledger: Any = None, led: Any = None) -> list[OutgoingMail]:
    """Every mail one finished build causes, with its recipients (blocking: run in a thread).

    ``ledger`` is ``(uses, state)`` when already read (tests); otherwise the ledger at
    ``policy.ledger_url`` is read for the build's ``easeml_use_id``, through ``led`` (the
    master's open ``Ledger``) when given.
    """
    key = route_key(facts)
    routes = ROUTES.get(key or "", ())
    if not routes:
        return []
    plan = _Plan(facts, policy, ledger, led)
    if key == "evaluated":
        if not plan.load_evaluation():
            return []
        if plan.use.get("state") == "awaiting_labels":  # labels on demand: owners only, never the author
            from easeml_buildbot.master.mail import labels

            return labels.plan(facts, plan.use, plan.owners, public_key=policy.public_key)
    elif key == "exhausted":
        plan.last_evaluation()
    mails = []
    for route in routes:
        if route.when == "spent" and not (plan.ev and (plan.ev.retired or plan.ev.uses_left == 0)):
            continue
        mail = plan.compose(key, route)
        if mail is not None:
            mails.append(mail)
    return mails
