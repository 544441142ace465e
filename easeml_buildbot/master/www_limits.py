"""A bound on request bodies for Buildbot's web server, enforced before the body is read.

Why at the web server and not in the webhook: Twisted reads the whole body (into memory
below 100 kB, into a temporary file above) before any resource sees the request, so by
the time the change hook could look at ``Content-Length`` an unsigned 400 MB body has been
received and stored. The request class below refuses a declared length over the limit as
soon as the headers are in, and stops a chunked body once it passes the limit, with
``413`` and a closed connection. Nothing the master serves takes a larger body: GitHub caps
webhook payloads at 25 MB, and Buildbot's REST and control endpoints take a few kilobytes.
"""

from __future__ import annotations

from typing import Any

from twisted.python import log
from twisted.web import server

#: GitHub caps webhook payloads at 25 MB (docs.github.com, "Webhook payload object")
MAX_BODY_BYTES = 25 * 1024 * 1024


class _Discard:
    """Where the rest of a refused body goes (a few kB already in the read buffer)."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


class LimitedRequest(server.Request):
    """``server.Request`` that refuses bodies over :data:`MAX_BODY_BYTES`."""

    max_body = MAX_BODY_BYTES

    def gotLength(self, length: int | None) -> None:
        self._body_seen = 0
        self._refused = False
        if length is not None and length > self.max_body:
            self._refuse(f"Content-Length {length}")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self._refuse(f"more than {self.max_body} bytes of chunked body")
            return
        super().handleContentChunk(data)

    def _refuse(self, what: str) -> None:
        self._refused = True
        self.content = _Discard()
        peer = getattr(self.channel.transport.getPeer(), "host", "?") if self.channel else "?"
        log.msg(f"easeml: refused a request body from {peer}: {what} (limit {self.max_body})")
        body = f"request body larger than {self.max_body} bytes\n".encode()
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
        transport.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:  # the answer is sent and the connection is closing
            return
        super().requestReceived(command, path, version)


_installed = False


def install() -> None:
    """Make Buildbot's web site (``BuildbotSite``) build :class:`LimitedRequest` objects."""
    global _installed
    if _installed:
        return
    from buildbot.www.service import BuildbotSite

    BuildbotSite.requestFactory = LimitedRequest
    _installed = True
