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

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PATH = "master/easeml.toml"


class SettingsError(ValueError):
    """A settings file or override is wrong; the message names the file and key."""


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
        if not self.private_key_path:
            raise SettingsError("github.private_key_path is not set")
        return Path(self.private_key_path).read_text()


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
    bind_address: str = ""  # "" = every interface (Buildbot's default, containers); "127.0.0.1" for loopback only
    worker_port: int = 9989
    db_url: str = "sqlite:///state.sqlite"
    ledger_url: str = "sqlite:///ledger.sqlite"
    results_dir: str = "results"  # master-private directory for uploaded result.json files
    runner: str = "docker"  # "docker" | "process", passed to `easeml worker evaluate`
    build_timeout: int = 3600  # seconds of silence before a worker step is killed
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

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None,
             env: Mapping[str, str] | None = None) -> Settings:
        """Read ``path`` (default ``$EASEML_SETTINGS`` or ``master/easeml.toml``), then env overrides.

        A missing file is fine when every needed value comes from the environment.
        Relative paths in the file are resolved against the file's directory.
        """
        env = os.environ if env is None else env
        p = Path(path or env.get("EASEML_SETTINGS") or DEFAULT_PATH)
        data: dict[str, Any] = {}
        if p.exists():
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{p}: {exc}") from None
        return cls.from_dict(data, base_dir=p.resolve().parent, source=str(p), env=env)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None,
                  source: str = "<dict>", env: Mapping[str, str] | None = None) -> Settings:
        env = {} if env is None else env
        base_dir = base_dir or Path.cwd()
        file_smtp = data.get("smtp", {})
        data = _apply_env(dict(data), env)

        def path_of(value: str | None) -> str | None:
            if not value:
                return value
            return str((base_dir / os.path.expanduser(value)).resolve())

        def secret(table: Mapping[str, Any], key: str, where: str) -> str:
            if table.get(key):
                return str(table[key])
            file_key = f"{key}_file"
            if table.get(file_key):
                fp = Path(path_of(table[file_key]))  # type: ignore[arg-type]
                try:
                    return fp.read_text().strip()
                except OSError as exc:
                    raise SettingsError(f"{source}: {where}.{file_key}: cannot read {fp}: {exc.strerror}") from None
            return ""

        known = {f.name for f in fields(cls)} | {"workers", "github", "local", "smtp", "email",
                                                  "admin_password_file"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"{source}: unknown key(s) {', '.join(unknown)}")

        gh = dict(data.get("github", {}))
        github = GitHubSettings(
            app_id=int(gh["app_id"]) if gh.get("app_id") not in (None, "") else None,
            private_key_path=path_of(gh.get("private_key_path")),
            webhook_secret=secret(gh, "webhook_secret", "github"),
            api_url=str(gh.get("api_url", GitHubSettings.api_url)).rstrip("/"),
            check_name=str(gh.get("check_name", GitHubSettings.check_name)),
            token_refresh_margin=int(gh.get("token_refresh_margin", GitHubSettings.token_refresh_margin)),
            seconds_between_requests=float(gh.get("seconds_between_requests", GitHubSettings.seconds_between_requests)),
            seconds_between_writes=float(gh.get("seconds_between_writes", GitHubSettings.seconds_between_writes)),
        )
        lo = dict(data.get("local", {}))
        local = LocalSettings(
            repo=path_of(lo.get("repo")) or "",
            branch=str(lo.get("branch", LocalSettings.branch)),
            poll_interval=int(lo.get("poll_interval", LocalSettings.poll_interval)),
            project=str(lo.get("project", LocalSettings.project)),
        )
        sm = dict(data.get("smtp", {}))
        smtp_known = {f.name for f in fields(SmtpSettings)} | {"password_file"}
        smtp_unknown = sorted(set(file_smtp) - smtp_known) if isinstance(file_smtp, Mapping) else []
        if smtp_unknown:
            raise SettingsError(f"{source}: smtp: unknown key(s) {', '.join(smtp_unknown)}"
                                f" (known: {', '.join(sorted(smtp_known))})")
        port = int(sm.get("port", SmtpSettings.port))
        smtp = SmtpSettings(
            host=str(sm.get("host", SmtpSettings.host)), port=port,
            tls=tls_mode(sm.get("tls", False), port, source), user=str(sm.get("user", "")),
            password=secret(sm, "password", "smtp"),
            from_addr=str(sm.get("from_addr", SmtpSettings.from_addr)),
            enabled=_bool(sm.get("enabled", True)),
            ca_file=path_of(sm.get("ca_file")) or "",
            timeout=float(sm["timeout"]) if sm.get("timeout") not in (None, "") else None,
            attempts=int(sm["attempts"]) if sm.get("attempts") not in (None, "") else None,
            backoff=float(sm["backoff"]) if sm.get("backoff") not in (None, "") else None,
            outbox_expiry=(float(sm["outbox_expiry"]) if sm.get("outbox_expiry") not in (None, "")
                           else None),
            outbox_max_backoff=(float(sm["outbox_max_backoff"])
                                if sm.get("outbox_max_backoff") not in (None, "") else None),
        )
        workers_raw = data.get("workers") or [{"name": "worker1", "password": "change-me"}]
        workers = []
        for i, w in enumerate(workers_raw):
            if not isinstance(w, Mapping) or not w.get("name"):
                raise SettingsError(f"{source}: workers[{i}]: needs a 'name'")
            workers.append(WorkerSettings(name=str(w["name"]), password=secret(w, "password", f"workers[{i}]"),
                                          max_builds=int(w.get("max_builds", 1))))
        domains = data.get("allowed_email_domains", ())
        if isinstance(domains, str):
            domains = [d.strip() for d in domains.split(",") if d.strip()]
        s = cls(
            forge=str(data.get("forge", cls.forge)),
            title=str(data.get("title", cls.title)),
            buildbot_url=str(data.get("buildbot_url", cls.buildbot_url)),
            www_port=int(data.get("www_port", cls.www_port)),
            bind_address=str(data.get("bind_address", cls.bind_address)),
            worker_port=int(data.get("worker_port", cls.worker_port)),
            db_url=_db_url(str(data.get("db_url", cls.db_url)), base_dir),
            ledger_url=_db_url(str(data.get("ledger_url", cls.ledger_url)), base_dir),
            results_dir=path_of(str(data.get("results_dir", cls.results_dir))) or "",
            runner=str(data.get("runner", cls.runner)),
            build_timeout=int(data.get("build_timeout", cls.build_timeout)),
            operator_email=str(data.get("operator_email", "")),
            allowed_email_domains=tuple(str(d) for d in domains),
            workers=tuple(workers), github=github, local=local, smtp=smtp,
            limits=dict(data.get("limits", {})),
            email_enabled=_bool(data.get("email_enabled", True)),
            email_pr_author=_bool(data.get("email_pr_author", True)),
            admin_user=str(data.get("admin_user", "")),
            admin_password=secret(data, "admin_password", "<top level>"),
            source=source,
        )
        s.validate()
        return s

    def validate(self) -> None:
        problems = []
        if self.forge not in ("github", "local"):
            problems.append(f"forge: must be 'github' or 'local', not {self.forge!r}")
        if self.runner not in ("docker", "process"):
            problems.append(f"runner: must be 'docker' or 'process', not {self.runner!r}")
        if self.forge == "github":
            if not self.github.webhook_secret:
                problems.append("github.webhook_secret(_file): required (unsigned webhooks are rejected)")
            if self.github.app_id is None:
                problems.append("github.app_id: required when forge = 'github'")
            if not self.github.private_key_path:
                problems.append("github.private_key_path: required when forge = 'github'")
        if self.forge == "local" and not self.local.repo:
            problems.append("local.repo: required when forge = 'local'")
        if self.admin_user and not self.admin_password:
            problems.append("admin_password(_file): required when admin_user is set")
        for w in self.workers:
            if not w.password:
                problems.append(f"workers.{w.name}.password(_file): required")
        if problems:
            raise SettingsError(f"{self.source}: " + "; ".join(problems))

    def __repr__(self) -> str:  # short: Buildbot logs step constructor arguments
        return f"Settings(forge={self.forge!r}, source={self.source!r})"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


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


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for name, value in env.items():
        if not name.startswith("EASEML_") or name == "EASEML_SETTINGS":
            continue
        key = name[len("EASEML_"):].lower()
        for table in _TABLES:
            if key.startswith(table + "_"):
                sub = dict(data.get(table, {}))
                sub[key[len(table) + 1:]] = value
                data[table] = sub
                break
        else:
            if key in {f.name for f in fields(Settings)} and key not in ("workers", "limits", "source"):
                data[key] = value
    return data
