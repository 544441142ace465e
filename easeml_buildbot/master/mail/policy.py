"""Who may receive which mail, under the threat model.

The pull request's author is the adversary: they control the head commit (its
``.easeml.yml`` too), the branch names and when they push. So:

* **owners** are only the addresses in ``email:`` of ``.easeml.yml`` on the *default*
  branch (the build reads it with ``easeml worker inspect --base``; the ledger also records
  them per use); a pull request cannot add anyone. Owners get the full verdict.
* the **author** (when the operator allows it) gets only what
  ``custody.policy.developer_may_see`` allows: the pass/fail bit, never estimates,
  intervals or charts, and nothing at all under adaptivity ``none``.
* the **operator** (``operator_email``) gets service-side failures with their log tail.

Every owner and author address must be in one of the operator's ``allowed_email_domains``
(subdomains included, ``"*"`` allows all, empty allows none: fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr
from typing import Any

from easeml_buildbot.custody.policy import developer_may_see

DEFAULT_PUBLIC_KEY = "easeml_pub.asc"

#: the audiences of the status table (``mail.plan.ROUTES``)
OWNERS, AUTHOR, OPERATOR = "owners", "author", "operator"


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
        """From the master's ``Settings`` (``master/settings.py`` validated every key)."""
        return cls(
            sender=settings.smtp.from_addr or cls.sender,
            operator=settings.operator_email or None,
            allowed_domains=tuple(str(d).lower().lstrip("@") for d in settings.allowed_email_domains),
            ledger_url=settings.ledger_url,
            notify_author=bool(settings.email_pr_author),
            buildbot_url=settings.buildbot_url,
            web_url=web_url(settings.github.api_url),
        )

    def owners(self, addresses: Iterable[str]) -> list[str]:
        """The allowed owner addresses (bare, de-duplicated)."""
        return filter_recipients(addresses, self.allowed_domains)[0]

    def author(self, address: str | None, adaptivity: str | None, outcome: str | None,
               owners: Sequence[str] = ()) -> list[str]:
        """``[author]`` when the operator allows author mail, the address is allowed, the
        author is not an owner already, and the policy lets a developer see ``outcome``.
        ``outcome`` None: a note with no verdict (a config or model error the author caused)."""
        if not self.notify_author or not address:
            return []
        if outcome is not None and not developer_may_see(adaptivity, outcome):
            return []
        lowered = {o.lower() for o in owners}
        return [a for a in filter_recipients([address], self.allowed_domains)[0] if a.lower() not in lowered]

    def operators(self) -> list[str]:
        return [self.operator] if self.operator else []


def web_url(api_url: str | None) -> str:
    """github.com for api.github.com; ``https://host`` for GitHub Enterprise's ``/api/v3``."""
    m = re.match(r"(https?://)([^/]+)(/api/v3)?/?$", str(api_url or ""))
    if not m or m.group(2) == "api.github.com":
        return "https://github.com"
    return m.group(1) + m.group(2)


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


