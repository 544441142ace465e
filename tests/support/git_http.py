"""A private Git host on loopback: Git's own ``git http-backend`` behind HTTP Basic auth.

Stands in for github.com serving a private repository over HTTPS: every request must carry
``x-access-token:<token>`` with a token the GitHub stand-in issued, else 401 (which is what
makes git ask its credential helper). ``requests`` records (path, authorised) per request.

    with GitHttpServer(root, allowed=lambda token: token in sim.tokens) as host:
        url = host.url("acme/model")          # http://127.0.0.1:PORT/acme/model
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class GitHttpServer:
    def __init__(self, root: Path, allowed: Callable[[str], bool], user: str = "x-access-token"):
        self.root, self.allowed, self.user = Path(root), allowed, user
        self.requests: list[tuple[str, bool]] = []
        self._server: ThreadingHTTPServer | None = None

    def url(self, name: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> GitHttpServer:
        backend = [shutil.which("git") or "git", "http-backend"]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _authorised(self) -> bool:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return False
                try:
                    user, _, token = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    return False
                return user == outer.user and bool(token) and outer.allowed(token)

            def _serve(self) -> None:
                ok = self._authorised()
                parts = urlsplit(self.path)
                outer.requests.append((parts.path, ok))
                if not ok:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="private"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {"GIT_PROJECT_ROOT": str(outer.root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": parts.path, "QUERY_STRING": parts.query,
                       "REQUEST_METHOD": self.command, "REMOTE_USER": outer.user,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "CONTENT_LENGTH": str(len(body)), "GIT_CONFIG_NOSYSTEM": "1",
                       "HOME": str(outer.root)}
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                out = subprocess.run(backend, input=body, env=env, capture_output=True, timeout=120).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
