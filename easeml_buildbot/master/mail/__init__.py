"""Email reports: verdicts to owners, the allowed part to PR authors, test-set and operator mail.

Under adaptivity ``none`` email is the only place a verdict is shown, so the mail is a
first-class report, built on Buildbot's reporter machinery. One module per concept:

* ``policy``: who may receive what under the threat model (the PR author is the adversary;
  owners are the addresses in the default branch's ``.easeml.yml``; the operator);
* ``facts``: what a mail states, gathered once from the build and the ledger's verdict;
* ``plan``: the status -> (recipients, template) table and ``plan_mails``;
* ``render``: the Jinja2 templates (package data in ``templates/``) to ``EmailMessage``;
* ``notifier``: the report generator and the ``MailNotifier`` service with its outbox;
* ``example``: docs/email-example.html, generated from a real run.

Mails never contain labels, predictions, per-sample data or key material: only the
aggregate numbers of the verdict, rendered field by field (never a JSON dump).
"""

from easeml_buildbot.master.mail.facts import (BuildFacts, ClauseRow, Evaluation, OutgoingMail,
                                               VariableRow, evaluation_from, facts_from_build,
                                               failed_step_tail, guarantee_sentence, read_ledger,
                                               samples_needed)
from easeml_buildbot.master.mail.notifier import (SMTP_PASSWORD_SECRET, EasemlMailGenerator,
                                                  EasemlMailNotifier, EasemlSettingsSecrets,
                                                  make_email_reporters, make_secrets_providers)
from easeml_buildbot.master.mail.plan import ROUTES, Route, plan_mails, route_key
from easeml_buildbot.master.mail.policy import MailPolicy, address_allowed, filter_recipients
from easeml_buildbot.master.mail.render import (SUBJECT_PREFIX, author_mail, evaluation_mail,
                                                exhaustion_mail, first_test_set_commands, note_mail,
                                                operator_mail)

__all__ = [
    "BuildFacts", "ClauseRow", "Evaluation", "OutgoingMail", "VariableRow", "evaluation_from",
    "facts_from_build", "failed_step_tail", "guarantee_sentence", "read_ledger", "samples_needed",
    "SMTP_PASSWORD_SECRET", "EasemlMailGenerator", "EasemlMailNotifier", "EasemlSettingsSecrets",
    "make_email_reporters", "make_secrets_providers", "ROUTES", "Route", "plan_mails", "route_key",
    "MailPolicy", "address_allowed", "filter_recipients", "SUBJECT_PREFIX", "author_mail",
    "evaluation_mail", "exhaustion_mail", "first_test_set_commands", "note_mail", "operator_mail",
]
