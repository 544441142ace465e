"""A throw-away GnuPG home: private (0700), used for one operation, then destroyed.

The service never relies on a user's keyring. Every gpg operation imports the key it needs
into a fresh home, and afterwards the gpg-agent started for that home is stopped
(``gpgconf --kill all``) and the directory, which may hold secret key material, is removed.
python-gnupg's DEBUG records echo key and data bytes, so they are dropped here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gnupg


class _DropGnupgDebug(logging.Filter):
    """python-gnupg logs the first bytes of keys and data at DEBUG: never let them out."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D401
        return record.levelno > logging.DEBUG


_GNUPG_LOGGER = logging.getLogger("gnupg")
if not any(isinstance(f, _DropGnupgDebug) for f in _GNUPG_LOGGER.filters):
    _GNUPG_LOGGER.addFilter(_DropGnupgDebug())


def secure_tmp_base(min_free: int = 0) -> Path | None:
    """tmpfs (/dev/shm) when writable and roomy enough, so plaintext never touches a disk.

    None means the platform's temp dir (files there are overwritten before removal). Docker
    gives containers a 64 MiB /dev/shm by default: ``min_free`` makes large test sets fall back
    instead of failing with ENOSPC (or raise ``--shm-size`` on the worker).
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        if min_free <= 0:
            return shm
        try:
            st = os.statvfs(shm)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize >= min_free:
            return shm
    return None


def kill_agent(home: Path) -> None:
    """Stop every gpg daemon started for ``home`` (gpg-agent, dirmngr, keyboxd)."""
    env = dict(os.environ, GNUPGHOME=str(home))
    try:
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):  # pragma: no cover - gpgconf missing or hung
        pass
    # the agent removes its socket as it exits: wait briefly so "stopped" means stopped
    deadline = time.monotonic() + 2.0
    while (home / "S.gpg-agent").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def on_tmpfs(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).startswith("/dev/shm/")


def overwrite_file(path: str | os.PathLike[str]) -> None:
    """Zero a regular file in place and sync it, so removing it leaves no plaintext on a disk
    (unsynced zeros could be dropped with the file before they reach it)."""
    try:
        if os.path.isfile(path) and not os.path.islink(path):
            left = os.path.getsize(path)
            with open(path, "r+b", buffering=0) as fh:
                chunk = b"\0" * (1 << 20)
                while left > 0:
                    left -= fh.write(chunk[: min(left, len(chunk))])
                os.fsync(fh.fileno())
    except OSError:
        pass


def remove_tree(path: Path) -> None:
    """Remove a directory tree, overwriting regular files first when not on tmpfs."""
    if not path.exists():
        return
    if not on_tmpfs(path):
        for root, _dirs, files in os.walk(path):
            for name in files:
                overwrite_file(os.path.join(root, name))
    shutil.rmtree(path, ignore_errors=True)


MIN_S2K_COUNT = 65536
_SWEPT_KINDS = ("ds", "gnupg", "check", "key", "run", "proc", "eval")  # runner: features copy, checkout


def private_tmpdir(kind: str, base: Path | None = None) -> Path:
    """A new 0700 directory ``easeml-KIND-PID-XXXX``: the PID lets a later sweep spot orphans."""
    d = Path(tempfile.mkdtemp(prefix=f"easeml-{kind}-{os.getpid()}-", dir=base))
    os.chmod(d, 0o700)
    return d


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove private directories whose creating process is dead (killed mid-evaluation).

    A ``kill -9`` skips every ``finally``; the next decryption on the same machine (or a
    worker at start-up) calls this so plaintext never outlives its process for long.
    """
    root = base if base is not None else (secure_tmp_base() or Path(tempfile.gettempdir()))
    removed = []
    try:
        candidates = list(root.glob("easeml-*-*-*"))
    except OSError:
        return removed
    for p in candidates:
        parts = p.name.split("-")
        if len(parts) < 4 or parts[1] not in _SWEPT_KINDS or not parts[2].isdigit():
            continue
        try:
            if p.is_symlink() or not p.is_dir() or p.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        pid = int(parts[2])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if parts[1] == "gnupg":
            kill_agent(p)
        remove_tree(p)
        removed.append(p)
    return removed


@contextmanager
def temporary_gpg(parent: Path | None = None, *, s2k_count: int | None = None) -> Iterator[gnupg.GPG]:
    """Yield a ``gnupg.GPG`` bound to a new private home; destroy the home on exit.

    ``s2k_count`` fixes the agent's passphrase-hashing iterations instead of calibrating
    ~100 ms per unlock. The minimum (65536) is right for a home that lives seconds on tmpfs
    (an imported key is re-protected there, while the key file keeps its own protection),
    and for throw-away test keys; never for a real service key.
    """
    base = parent if parent is not None else secure_tmp_base()
    home = private_tmpdir("gnupg", base)
    if s2k_count is not None:
        (home / "gpg-agent.conf").write_text(f"s2k-count {max(int(s2k_count), 65536)}\n", encoding="ascii")
    try:
        gpg = gnupg.GPG(gnupghome=str(home))
        gpg.encoding = "utf-8"
        gpg.buffer_size = 1 << 20  # python-gnupg's default 16 KiB pipes large test sets slowly
        yield gpg
    finally:
        kill_agent(home)
        remove_tree(home)
