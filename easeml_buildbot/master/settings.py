"""Operator settings for the master: one TOML file plus ``EASEML_*`` environment overrides.

Why a file and not master.cfg code: operators edit data, not Python, and the same file
drives the demo, docker-compose and the tests. Secrets are never stored in the dataclass
repr (``repr=False``) and are read from files or the environment, so a logged Settings
object never leaks them.

Environment overrides: ``EASEML_<KEY>`` for top-level keys (``EASEML_FORGE``,
``EASEML_LEDGER_URL``), ``EASEML_<TABLE>_<KEY>`` for keys in a table
(``EASEML_GITHUB_APP_ID``, ``EASEML_SMTP_HOST``, ``EASEML_LOCAL_REPO``).
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from email.utils import parseaddr
from pathlib import Path
from typing import Any

try:  # Buildbot's own error type: `buildbot checkconfig` prints each problem on its own line
    from buildbot.config.errors import ConfigErrors as _ConfigErrors
except ImportError:  # pragma: no cover - the settings are read without Buildbot in some tools
    class _ConfigErrors(Exception):  # type: ignore[no-redef]
        pass

DEFAULT_PATH = "master/easeml.toml"


class SettingsError(_ConfigErrors, ValueError):
    """Every problem of a settings file and its overrides, one per line: ``FILE: key: message``.

    A Buildbot ``ConfigErrors``: raised from ``master.cfg``, ``buildbot checkconfig`` and
    ``buildbot start`` list every problem instead of one "error while parsing config file".
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.errors = self.problems  # ConfigErrors' attribute
        Exception.__init__(self, "\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_UNIT = {"h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a duration such as ``"90s"``, ``"15m"``, ``"1h"``, ``"1h30m"``.

    Raises ``ValueError`` with a short reason for anything else (negative, empty, ``"1x"``).
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a duration (seconds, or e.g. 90s, 15m, 1h), not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not text or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"must be a duration (seconds, or e.g. 90s, 15m, 1h), not {value!r}") from None
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"must be a positive duration, not {value!r}")
    return seconds


class _Problems:
    """Collects every problem of one settings source, each naming the file and the key."""

    def __init__(self, source: str, from_env: Mapping[str, str]) -> None:
        self.source = source
        self.from_env = from_env  # dotted key -> the EASEML_* variable that set it
        self.items: list[str] = []
        self.keys: set[str] = set()

    def add(self, key: str, message: str) -> None:
        self.keys.add(key)
        env = self.from_env.get(key)
        where = f"{key} (from ${env})" if env else key
        self.items.append(f"{self.source}: {where}: {message}")

    def convert(self, table: Mapping[str, Any], key: str, conv: Callable[[Any], Any], default: Any,
                dotted: str, what: str) -> Any:
        """``conv(table[key])``, or ``default`` when the key is absent or empty; a bad value is a problem."""
        raw = table.get(key)
        if raw is None or raw == "":
            return default
        try:
            if conv is _int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            if isinstance(raw, bool) and conv in (_int, float):
                raise ValueError
            return conv(raw)
        except (TypeError, ValueError) as exc:
            reason = str(exc) if str(exc).startswith("must") else f"must be {what}, not {raw!r}"
            self.add(dotted, reason)
            return default

    def unknown(self, keys: set[str], known: set[str], table: str = "") -> None:
        for k in sorted(keys - known):
            close = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.add(f"{table}.{k}" if table else k, f"unknown key{hint}")

    def raise_if_any(self) -> None:
        if self.items:
            raise SettingsError(self.items)


def _int(v: Any) -> int:
    return int(v)


def _seconds_int(v: Any) -> int:
    return int(round(parse_duration(v)))


@dataclass(frozen=True)
class WorkerSettings:
    name: str
    password: str = field(repr=False, default="")
    max_builds: int = 1


@dataclass(frozen=True)
class GitHubSettings:
    app_id: int | None = None
    private_key_path: str | None = None
    webhook_secret: str = field(repr=False, default="")
    api_url: str = "https://api.github.com"
    check_name: str = "easeml/ci"
    # Seconds before an installation token's expiry at which a new one is fetched.
    token_refresh_margin: int = 300
    # Client-side pacing of API calls (PyGithub's defaults follow GitHub's advice against
    # secondary rate limits: >= 1 s between writes). Lower only for GHES or tests.
    seconds_between_requests: float = 0.25
    seconds_between_writes: float = 1.0

    def private_key(self) -> str:
        """The App's PEM private key; a :class:`SettingsError` naming the file when unusable."""
        if not self.private_key_path:
            raise SettingsError("github.private_key_path is not set")
        fp = self.private_key_path
        try:
            text = Path(fp).read_text()
        except FileNotFoundError:
            raise SettingsError(f"{fp}: no such file (the GitHub App's private key, "
                                "downloaded from the App's settings page)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read {fp}: {getattr(exc, 'strerror', None) or exc}") from None
        if not text.strip():
            raise SettingsError(f"{fp} is empty (expected the GitHub App's PEM private key)")
        if "-----BEGIN" not in text or "PRIVATE KEY-----" not in text:
            raise SettingsError(f"{fp}: not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)")
        return text


@dataclass(frozen=True)
class LocalSettings:
    repo: str = ""
    branch: str = "main"
    poll_interval: int = 10
    project: str = "local/demo"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 25
    tls: str = "none"  # "none" | "starttls" | "ssl" (SMTPS); true means starttls (ssl on port 465)
    user: str = ""
    password: str = field(repr=False, default="")
    from_addr: str = "easeml-ci@localhost"
    enabled: bool = True
    ca_file: str = ""  # PEM of a private CA that signs the relay's certificate ("" = system CAs)
    timeout: float | None = None  # None: the mailer's defaults (EASEML_SMTP_TIMEOUT/... set these)
    attempts: int | None = None
    backoff: float | None = None
    outbox_expiry: float | None = None  # seconds a queued mail is retried (None: 3 days)
    outbox_max_backoff: float | None = None  # longest delay between attempts (None: 600 s)


@dataclass(frozen=True)
class Settings:
    forge: str = "github"  # "github" | "local"
    title: str = "easeml-buildbot"
    buildbot_url: str = "http://localhost:8010/"
    www_port: int = 8010
    metrics_port: int = 8011  # /metrics and /healthz for the operator (master/metrics.py); 0: off
    bind_address: str = ""  # "" = every interface (Buildbot's default, containers); "127.0.0.1" for loopback only
    worker_port: int = 9989
    db_url: str = "sqlite:///state.sqlite"
    ledger_url: str = "sqlite:///ledger.sqlite"
    # Several masters (Buildbot's multiMaster): the WAMP router every master shares (a crossbar
    # router, crossbar/config.json); "" = one master with Buildbot's in-process MQ.
    mq_router_url: str = ""
    mq_realm: str = "realm1"
    # Seconds without a heartbeat before the other masters declare a master dead and take
    # over its build requests and schedulers (Buildbot's default: 10 minutes).
    master_expiry: float = 600.0
    results_dir: str = "results"  # master-private directory: a result.json the ledger could not take
    runner: str = "docker"  # "docker" | "process", passed to `easeml worker evaluate`
    build_timeout: int = 3600  # seconds of silence before a worker step is killed (file: 3600, "90s", "15m", "1h")
    operator_email: str = ""
    allowed_email_domains: tuple[str, ...] = ()
    workers: tuple[WorkerSettings, ...] = (WorkerSettings("worker1", "change-me"),)
    github: GitHubSettings = GitHubSettings()
    local: LocalSettings = LocalSettings()
    smtp: SmtpSettings = SmtpSettings()
    limits: Mapping[str, Any] = field(default_factory=dict)
    email_enabled: bool = True
    email_pr_author: bool = True  # also mail the author of the pull request (allowed domains only)
    # The only account that may force, stop or rebuild builds in the UI (each build spends a
    # use of a test set). Without one, nobody can: the UI is read-only.
    admin_user: str = ""
    admin_password: str = field(repr=False, default="")
    source: str = "<defaults>"
    # Every problem found while loading (``load(strict=False)``), one ``FILE: key: message``
    # each; the master's EasemlService reports them through ``config.error``.
    problems: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None,
             env: Mapping[str, str] | None = None, *, strict: bool = True) -> Settings:
        """Read ``path`` (default ``$EASEML_SETTINGS`` or ``master/easeml.toml``), then env overrides.

        A missing file is fine when every needed value comes from the environment.
        Relative paths in the file are resolved against the file's directory. With
        ``strict=False`` problems are not raised but kept in ``problems`` (a bad value takes
        its default): ``master.cfg`` hands them to the EasemlService, whose ``checkConfig``
        reports them with every other problem of the configuration.
        """
        env = os.environ if env is None else env
        p = Path(path or env.get("EASEML_SETTINGS") or DEFAULT_PATH)
        data: dict[str, Any] = {}
        if p.exists():
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as exc:
                if strict:
                    raise SettingsError(f"{p}: {exc}") from None
                return cls(source=str(p), problems=(f"{p}: {exc}",))
        return cls.from_dict(data, base_dir=p.resolve().parent, source=str(p), env=env, check_files=True,
                             strict=strict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None,
                  source: str = "<dict>", env: Mapping[str, str] | None = None,
                  check_files: bool = False, strict: bool = True) -> Settings:
        """Settings from parsed TOML ``data`` plus ``EASEML_*`` overrides in ``env``.

        Every problem is collected and raised together as one :class:`SettingsError`, each
        line naming ``source`` and the key (and the environment variable when one set it).
        With ``check_files`` the files the master will read (the GitHub App's private key,
        the relay's CA file) must exist and be usable now, not at the first webhook or mail.
        With ``strict=False`` the problems are kept in ``problems`` instead of raised.
        """
        env = {} if env is None else env
        base_dir = base_dir or Path.cwd()
        file_tables = {t: data.get(t, {}) for t in _TABLES}  # env overrides may add keys the file has not
        data, from_env = _apply_env(dict(data), env)
        problems = _Problems(source, from_env)
        conv = problems.convert

        def path_of(value: str | None) -> str | None:
            if not value:
                return value
            return str((base_dir / os.path.expanduser(str(value))).resolve())

        def table(name: str) -> dict[str, Any]:
            t = data.get(name, {})
            if not isinstance(t, Mapping):
                problems.add(name, f"must be a table ([{name}]), not {t!r}")
                return {}
            return dict(t)

        def secret(tbl: Mapping[str, Any], key: str, where: str) -> str:
            dotted = f"{where}.{key}" if where else key
            if tbl.get(key):
                return str(tbl[key])
            file_key = f"{key}_file"
            if tbl.get(file_key):
                fp = Path(path_of(tbl[file_key]))  # type: ignore[arg-type]
                try:
                    text = fp.read_text().strip()
                except OSError as exc:
                    problems.add(f"{dotted}_file", f"cannot read {fp}: {exc.strerror or exc}")
                    return ""
                if not text:
                    problems.add(f"{dotted}_file", f"{fp} is empty")
                return text
            return ""

        known = {f.name for f in fields(cls)} - {"source"} | {"admin_password_file", "email"}
        problems.unknown(set(data), known)

        def unknown_in(name: str, table_known: set[str]) -> None:
            if isinstance(file_tables[name], Mapping):
                problems.unknown(set(file_tables[name]), table_known, name)

        gh = table("github")
        unknown_in("github", {f.name for f in fields(GitHubSettings)} | {"webhook_secret_file"})
        github = GitHubSettings(
            app_id=conv(gh, "app_id", _int, None, "github.app_id", "an integer (the App's id)"),
            private_key_path=path_of(gh.get("private_key_path")),
            webhook_secret=secret(gh, "webhook_secret", "github"),
            api_url=str(gh.get("api_url", GitHubSettings.api_url)).rstrip("/"),
            check_name=str(gh.get("check_name", GitHubSettings.check_name)),
            token_refresh_margin=conv(gh, "token_refresh_margin", _seconds_int, GitHubSettings.token_refresh_margin,
                                      "github.token_refresh_margin", "a duration"),
            seconds_between_requests=conv(gh, "seconds_between_requests", float,
                                          GitHubSettings.seconds_between_requests,
                                          "github.seconds_between_requests", "a number of seconds"),
            seconds_between_writes=conv(gh, "seconds_between_writes", float, GitHubSettings.seconds_between_writes,
                                        "github.seconds_between_writes", "a number of seconds"),
        )
        lo = table("local")
        unknown_in("local", {f.name for f in fields(LocalSettings)})
        local = LocalSettings(
            repo=path_of(lo.get("repo")) or "",
            branch=str(lo.get("branch", LocalSettings.branch)),
            poll_interval=conv(lo, "poll_interval", _seconds_int, LocalSettings.poll_interval,
                               "local.poll_interval", "a duration"),
            project=str(lo.get("project", LocalSettings.project)),
        )
        sm = table("smtp")
        smtp_known = {f.name for f in fields(SmtpSettings)} | {"password_file"}
        unknown_in("smtp", smtp_known)
        port = conv(sm, "port", _int, SmtpSettings.port, "smtp.port", "a port number")
        try:
            tls = tls_mode(sm.get("tls", False), port, source)
        except SettingsError:
            problems.add("smtp.tls", f"must be true/false, 'starttls' or 'ssl', not {sm.get('tls')!r}")
            tls = "none"
        smtp = SmtpSettings(
            host=str(sm.get("host", SmtpSettings.host)), port=port,
            tls=tls, user=str(sm.get("user", "")),
            password=secret(sm, "password", "smtp"),
            from_addr=str(sm.get("from_addr", SmtpSettings.from_addr)),
            enabled=_bool(sm.get("enabled", True)),
            ca_file=path_of(sm.get("ca_file")) or "",
            timeout=conv(sm, "timeout", parse_duration, None, "smtp.timeout", "a duration"),
            attempts=conv(sm, "attempts", _int, None, "smtp.attempts", "an integer"),
            backoff=conv(sm, "backoff", parse_duration, None, "smtp.backoff", "a duration"),
            outbox_expiry=conv(sm, "outbox_expiry", parse_duration, None, "smtp.outbox_expiry", "a duration"),
            outbox_max_backoff=conv(sm, "outbox_max_backoff", parse_duration, None, "smtp.outbox_max_backoff",
                                    "a duration"),
        )
        workers_raw = data.get("workers") or [{"name": "worker1", "password": "change-me"}]
        workers = []
        for i, w in enumerate(workers_raw):
            if not isinstance(w, Mapping) or not w.get("name"):
                problems.add(f"workers[{i}]", "needs a 'name'")
                continue
            workers.append(WorkerSettings(name=str(w["name"]), password=secret(w, "password", f"workers[{i}]"),
                                          max_builds=conv(w, "max_builds", _int, 1, f"workers[{i}].max_builds",
                                                          "an integer")))
        domains = data.get("allowed_email_domains", ())
        if isinstance(domains, str):
            domains = [d.strip() for d in domains.split(",") if d.strip()]
        limits = data.get("limits", {})
        if not isinstance(limits, Mapping):
            problems.add("limits", f"must be a table ([limits]), not {limits!r}")
            limits = {}
        s = cls(
            forge=str(data.get("forge", cls.forge)),
            title=str(data.get("title", cls.title)),
            buildbot_url=str(data.get("buildbot_url", cls.buildbot_url)),
            www_port=conv(data, "www_port", _int, cls.www_port, "www_port", "a port number"),
            metrics_port=conv(data, "metrics_port", _int, cls.metrics_port, "metrics_port", "a port number"),
            bind_address=str(data.get("bind_address", cls.bind_address)),
            worker_port=conv(data, "worker_port", _int, cls.worker_port, "worker_port", "a port number"),
            db_url=_db_url(str(data.get("db_url", cls.db_url)), base_dir),
            ledger_url=_db_url(str(data.get("ledger_url", cls.ledger_url)), base_dir),
            mq_router_url=str(data.get("mq_router_url", cls.mq_router_url)).strip(),
            mq_realm=str(data.get("mq_realm", cls.mq_realm)).strip(),
            master_expiry=conv(data, "master_expiry", parse_duration, cls.master_expiry, "master_expiry",
                               "a duration"),
            results_dir=path_of(str(data.get("results_dir", cls.results_dir))) or "",
            runner=str(data.get("runner", cls.runner)),
            build_timeout=conv(data, "build_timeout", _seconds_int, cls.build_timeout, "build_timeout",
                               "a duration"),
            operator_email=str(data.get("operator_email", "")),
            allowed_email_domains=tuple(str(d) for d in domains),
            workers=tuple(workers), github=github, local=local, smtp=smtp,
            limits=dict(limits),
            email_enabled=_bool(data.get("email_enabled", True)),
            email_pr_author=_bool(data.get("email_pr_author", True)),
            admin_user=str(data.get("admin_user", "")),
            admin_password=secret(data, "admin_password", ""),
            source=source,
        )
        s._check(problems)
        if check_files:
            s._check_files(problems)
        if strict:
            problems.raise_if_any()
        return replace(s, problems=tuple(problems.items))

    def validate(self) -> None:
        """Raise :class:`SettingsError` listing every problem of these (already parsed) settings."""
        problems = _Problems(self.source, {})
        self._check(problems)
        problems.raise_if_any()

    def _check(self, problems: _Problems) -> None:
        add = problems.add
        if self.forge not in ("github", "local"):
            add("forge", f"must be 'github' or 'local', not {self.forge!r}")
        if self.runner not in ("docker", "process"):
            add("runner", f"must be 'docker' or 'process', not {self.runner!r}")
        if self.forge == "github":
            if not self.github.webhook_secret and "github.webhook_secret_file" not in problems.keys:
                add("github.webhook_secret(_file)", "required (unsigned webhooks are rejected)")
            if self.github.app_id is None:
                add("github.app_id", "required when forge = 'github'")
            if not self.github.private_key_path:
                add("github.private_key_path", "required when forge = 'github'")
        if self.forge == "local" and not self.local.repo:
            add("local.repo", "required when forge = 'local'")
        if self.mq_router_url:
            if not re.match(r"wss?://[^/\s]+", self.mq_router_url):
                add("mq_router_url", f"must be a WAMP router's WebSocket URL (ws://host:port/path), "
                    f"not {self.mq_router_url!r}")
            if not self.mq_realm:
                add("mq_realm", "required when mq_router_url is set")
            for key, url in (("db_url", self.db_url), ("ledger_url", self.ledger_url)):
                if url.startswith("sqlite"):
                    add(key, "must be a server database (postgresql+psycopg://...) shared by every "
                        "master when mq_router_url is set, not SQLite")
        if self.admin_user and not self.admin_password and "admin_password_file" not in problems.keys:
            add("admin_password(_file)", "required when admin_user is set")
        for w in self.workers:
            if not w.password:
                add(f"workers.{w.name}.password(_file)", "required")
        if self.operator_email and not is_address(self.operator_email):
            add("operator_email", f"{self.operator_email!r} is not an email address")
        if self.email_enabled and self.smtp.enabled:
            if not is_address(self.smtp.from_addr):
                add("smtp.from_addr", f"{self.smtp.from_addr!r} is not an email address")
            if self.smtp.attempts is not None and self.smtp.attempts < 1:
                add("smtp.attempts", f"must be at least 1, not {self.smtp.attempts}")

    def _check_files(self, problems: _Problems) -> None:
        """The files the master reads later must be usable now (checkconfig, start)."""
        if self.forge == "github" and self.github.private_key_path:
            try:
                self.github.private_key()
            except SettingsError as exc:
                problems.add("github.private_key_path", str(exc))
        if self.email_enabled and self.smtp.enabled and self.smtp.ca_file:
            fp = self.smtp.ca_file
            try:
                ssl.create_default_context(cafile=fp)
            except FileNotFoundError:
                problems.add("smtp.ca_file", f"{fp}: no such file")
            except ssl.SSLError as exc:  # an OSError too: first
                problems.add("smtp.ca_file", f"{fp}: not a PEM file of CA certificates ({exc.reason or exc})")
            except OSError as exc:
                problems.add("smtp.ca_file", f"cannot read {fp}: {exc.strerror or exc}")

    def __repr__(self) -> str:  # short: Buildbot logs step constructor arguments
        return f"Settings(forge={self.forge!r}, source={self.source!r})"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")


def is_address(text: Any) -> bool:
    """One address (``Name <a@b>`` or ``a@b``; ``a@localhost`` too)."""
    return bool(_ADDRESS.fullmatch(parseaddr(str(text or ""))[1] or ""))


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def tls_mode(v: Any, port: int, source: str) -> str:
    """``smtp.tls`` as one of none/starttls/ssl. A typo must not silently mean plaintext."""
    if isinstance(v, bool):
        return ("ssl" if port == 465 else "starttls") if v else "none"
    word = str(v).strip().lower()
    mode = {"true": "starttls", "yes": "starttls", "on": "starttls", "1": "starttls",
            "false": "none", "no": "none", "off": "none", "0": "none", "": "none",
            "tls": "starttls", "smtps": "ssl"}.get(word, word)
    if mode == "starttls" and word in ("true", "yes", "on", "1") and port == 465:
        mode = "ssl"
    if mode not in ("none", "starttls", "ssl"):
        raise SettingsError(f"{source}: smtp.tls: must be true/false, 'starttls' or 'ssl', not {v!r}")
    return mode


def _db_url(url: str, base_dir: Path) -> str:
    """Make relative sqlite paths relative to the settings file, not the process cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((base_dir / url[len(prefix):]).resolve())
    return url


_TABLES = ("github", "local", "smtp")


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with the ``EASEML_*`` overrides applied, and which dotted key each one set."""
    from_env: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith("EASEML_") or name == "EASEML_SETTINGS":
            continue
        key = name[len("EASEML_"):].lower()
        for table in _TABLES:
            if key.startswith(table + "_"):
                sub = dict(data.get(table, {})) if isinstance(data.get(table, {}), Mapping) else {}
                sub[key[len(table) + 1:]] = value
                data[table] = sub
                from_env[f"{table}.{key[len(table) + 1:]}"] = name
                break
        else:
            if key in {f.name for f in fields(Settings)} and key not in ("workers", "limits", "source"):
                data[key] = value
                from_env[key] = name
    return data, from_env
