"""Fault run (issue 14): the SMTP relay down for 5 minutes, then back.

A real aiosmtpd relay is stopped while the mail notifier (as ``configure`` builds it, on a
SQLite ledger) holds owners' mails of committed uses, with the production retry schedule
(``smtp.backoff`` 2 s doubling up to ``smtp.outbox_max_backoff`` 600 s, expiry 3 days). The
relay is started again after ``--outage`` seconds. Prints: mails attempted / delivered,
lost, duplicated, how long after the return they were delivered and their owners recorded
as ``notified``, and whether any use was ``notified`` before its mail arrived. Exits 1 if a
mail was lost or duplicated or ``notified`` led a delivery. The suite runs the same code
with a 16 s outage (tests/email/test_outbox.py).

    .venv/bin/python benchmarks/fault_smtp_outage.py [--outage 300] [--mails 5] [--max-backoff 600]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.smtp import reactor_thread  # noqa: E402
from support.smtp_outage import run_outage  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage", type=float, default=300.0, help="seconds the relay is down (default 300)")
    ap.add_argument("--mails", type=int, default=5)
    ap.add_argument("--max-backoff", type=float, default=None,
                    help="smtp.outbox_max_backoff in seconds (default: the production 600 s)")
    args = ap.parse_args()
    smtp = {} if args.max_backoff is None else {"outbox_max_backoff": args.max_backoff}
    reactor = reactor_thread()
    last = [0.0]

    def progress(t: float) -> None:
        if t - last[0] >= 60:
            last[0] = t
            print(f"  relay down for {t:.0f} s ...", flush=True)

    with tempfile.TemporaryDirectory(prefix="easeml-smtp-outage-") as tmp:
        f = run_outage(Path(tmp), reactor, outage=args.outage, mails=args.mails, smtp=smtp, progress=progress)
    print("SMTP outage:", *f.lines(), sep="\n  ")
    ok = f.lost == 0 and f.duplicated == 0 and f.notified_early == 0 and f.notified == f.mails
    print("survived" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
