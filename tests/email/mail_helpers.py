"""Helpers shared by the email tests (a unique module name: every test dir has a conftest)."""

from __future__ import annotations

import re
from email.message import EmailMessage


def verdict_dict(n: float, o: float, d: float, *, outcome="pass", raw=None, adaptivity="full",
                 steps=8, condition="n - o > 0.02 +/- 0.01", half=0.02, samples=5000):
    """A Verdict.to_dict()-shaped result, as the worker writes it (for compose-level tests)."""
    return {
        "outcome": outcome, "raw": raw or outcome, "mode": "fp-free", "condition": condition,
        "estimates": {"n": n, "o": o, "d": d},
        "intervals": {"n": [n - half, n + half], "o": [o - half, o + half], "d": [max(0, d - half), d + half]},
        "samples_used": samples, "samples_needed": samples, "enough_samples": True, "method": "hoeffding",
        "reliability": 0.9999, "adaptivity": adaptivity, "steps": steps,
        "clauses": [{"index": 0, "clause": condition, "estimate": n - o,
                     "interval": [n - o - half, n - o + half], "outcome": outcome,
                     "technique": "hoeffding", "samples": samples}],
        "deciding_clause": None, "notes": [],
    }


def ledger_uses(count: int, *, adaptivity="full", steps=8, outcome="pass"):
    """``count`` scored uses shaped like ``Ledger.uses`` (as dicts), oldest first."""
    uses = []
    for i in range(1, count + 1):
        n = 0.80 + 0.01 * i
        v = verdict_dict(n, 0.80, 0.05, outcome=outcome, adaptivity=adaptivity, steps=steps)
        uses.append({"id": 100 + i, "use_number": i, "verdict": outcome, "state": "committed",
                     "result": {"status": "scored", "scored": True, "verdict": v, "samples_used": 5000},
                     "notified": ("owner@example.com",)})
    return uses


def mime_parts(msg: EmailMessage) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for part in msg.walk():
        out.setdefault(part.get_content_type(), []).append(part)
    return out


PGP_MARKERS = re.compile(rb"BEGIN PGP|END PGP|PRIVATE KEY")


def assert_no_key_material(raw: bytes, *, secrets: tuple[bytes, ...] = ()) -> None:
    """No armor marker, and not one line of the given key files / passphrases in the mail.

    Each armored key line is 64 base64 characters of key packets; finding any of them
    (or the passphrase) anywhere in the raw message would mean key material leaked.
    """
    assert not PGP_MARKERS.search(raw), PGP_MARKERS.search(raw)
    flat = raw.replace(b"\r\n", b"").replace(b"\n", b"")
    for s in secrets:
        lines = [ln.strip() for ln in s.splitlines() if len(ln.strip()) >= 24] or [s]
        for ln in lines:
            assert ln not in raw and ln not in flat, f"key material {ln[:12]!r}... found in the mail"


def decoded_text(msg: EmailMessage) -> str:
    """Every text part decoded (what a reader sees), for content scans."""
    return "\n".join(p.get_content() for p in msg.walk() if p.get_content_maintype() == "text")

