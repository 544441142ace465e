"""The owners' mail of labels on demand: which rows (by id) need a label.

``plan_mails`` (master/mail/plan.py) calls :func:`plan` for a build whose ledger use is
``awaiting_labels``. The ids of the rows where the two models disagree are owner-only
information (they tell which test rows separate the models): this mail goes to the owners of
the default branch's ``.easeml.yml`` only, never to the pull request's author, and the
build's public properties, logs and check run carry neither the ids nor their number.

The mail lists the first ids in its text and attaches every one as a CSV with an empty label
column, ready to fill in, encrypt and commit (docs/labels-on-demand.md).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from easeml_buildbot.custody.labels import MAX_IDS_IN_TEXT

logger = logging.getLogger(__name__)

KIND = "labels"


def needed(use: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``labels_needed`` record of an ``awaiting_labels`` use (``{}`` when absent)."""
    result = use.get("result") or {}
    return result.get("labels_needed") or {} if isinstance(result, Mapping) else {}


def attachment(info: Mapping[str, Any]) -> bytes:
    """``id_column,label_column`` CSV of the needed ids (labels empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([info.get("id_column") or "id", info.get("label_column") or "label"])
    for rid in info.get("ids") or ():
        w.writerow([rid, ""])
    return buf.getvalue().encode("utf-8")


def _text(facts: Any, info: Mapping[str, Any], use: Mapping[str, Any], public_key: str) -> str:
    ids = list(info.get("ids") or ())
    shown = ids[:MAX_IDS_IN_TEXT]
    more = f"\n  ... and {len(ids) - len(shown)} more (all in the attached CSV)" if len(ids) > len(shown) else ""
    path = info.get("file") or "data/labels.csv.gpg"
    plain = path.removesuffix(".gpg")
    pr = f" #{facts.pr_number}" if getattr(facts, "pr_number", None) else ""
    return f"""{facts.repo}{pr} {facts.short_sha}: {len(ids)} test rows need labels

The new model and the base model disagree on {info.get('disagreements', '?')} of the {info.get('rows', '?')}
test rows this evaluation uses; {len(ids)} of them have no label in {path} yet. The
evaluation (use {use.get('use_number', '?')} of the test set, already counted) finishes as soon as
they are labelled. Rows by id ({info.get('id_column') or 'id'}):

  {chr(10).join('  ' + str(i) for i in shown).lstrip()}{more}

To finish it (owners only; this list is not shown on the pull request):
  1. add a label to every row of the attached labels-needed.csv, and append the rows to
     your plaintext labels file (columns {info.get('id_column') or 'id'},{info.get('label_column') or 'label'}); keep it out of git
  2. easeml dataset encrypt --key {public_key} {plain} {path}
  3. commit {path} to the default branch
  4. re-run this pull request's check (or the build): it continues this use, no new one is spent

Build: {getattr(facts, 'build_url', None) or '-'}
"""


def mail(facts: Any, use: Mapping[str, Any], *, public_key: str = "easeml_pub.asc"):
    """The EmailMessage to the owners (text, HTML, the CSV attachment)."""
    import html as _html

    from easeml_buildbot.master.mail.render import message, subject_for

    info = needed(use)
    text = _text(facts, info, use, public_key)
    msg = message(subject_for(facts, f"{len(info.get('ids') or ())} test rows need labels"), text,
                   f"<!DOCTYPE html><html><body><pre>{_html.escape(text)}</pre></body></html>")
    msg.add_attachment(attachment(info), maintype="text", subtype="csv", filename="labels-needed.csv")
    return msg


def plan(facts: Any, use: Mapping[str, Any], owners: Sequence[str], *, public_key: str = "easeml_pub.asc") -> list:
    """The mails for an ``awaiting_labels`` use: one to the owners; nothing without owners."""
    from easeml_buildbot.master.mail.facts import OutgoingMail

    if not owners:
        logger.warning("easeml email: %r: rows need labels but no owner address is configured", facts.repo)
        return []
    return [OutgoingMail(KIND, tuple(owners), mail(facts, use, public_key=public_key))]
