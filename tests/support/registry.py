"""A real OCI registry on loopback: Debian's ``docker-registry`` (the Distribution API),
run as a subprocess with its own config and storage on a free 127.0.0.1 port. The Docker
daemon talks plain HTTP to registries on 127.0.0.0/8 without configuration."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class Registry:
    host: str          # "127.0.0.1:PORT", the reference prefix
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    """The registry accepts bcrypt entries only; glibc's crypt(3) (libxcrypt) makes them."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        path.write_text("".join(f"{u}:{crypt.crypt(p, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
                                for u, p in users.items()))


def start_registry(directory: Path, users: dict[str, str] | None = None) -> Registry | None:
    """Start a registry storing under ``directory`` (with basic auth for ``users`` when
    given); None when the package is missing."""
    binary = shutil.which("docker-registry")
    if binary is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cfg = directory / "config.yml"
    text = CONFIG.format(root=directory / "storage", port=port)
    if users:
        _htpasswd(directory / "htpasswd", users)
        text += f"auth:\n  htpasswd:\n    realm: easeml-test\n    path: {directory / 'htpasswd'}\n"
    cfg.write_text(text)
    log = directory / "registry.log"
    proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                if r.status == 200:
                    return Registry(f"127.0.0.1:{port}", proc, log)
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and users:  # up, and asking for credentials
                return Registry(f"127.0.0.1:{port}", proc, log)
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"docker-registry did not start: {log.read_text()[-2000:]}")
