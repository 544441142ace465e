"""Helpers for custody tests: temp-dir tracking, leak scans, gpg process checks.

A uniquely named module (not ``conftest``) so test modules can import it unambiguously.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class TempTracker:
    """Records every temporary directory custody code creates, to prove each is gone."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self._orig = tempfile.mkdtemp

    def mkdtemp(self, *args, **kwargs) -> str:
        path = self._orig(*args, **kwargs)
        self.created.append(Path(path))
        return path

    def leftovers(self) -> list[Path]:
        return [p for p in self.created if p.exists()]


def scan_dirs_for(needles: list[bytes], roots: list[Path], max_size: int = 64 << 20) -> list[str]:
    """Files under ``roots`` whose bytes contain any needle (plaintext rows, key material)."""
    hits = []
    for root in roots:
        if not root.exists():
            continue
        walk = [(str(root.parent), [], [root.name])] if root.is_file() else os.walk(root)
        for dirpath, _dirs, files in walk:
            for name in files:
                p = Path(dirpath) / name
                try:
                    if not p.is_file() or p.is_symlink() or p.stat().st_size > max_size:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                hits.extend(f"{p}: {n[:20]!r}" for n in needles if n in data)
    return hits


def scan_roots() -> list[Path]:
    """Where custody code may put temporary files: tmpfs and the temp dir's easeml-* entries."""
    shm = Path("/dev/shm")
    roots = [p for p in shm.iterdir() if not p.name.startswith("easeml-pg-")] if shm.is_dir() else []
    tmp = Path(tempfile.gettempdir())
    roots += [p for p in tmp.iterdir() if p.name.startswith(("easeml-ds-", "easeml-gnupg-", "easeml-check-"))]
    return roots


def gpg_processes_for(path: Path) -> list[str]:
    """Live (non-zombie) processes whose command line mentions ``path``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state = stat.rsplit(")", 1)[-1].split()[0]
        if str(path).encode() in cmd and state != "Z":
            found.append(f"{pid} {state} {cmd.decode(errors='replace')}")
    return found


def easeml(argv: list[str]) -> int:
    """Run custody's sub-commands exactly as ``easeml`` does, without importing other parts' CLIs."""
    import argparse

    from easeml_buildbot.custody import cli

    parser = argparse.ArgumentParser(prog="easeml")
    cli.register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
