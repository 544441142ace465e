#!/usr/bin/env bash
# Start a Docker daemon if none answers (no systemd here). Needs root.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
  echo "[dockerd] no running daemon and cannot start one (need root and dockerd)" >&2
  exit 1
fi
mkdir -p /var/log
nohup dockerd >/var/log/easeml-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { echo "[dockerd] started" >&2; exit 0; }
  sleep 1
done
echo "[dockerd] did not come up; see /var/log/easeml-dockerd.log" >&2
tail -20 /var/log/easeml-dockerd.log >&2 || true
exit 1
