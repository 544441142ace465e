#!/usr/bin/env bash
# The embedded default: set up (idempotent), then run the whole service end to end on this
# machine: keys, a model repository with an encrypted test set, a local SMTP server, a
# Buildbot master and worker, three commits and their verdicts. Options: easeml demo --help.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/easeml demo "$@"
