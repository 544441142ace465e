"""A small GitHub REST API stand-in that checks every request against GitHub's OpenAPI description.

Why our own: the master talks to a handful of endpoints (installation tokens, commits,
check runs) and the tests must assert the *exact* sequence of check-run calls, so the
server records every request, matches it to an operation of ``@octokit/openapi``
(tests/support/node_modules, installed by scripts/setup.sh) and validates its JSON body
against that operation's schema. Unknown operations answer 404 and are recorded as errors.
It also verifies the App's JWT (RS256, signed with the App key) and that repository
calls use an installation token it issued.

    sim = GitHubSim(app_id=1, app_public_key_pem=...)   # or GitHubSim.with_new_app_key()
    sim.start(); sim.url                                 # http://127.0.0.1:PORT
    sim.commit_messages[sha] = "msg"                     # for GET /repos/o/r/commits/{sha}
    sim.check_run_calls("owner/repo")                    # [(verb, fields), ...] in order
    sim.errors()                                         # every validation problem seen
    sim.outage(30, status=500)                           # answer every call with 500 for 30 s
    sim.slow(40, delay=25)                               # answer every call 25 s late for 40 s
    sim.stop()

Webhook bodies: ``webhook_example(event, action, **repo)`` takes GitHub's own example
from ``@octokit/webhooks-examples`` and adapts repository, installation and SHAs.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

NODE_MODULES = Path(__file__).resolve().parent / "node_modules"
OPENAPI_PATH = NODE_MODULES / "@octokit" / "openapi" / "generated" / "api.github.com.json"
WEBHOOKS_PATH = NODE_MODULES / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"


def fixtures_available() -> str | None:
    """None when the npm fixtures are installed, else the reason (for pytest.skip)."""
    for p in (OPENAPI_PATH, WEBHOOKS_PATH):
        if not p.exists():
            return f"{p} missing: run `bash scripts/setup.sh` (npm install in tests/support)"
    return None


@functools.lru_cache(maxsize=1)
def _openapi() -> dict[str, Any]:
    doc = json.loads(OPENAPI_PATH.read_text())
    _nullable_to_types(doc)
    return doc


def _nullable_to_types(node: Any) -> None:
    """OpenAPI 3.0's ``nullable: true`` → JSON Schema's ``type: [X, "null"]``."""
    if isinstance(node, dict):
        if node.get("nullable") is True and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        for v in node.values():
            _nullable_to_types(v)
    elif isinstance(node, list):
        for v in node:
            _nullable_to_types(v)


@functools.lru_cache(maxsize=1)
def _routes() -> list[tuple[re.Pattern[str], str, dict[str, Any]]]:
    routes = []
    for template, item in _openapi()["paths"].items():
        rx = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
        routes.append((rx, template, item))
    # Literal segments beat parameters: most specific (fewest parameters) first.
    routes.sort(key=lambda r: (r[1].count("{"), -len(r[1])))
    return routes


def match_operation(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    for rx, template, item in _routes():
        if rx.match(path) and method.lower() in item:
            return template, item[method.lower()]
    return None


@functools.lru_cache(maxsize=256)
def _validator(template: str, method: str):
    import jsonschema

    op = _openapi()["paths"][template][method]
    schema = (((op.get("requestBody") or {}).get("content") or {}).get("application/json") or {}).get("schema")
    if schema is None:
        return None
    root = dict(schema)
    root["components"] = _openapi()["components"]
    return jsonschema.Draft7Validator(root, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def validate_request(method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[str | None, list[str]]:
    found = match_operation(method, path)
    if found is None:
        return None, [f"{method} {path}: no such operation in GitHub's OpenAPI description"]
    template, op = found
    errors: list[str] = []
    for param in op.get("parameters", []):
        if "$ref" in param:
            ref = param["$ref"].split("/")[-1]
            param = _openapi()["components"]["parameters"][ref]
        if param.get("in") == "query" and param.get("name") in query:
            enum = (param.get("schema") or {}).get("enum")
            if enum and query[param["name"]][0] not in enum:
                errors.append(f"{method} {template}: query {param['name']}={query[param['name']][0]!r} not in {enum}")
    rb = op.get("requestBody") or {}
    if rb.get("required") and body is None:
        errors.append(f"{method} {template}: request body required")
    v = _validator(template, method.lower())
    if v is not None and body is not None:
        for e in v.iter_errors(body):
            errors.append(f"{method} {template}: body{''.join(f'[{p!r}]' for p in e.path)}: {e.message}")
    if method.lower() == "patch" and template.endswith("/check-runs/{check_run_id}") and isinstance(body, dict):
        if body.get("status") == "completed" and not body.get("conclusion"):
            errors.append(f"{method} {template}: status completed needs a conclusion")
    return op.get("operationId"), errors


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    operation: str | None
    errors: list[str]
    auth: str  # "jwt" | "installation" | "none" | "invalid"
    status: int = 0
    t: float = field(default_factory=time.monotonic)


class GitHubSim:
    def __init__(self, app_id: int, app_public_key_pem: str, token_ttl: int = 3600) -> None:
        self.app_id = app_id
        self.public_key = app_public_key_pem
        self.token_ttl = token_ttl
        self.requests: list[Recorded] = []
        self.commit_messages: dict[str, str] = {}
        self.check_runs: dict[int, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[int, float]] = {}  # token -> (installation id, expiry)
        self.token_permissions: dict[str, dict[str, str]] = {}  # token -> permissions asked for ({} = all)
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.fail_next: list[int] = []  # status codes to answer the next calls with (fault injection)
        self._outage: tuple[float, int] = (0.0, 500)  # (until, status): every call fails until then
        self._slow: tuple[float, float] = (0.0, 0.0)  # (until, delay): calls received until then are late

    def outage(self, seconds: float, status: int = 500) -> None:
        """Answer every call with ``status`` for the next ``seconds`` (GitHub down)."""
        with self._lock:
            self._outage = (time.monotonic() + seconds, status)

    def slow(self, seconds: float, delay: float) -> None:
        """Calls received in the next ``seconds`` are handled, then answered ``delay`` s late
        (GitHub slow: a write the client gave up on has still been made)."""
        with self._lock:
            self._slow = (time.monotonic() + seconds, delay)

    @classmethod
    def with_new_app_key(cls, app_id: int = 4242, **kw: Any) -> tuple[GitHubSim, str]:
        """A simulator and the PEM private key of a freshly generated App key."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption()).decode()
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return cls(app_id, pub, **kw), priv

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> GitHubSim:
        _routes()  # parse the description before the first request
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with sim._lock:
                    until, delay = sim._slow
                status, payload = sim._dispatch(self.command, self.path, dict(self.headers), raw)
                if time.monotonic() < until:
                    time.sleep(delay)
                data = json.dumps(payload).encode() if payload is not None else b""
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("X-RateLimit-Remaining", "4999")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (slow()): it never sees this answer

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GitHubSim:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- queries for tests --------------------------------------------------------------
    def errors(self) -> list[str]:
        with self._lock:
            return [e for r in self.requests for e in r.errors]

    def check_run_calls(self, repo: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """("create"|"update", body) for every check-run write, in arrival order."""
        out = []
        with self._lock:
            reqs = list(self.requests)
        for r in reqs:
            if repo and not r.path.startswith(f"/repos/{repo}/"):
                continue
            if r.operation == "checks/create":
                out.append(("create", r.body))
            elif r.operation == "checks/update":
                out.append(("update", r.body))
        return out

    def check_runs_for(self, head_sha: str) -> list[dict[str, Any]]:
        """The check runs on ``head_sha`` as GitHub shows them now, oldest first."""
        with self._lock:
            return [copy.deepcopy(r) for r in sorted(self.check_runs.values(), key=lambda r: r["id"])
                    if r["head_sha"] == head_sha]

    def conclusions(self, repo: str | None = None) -> list[str]:
        return [b.get("conclusion") for v, b in self.check_run_calls(repo) if b.get("conclusion")]

    def wait_for(self, pred, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.2)
        return False

    # -- the API --------------------------------------------------------------------------
    def _auth(self, headers: dict[str, str]) -> tuple[str, int | None]:
        import jwt

        value = headers.get("Authorization") or headers.get("authorization") or ""
        scheme, _, cred = value.partition(" ")
        if not cred:
            return "none", None
        if cred in self.tokens:
            inst, exp = self.tokens[cred]
            return ("installation", inst) if exp > time.time() else ("invalid", None)
        try:
            claims = jwt.decode(cred, self.public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "iss"]})
        except jwt.PyJWTError:
            return "invalid", None
        if str(claims.get("iss")) != str(self.app_id) or claims["exp"] - claims["iat"] > 600 + 60:
            return "invalid", None
        return "jwt", None

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path = parts.path
        if path.startswith("/api/v3/"):
            path = path[len("/api/v3"):]
        query = parse_qs(parts.query)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body, bad = None, True
        else:
            bad = False
        operation, errors = validate_request(method, path, query, body)
        if bad:
            errors.append(f"{method} {path}: body is not JSON")
        auth, inst = self._auth(headers)
        rec = Recorded(method, path, query, body, operation, errors, auth)
        with self._lock:
            self.requests.append(rec)
            until, status = self._outage
            if time.monotonic() < until:
                rec.status = status
                return rec.status, {"message": "injected outage"}
            if self.fail_next:
                rec.status = self.fail_next.pop(0)
                return rec.status, {"message": "injected failure"}
        rec.status, payload = self._respond(rec, inst)
        return rec.status, payload

    def _respond(self, r: Recorded, inst: int | None) -> tuple[int, Any]:
        if r.operation is None:
            return 404, {"message": "Not Found"}
        if r.operation.startswith("apps/") and r.auth != "jwt":
            r.errors.append(f"{r.method} {r.path}: needs the App's JWT, got {r.auth}")
            return 401, {"message": "A JSON web token could not be decoded"}
        if r.operation == "apps/create-installation-access-token":
            token = "ghs_" + secrets.token_hex(18)
            inst_id = int(r.path.split("/")[3])
            exp = time.time() + self.token_ttl
            asked = dict((r.body or {}).get("permissions") or {}) if isinstance(r.body, dict) else {}
            with self._lock:
                self.tokens[token] = (inst_id, exp)
                self.token_permissions[token] = asked
            granted = asked or {"checks": "write", "contents": "read", "pull_requests": "read", "metadata": "read"}
            return 201, {"token": token, "expires_at": _iso(exp), "permissions": granted,
                         "repository_selection": "all"}
        if r.path.startswith("/repos/") and r.auth != "installation":
            r.errors.append(f"{r.method} {r.path}: needs an installation token, got {r.auth}")
            return 401, {"message": "Bad credentials"}
        owner, repo = r.path.split("/")[2:4]
        if r.operation == "repos/get-commit":
            sha = r.path.split("/")[-1]
            msg = self.commit_messages.get(sha)
            if msg is None:
                return 404, {"message": "No commit found for SHA"}
            return 200, {"sha": sha, "url": f"{self.url}{r.path}", "commit": {"message": msg}, "files": []}
        if r.operation == "checks/create":
            rid = next(self._ids)
            run = {"id": rid, "name": r.body.get("name"), "head_sha": r.body.get("head_sha"),
                   "status": r.body.get("status", "queued"), "conclusion": r.body.get("conclusion"),
                   "url": f"{self.url}/repos/{owner}/{repo}/check-runs/{rid}",
                   "html_url": f"https://github.com/{owner}/{repo}/runs/{rid}",
                   "details_url": r.body.get("details_url"), "external_id": r.body.get("external_id"),
                   "started_at": r.body.get("started_at"), "completed_at": r.body.get("completed_at"),
                   "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                              "annotations_url": ""},
                   "check_suite": {"id": 1}, "app": {"id": self.app_id}, "pull_requests": []}
            if r.body.get("output"):
                run["output"].update(r.body["output"])
            with self._lock:
                self.check_runs[rid] = run
            return 201, run
        if r.operation in ("checks/update", "checks/get"):
            rid = int(r.path.split("/")[-1])
            with self._lock:
                run = self.check_runs.get(rid)
                if run is None:
                    return 404, {"message": "Not Found"}
                if r.operation == "checks/update":
                    body = dict(r.body or {})
                    if "output" in body:
                        run["output"].update(body.pop("output"))
                    run.update(body)
                    if body.get("conclusion"):
                        run["status"] = "completed"
                return 200, copy.deepcopy(run)
        if r.operation == "checks/list-for-ref":
            sha = r.path.split("/")[-2]
            name = (r.query.get("check_name") or [None])[0]
            with self._lock:
                runs = [copy.deepcopy(x) for x in sorted(self.check_runs.values(), key=lambda x: -x["id"])
                        if x["head_sha"] == sha and (name is None or x["name"] == name)]
            return 200, {"total_count": len(runs), "check_runs": runs}
        r.errors.append(f"{r.method} {r.path}: valid operation {r.operation} not simulated")
        return 501, {"message": "not simulated"}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=1)
def _webhook_examples() -> list[dict[str, Any]]:
    return json.loads(WEBHOOKS_PATH.read_text())


def webhook_example(event: str, action: str | None = None, *, full_name: str, clone_url: str,
                    installation_id: int, repo_id: int = 4242, default_branch: str = "main",
                    pick: int = 0) -> dict[str, Any]:
    """GitHub's own example payload for ``event``/``action``, adapted to our test repository."""
    for group in _webhook_examples():
        if group["name"] == event:
            examples = [e for e in group["examples"] if action is None or e.get("action") == action]
            if len(examples) > pick:
                payload = copy.deepcopy(examples[pick])
                break
    else:
        raise KeyError(f"no example for {event}/{action}")
    owner, name = full_name.split("/")
    orig = payload.get("repository") or {}
    old_full = orig.get("full_name")
    repo = dict(orig)
    repo.update({"id": repo_id, "name": name, "full_name": full_name, "clone_url": clone_url,
                 "html_url": f"https://github.com/{full_name}", "url": f"https://api.github.com/repos/{full_name}",
                 "default_branch": default_branch})
    repo["owner"] = dict(repo.get("owner") or {}, login=owner)
    payload["repository"] = repo
    payload["installation"] = {"id": installation_id, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
    if old_full:
        text = json.dumps(payload).replace(f"repos/{old_full}/", f"repos/{full_name}/")
        payload = json.loads(text)
    return payload


def adapt_pull_request(payload: dict[str, Any], *, number: int, head_sha: str, base_sha: str,
                       base_ref: str = "main", title: str | None = None) -> dict[str, Any]:
    p = copy.deepcopy(payload)
    p["number"] = number
    pr = p["pull_request"]
    pr["number"] = number
    pr["head"]["sha"] = head_sha
    pr["base"]["sha"] = base_sha
    pr["base"]["ref"] = base_ref
    pr["base"]["repo"] = p["repository"]
    pr["head"]["repo"] = p["repository"]
    pr["html_url"] = f"https://github.com/{p['repository']['full_name']}/pull/{number}"
    if title is not None:
        pr["title"] = title
    return p


def adapt_check_suite(payload: dict[str, Any], key: str, *, number: int, head_sha: str, base_sha: str,
                      base_ref: str = "main", message: str = "update model", name: str | None = None) -> dict[str, Any]:
    """Point a check_suite/check_run example at one pull request of our repository."""
    p = copy.deepcopy(payload)
    obj = p[key]
    obj["head_sha"] = head_sha
    if name is not None:
        obj["name"] = name
    repo = p["repository"]
    pr = {"url": f"https://api.github.com/repos/{repo['full_name']}/pulls/{number}", "id": number, "number": number,
          "head": {"ref": f"feature-{number}", "sha": head_sha, "repo": {"id": repo["id"], "url": repo["url"], "name": repo["name"]}},
          "base": {"ref": base_ref, "sha": base_sha, "repo": {"id": repo["id"], "url": repo["url"], "name": repo["name"]}}}
    obj["pull_requests"] = [pr]
    if key == "check_suite":
        obj["head_commit"] = dict(obj.get("head_commit") or {}, id=head_sha, message=message)
    return p


APP_ID = 77  # the App of the ``app_sim`` fixture


@pytest.fixture
def app_sim():
    """A started GitHub stand-in with a fresh App key (``app_sim.app_key``, the PEM the App
    signs its JWTs with) for App ``APP_ID``; skips without the npm fixtures."""
    reason = fixtures_available()
    if reason:
        pytest.skip(reason)
    s, key = GitHubSim.with_new_app_key(app_id=APP_ID)
    s.app_key = key
    s.start()
    yield s
    s.stop()
