"""A real OCI registry on loopback: Debian's ``docker-registry`` (the Distribution API),
run as a subprocess with its own config and storage on a free 127.0.0.1 port. The Docker
daemon talks plain HTTP to registries on 127.0.0.0/8 without configuration."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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


def start_registry(directory: Path) -> Registry | None:
    """Start a registry storing under ``directory``; None when the package is missing."""
    binary = shutil.which("docker-registry")
    if binary is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    cfg = directory / "config.yml"
    cfg.write_text(CONFIG.format(root=directory / "storage", port=port))
    log = directory / "registry.log"
    proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                if r.status == 200:
                    return Registry(f"127.0.0.1:{port}", proc, log)
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"docker-registry did not start: {log.read_text()[-2000:]}")
