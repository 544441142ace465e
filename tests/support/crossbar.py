"""A real crossbar WAMP router for tests: the repository's ``crossbar/config.json`` on a free
loopback port, run from the separate virtualenv ``scripts/setup.sh`` makes (``.venv-crossbar``:
crossbar's pins are its own), as a child process stopped by pid.

    from support.crossbar import crossbar_router  # noqa: F401 (session fixture)
    crossbar_router.url, crossbar_router.realm      # "ws://127.0.0.1:PORT/ws", "realm1"
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CROSSBAR = Path(os.environ.get("EASEML_CROSSBAR", ROOT / ".venv-crossbar" / "bin" / "crossbar"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CrossbarRouter:
    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base
        self.port = port or _free_port()
        self.realm = "realm1"
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> CrossbarRouter:
        cbdir = self.base / "cb"
        cbdir.mkdir(parents=True, exist_ok=True)
        cfg = json.loads((ROOT / "crossbar" / "config.json").read_text())
        router = cfg["workers"][0]
        self.realm = router["realms"][0]["name"]
        for t in router["transports"]:
            t["endpoint"].update(port=self.port, interface="127.0.0.1")
        (cbdir / "config.json").write_text(json.dumps(cfg))
        with open(self.base / "crossbar.out", "ab") as out:
            self.proc = subprocess.Popen([str(CROSSBAR), "start", "--cbdir", str(cbdir), "--loglevel", "warn"],
                                         cwd=self.base, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crossbar exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self._upgrades():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"crossbar did not listen on {self.port} within {timeout}s:\n{self.log()[-3000:]}")

    def _upgrades(self) -> bool:
        """The router answers a WAMP WebSocket handshake on /ws with 101 (not just a listening port)."""
        req = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(req.encode())
                return s.recv(64).startswith(b"HTTP/1.1 101")
        except OSError:
            return False

    def log(self) -> str:
        p = self.base / "crossbar.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:  # the node controller and its router worker share our new session
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_crossbar(base: Path | None = None) -> CrossbarRouter:
    if not CROSSBAR.exists():
        raise FileNotFoundError(f"{CROSSBAR} not found (scripts/setup.sh installs crossbar into .venv-crossbar)")
    return CrossbarRouter(base or Path(tempfile.mkdtemp(prefix="easeml-crossbar-"))).start()


@pytest.fixture(scope="session")
def crossbar_router() -> Iterator[CrossbarRouter]:
    """A crossbar router for the whole session (skips when crossbar is not installed)."""
    if not CROSSBAR.exists():
        pytest.skip(f"{CROSSBAR} not found (scripts/setup.sh installs crossbar into .venv-crossbar)")
    base = Path(tempfile.mkdtemp(prefix="easeml-crossbar-"))
    router = start_crossbar(base)
    try:
        yield router
    finally:
        router.stop()
        shutil.rmtree(base, ignore_errors=True)
