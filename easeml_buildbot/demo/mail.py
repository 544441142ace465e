"""A local SMTP server for the demo (aiosmtpd) that files every message in a folder."""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class _FolderHandler:
    folder: Path
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = message_from_bytes(envelope.content, policy=default_policy)
        subject = str(msg.get("Subject", "no subject"))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")[:60] or "mail"
        with self.lock:
            self.count += 1
            n = self.count
        head = (f"X-Envelope-From: {envelope.mail_from}\n"
                f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\n").encode()
        path = self.folder / f"{n:03d}-{slug}.eml"
        path.write_bytes(head + envelope.content)
        return "250 Message accepted for delivery"


class MailFolderServer:
    """SMTP on 127.0.0.1:port; each message becomes ``NNN-subject.eml`` in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.handler = _FolderHandler(self.folder)
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> MailFolderServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        try:
            self._controller.stop()
        except (AssertionError, RuntimeError):  # already stopped
            pass

    def messages(self) -> list[Path]:
        return sorted(self.folder.glob("*.eml"))
