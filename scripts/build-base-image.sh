#!/usr/bin/env bash
# Build the model base images locally (no registry is reachable):
#   easeml/python:bookworm  Debian bookworm minbase + python3 + numpy (debootstrap | docker import)
#   easeml/busybox:latest   a busybox-static rootfs (tiny; used by the fast hostile-model tests)
#   easeml/python-sklearn:bookworm  only with EASEML_BASE_SKLEARN=1: + python3-sklearn/scipy
#                           (about 100 s more and 815 MB, so not built by default)
# Idempotent: an image whose tag already exists is not rebuilt (EASEML_REBUILD_BASE=1 forces).
# Extra Debian packages for the python image: EASEML_BASE_EXTRA="python3-pandas ...".
set -euo pipefail
log() { printf '[base-image] %s\n' "$*" >&2; }

PY_TAG=${EASEML_BASE_IMAGE:-easeml/python:bookworm}
BB_TAG=${EASEML_BUSYBOX_IMAGE:-easeml/busybox:latest}
SUITE=${EASEML_BASE_SUITE:-bookworm}
PACKAGES="python3,python3-numpy${EASEML_BASE_EXTRA:+,${EASEML_BASE_EXTRA// /,}}"

# Temporary root filesystems, removed on any exit (also on failure or Ctrl-C).
CLEANUP=()
cleanup() { local d; for d in "${CLEANUP[@]}"; do rm -rf "$d" "$d.log"; done; }
trap cleanup EXIT

have_image() { [ "${EASEML_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this machine already uses (deb822 "URIs:" or one-line "deb URL"), so CI
# fetches from wherever apt is allowed to go.
debian_mirror() {
  if [ -n "${EASEML_DEBIAN_MIRROR:-}" ]; then echo "$EASEML_DEBIAN_MIRROR"; return; fi
  local f url
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    url=$(grep -hE '^\s*(URIs:|deb\s)' "$f" 2>/dev/null \
          | grep -oE 'https?://[^ ]+/debian/?(\s|$)' | grep -v security | head -1 | tr -d ' ' || true)
    if [ -n "$url" ]; then echo "${url%/}"; return; fi
  done
  echo "http://deb.debian.org/debian"
}

need_root() {
  # debootstrap needs root. Not an error for set-up as a normal user: the Docker tests then
  # skip (saying why) and the demo uses the process runner.
  if [ "$(id -u)" != 0 ]; then log "building $1 needs root (sudo bash $0); skipped"; return 1; fi
}

build_busybox() {
  if have_image "$BB_TAG"; then log "$BB_TAG exists, skipping"; return; fi
  local bb="" cand
  # The rootfs has no libc: only a statically linked busybox works (Debian's busybox-static).
  for cand in /bin/busybox /usr/bin/busybox "$(command -v busybox || true)"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    if [[ "$(LC_ALL=C ldd "$cand" 2>&1 || true)" =~ (not a dynamic executable|statically linked) ]]; then
      bb=$cand; break
    fi
  done
  if [ -z "$bb" ]; then log "no static busybox (apt-get install busybox-static); skipping $BB_TAG"; return; fi
  local root
  root=$(mktemp -d)
  CLEANUP+=("$root")
  mkdir -p "$root"/{bin,tmp,etc,easeml/input,easeml/output}
  cp "$bb" "$root/bin/busybox"
  for app in sh ls cat echo sleep wc head tail env id mkdir rm cp sed awk seq dd nc wget true false printf yes; do
    ln -s busybox "$root/bin/$app"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$BB_TAG" >/dev/null
  log "built $BB_TAG"
}

build_python() {
  if have_image "$PY_TAG"; then log "$PY_TAG exists, skipping"; return; fi
  need_root "$PY_TAG" || return 0
  command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 1; }
  local mirror root start
  mirror=$(debian_mirror)
  root=$(mktemp -d /var/tmp/easeml-rootfs.XXXXXX)
  CLEANUP+=("$root")
  start=$(date +%s)
  log "debootstrap $SUITE ($PACKAGES) from $mirror"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" \
    >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; exit 1; }
  # Slim the image: package caches, docs, locales are of no use to a model.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' -exec rm -rf {} + 2>/dev/null || true
  mkdir -p "$root/easeml/input" "$root/easeml/output"
  tar -C "$root" -c . | docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV LANG=C.UTF-8' -c 'ENV PYTHONDONTWRITEBYTECODE=1' \
      -c 'CMD ["/usr/bin/python3"]' - "$PY_TAG" >/dev/null
  log "built $PY_TAG in $(( $(date +%s) - start ))s"
}

docker info >/dev/null 2>&1 || { log "no Docker daemon answers"; exit 1; }
build_busybox
build_python
if [ "${EASEML_BASE_SKLEARN:-0}" = 1 ]; then
  PY_TAG=${EASEML_SKLEARN_IMAGE:-easeml/python-sklearn:bookworm}
  PACKAGES="$PACKAGES,python3-sklearn"
  build_python
fi
