"""A separate process that uses the ledger (for race and crash tests). Not a test module.

    python ledger_child.py race URL REPO DATASET STEPS READY_FILE GO_FILE
    python ledger_child.py dup URL REPO DATASET STEPS READY_FILE GO_FILE HEAD BASE
    python ledger_child.py reserve-and-hang URL REPO DATASET STEPS
    python ledger_child.py hang-in-transaction URL REPO DATASET
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import sqlalchemy as sa

from easeml_buildbot.custody.ledger import Ledger, LedgerError, testsets


def main(argv: list[str]) -> int:
    mode, url, repo, ds = argv[:4]
    led = Ledger(url)
    if mode in ("race", "dup"):
        steps, ready, go = int(argv[4]), Path(argv[5]), Path(argv[6])
        claim = dict(commit=argv[7], base=argv[8]) if mode == "dup" else dict(commit="race")
        ready.touch()
        deadline = time.monotonic() + 60
        while not go.exists():
            if time.monotonic() > deadline:
                print("TIMEOUT", flush=True)
                return 3
            time.sleep(0.002)
        try:
            r = led.reserve(repo, ds, steps, "full", build=str(ready.name), **claim)
        except LedgerError as exc:
            print(f"LOST {type(exc).__name__}", flush=True)
            return 0
        print(f"{'WON' if getattr(r, 'fresh', True) else 'DUP'} {r.use_id} {r.use_number}", flush=True)
        return 0
    if mode == "reserve-and-hang":
        r = led.reserve(repo, ds, int(argv[4]), "full", commit="doomed", build="crash-test")
        print(f"RESERVED {r.use_id}", flush=True)
        time.sleep(120)  # the parent kills us with SIGKILL before we commit
        return 1
    if mode == "hang-in-transaction":
        with led.engine.begin() as conn:  # an open write transaction, never committed
            conn.execute(sa.update(testsets).where(testsets.c.repo == repo).values(uses=testsets.c.uses + 1))
            print("IN-TRANSACTION", flush=True)
            time.sleep(120)
        return 1
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
