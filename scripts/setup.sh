#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages (when root), the virtualenv,
# a Docker daemon (when root and none is running) and the locally built base image.
# Nothing here pulls from a container registry.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  pkgs=()
  command -v gpg >/dev/null || pkgs+=(gnupg)
  command -v git >/dev/null || pkgs+=(git)
  command -v dockerd >/dev/null || pkgs+=(docker.io)
  command -v debootstrap >/dev/null || pkgs+=(debootstrap)
  [ -x /bin/busybox ] || pkgs+=(busybox-static)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || pkgs+=(postgresql)
  # a real OCI registry on loopback for the base-image pull tests (tests/support/registry.py)
  command -v docker-registry >/dev/null || pkgs+=(docker-registry)
  # `docker compose config` validates docker-compose.yml in tests/deploy (Debian's compose v1).
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || pkgs+=(docker-compose)
  # npm fetches GitHub's REST description and webhook examples for the master's e2e tests.
  command -v npm >/dev/null || pkgs+=(nodejs npm)
  # The builds' egress route in tests/support/squid.py: squid (allow-listing proxy), iptables.
  command -v squid >/dev/null || pkgs+=(squid)
  command -v iptables >/dev/null || pkgs+=(iptables)
  # The Buildbot UI browser test (tests/deploy/test_browser.py): headless Chromium + WebDriver.
  command -v chromium >/dev/null || pkgs+=(chromium)
  command -v chromedriver >/dev/null || pkgs+=(chromium-driver)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing system packages: ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  log "creating virtualenv .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import easeml_buildbot, buildbot, pytest, aiosmtpd, sklearn" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  log "installing the project and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip 2>/dev/null || true
  .venv/bin/pip install -q -e ".[test]"
  touch .venv/.installed
fi

# crossbar, the WAMP router several masters share (mq_router_url; tests/support/crossbar.py),
# in its own virtualenv: it pins its own autobahn/twisted/numpy stack, which must not move
# the master's. Its bjdata extension is built against NumPy 1.x, hence numpy<2.
if [ "${EASEML_SKIP_CROSSBAR:-0}" != 1 ] && ! .venv-crossbar/bin/crossbar version >/dev/null 2>&1; then
  log "installing crossbar into .venv-crossbar"
  [ -x .venv-crossbar/bin/python ] || python3 -m venv .venv-crossbar
  .venv-crossbar/bin/pip install -q --upgrade pip 2>/dev/null || true
  .venv-crossbar/bin/pip install -q "crossbar>=23.1" "numpy<2" \
    || log "crossbar could not be installed: the multi-master tests will be skipped"
fi

# GitHub's REST description and webhook examples for the master's end-to-end tests.
if [ -f tests/support/package.json ] && [ ! -d tests/support/node_modules/@octokit/openapi ]; then
  if command -v npm >/dev/null; then
    log "installing npm test fixtures (tests/support/package.json)"
    (cd tests/support && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 \
      || npm install --no-audit --no-fund --loglevel=error >/dev/null)
  else
    log "npm not found: the GitHub end-to-end tests will be skipped"
  fi
fi

if [ "${EASEML_SKIP_DOCKER:-0}" != 1 ]; then
  bash scripts/start-dockerd.sh || log "no Docker daemon: Docker tests will be skipped, the demo uses the ProcessRunner"
  if docker info >/dev/null 2>&1 && [ -f scripts/build-base-image.sh ]; then
    bash scripts/build-base-image.sh
  fi
fi
log "ready: $ROOT/.venv"
