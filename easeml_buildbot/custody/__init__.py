"""Test-set custody: the service key pair, encrypted test sets and the usage ledger.

The promise of the service (one hidden test set, used at most H times, never seen by the
model or the developer) rests on this package. It imports neither Buildbot nor Twisted, so
workers, the master and the CLI share it; the master calls it through ``deferToThread``.
"""
